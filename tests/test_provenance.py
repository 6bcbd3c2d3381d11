from __future__ import annotations

import json
from pathlib import Path

from patchfinder.provenance import PACKAGES, git_commit, provenance

REPO = Path(__file__).parents[1]


def test_record_has_the_environment_and_is_json_ready():
    record = provenance(model="m", seed=3)
    assert record["model"] == "m" and record["seed"] == 3
    assert {"versions", "git_commit", "python", "platform", "created_utc"} <= set(record)
    assert record["cpu"] and record["numba_cpu_name"]
    assert record["versions"]["numpy"] != "not installed"
    json.dumps(record)


def test_a_commit_recorded_at_the_start_of_a_run_is_kept():
    assert provenance(git_commit="abc123")["git_commit"] == "abc123"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_ci_runs_the_readmes_test_command_literally():
    """The README's install-and-test line, relative data root included, is a line of
    `.ci/run`: CI sees what a new user types, so a fresh clone cannot pass CI and fail them."""
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "python -m pytest" in line]
    assert commands, "the README shows no test command"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command.strip() in ci, command
    assert "PATCHFINDER_DATA=../shared/data" in commands[0]


def test_the_constraints_pin_every_package_provenance_records():
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(PACKAGES) - {"patchfinder"} <= set(pins)
    assert all(version and version[0].isdigit() for version in pins.values())
