from __future__ import annotations

import json

from patchfinder.provenance import git_commit, provenance


def test_record_has_the_environment_and_is_json_ready():
    record = provenance(model="m", seed=3)
    assert record["model"] == "m" and record["seed"] == 3
    assert {"versions", "git_commit", "python", "platform", "created_utc"} <= set(record)
    assert record["versions"]["numpy"] != "not installed"
    json.dumps(record)


def test_a_commit_recorded_at_the_start_of_a_run_is_kept():
    assert provenance(git_commit="abc123")["git_commit"] == "abc123"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
