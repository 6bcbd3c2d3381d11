"""`patchfinder audit`: limits, baselines, reports and config errors, on hand-built colour models.

The world: 32 px photos labelled `plain` (6 grey, 4 green, 1 red) and two patches (red, grey).
The `red` model's class-1 (`reddish`) logit grows with the image's mean redness (R - G): a red
patch at half the side flips the grey photos (6 of the 10 it gets right) and not the green
ones; the red photo is misclassified, so it does not count. The `blue` model looks at B - R:
no patch flips it. Every rate below follows from that arithmetic, not from training.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchfinder import audit
from patchfinder.audit import (
    AuditConfig,
    AuditResult,
    Baseline,
    Check,
    CheckResult,
    ConfigError,
    Limits,
    ModelConfig,
    PatchRates,
    compare,
    load_config,
    run_audit,
)
from patchfinder.stats import wilson_interval

from conftest import run_cli

PHOTOS = {"grey": (128, 128, 128), "green": (100, 160, 100), "red": (220, 40, 40)}
COUNTS = {"grey": 6, "green": 4, "red": 1}


def colour_model(weights: tuple[float, float, float]):
    """Logits (0, 8 * (w . mean RGB) / 255 - 1): class 1 when the weighted colour is high."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 1, name="conv")(inputs)  # identity: a spatial layer to load
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.eye(3).reshape(1, 1, 3, 3), np.zeros(3)])
    kernel = np.zeros((3, 2))
    kernel[:, 1] = 8.0 * np.asarray(weights) / 255.0
    model.get_layer("logits").set_weights([kernel, np.array([0.0, -1.0])])
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    colour_model((1.0, -1.0, 0.0)).save(root / "red.keras")
    colour_model((-1.0, 0.0, 1.0)).save(root / "blue.keras")
    (root / "labels.txt").write_text("plain\nreddish\n")
    photos = root / "photos"
    photos.mkdir()
    with open(photos / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "name"])
        for colour, count in COUNTS.items():
            for i in range(count):
                name = f"{colour}-{i}.png"
                Image.new("RGB", (32, 32), PHOTOS[colour]).save(photos / name)
                writer.writerow([name, "plain"])
        Image.new("RGB", (32, 32), (250, 0, 0)).save(photos / "other.png")
        writer.writerow(["other.png", "reddish"])  # not src: never counted
    patches = root / "patches"
    patches.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(patches / "red.png")
    Image.new("RGB", (8, 8), (128, 128, 128)).save(patches / "grey.png")
    return root


def write_config(
    folder: Path, *, model: str = "red", red_limit: float = 0.9, tolerance: float = 0.0
) -> Path:
    """Two checks on `${AUDIT_WORLD}`: the red patch (limit `red_limit`), the grey patch."""
    path = folder / "audit.toml"
    path.write_text(
        f"""
[model]
name = "${{AUDIT_WORLD}}/{model}.keras"
labels = "${{AUDIT_WORLD}}/labels.txt"

[defaults]
images = ["${{AUDIT_WORLD}}/photos"]
sizes = [0.5]
placements = "corners"
limits = {{ best_rate = 0.9, fixed_rate = 0.9, tolerance = {tolerance} }}

[[checks]]
name = "red-patch"
pair = "plain:reddish"
patches = ["${{AUDIT_WORLD}}/patches/red.png"]
limits = {{ best_rate = {red_limit} }}

[[checks]]
name = "grey-patch"
pair = "plain:reddish"
patches = ["${{AUDIT_WORLD}}/patches/grey.png"]
"""
    )
    return path


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("AUDIT_WORLD", str(world))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return world


def numbers(path: Path) -> dict:
    """The JSON without its provenance (times, versions): what must repeat exactly."""
    data = json.loads(path.read_text())
    del data["provenance"]
    return data


# --- end to end ------------------------------------------------------------------------------


def test_passes_under_its_limits_with_the_same_numbers_every_run(env, tmp_path):
    config = write_config(tmp_path)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for out in (first, second):
        result = run_cli("audit", str(config), "--json", str(out))
        assert result.exit_code == 0, result.output
    assert numbers(first) == numbers(second)

    data = json.loads(first.read_text())
    assert data["passed"] and data["exit_status"] == 0 and data["format"] == audit.JSON_FORMAT
    assert data["provenance"]["command"] == "audit" and "git_commit" in data["provenance"]
    red, grey = data["checks"]
    low, high = wilson_interval(6, 10)
    assert red["name"] == "red-patch" and red["pair"] == "plain:reddish"
    assert (red["n"], red["n_candidates"]) == (10, 11)  # the red photo is misclassified
    assert (red["best_rate"], red["fixed_rate"], red["best_patch"]) == (0.6, 0.6, "red")
    assert (red["best_low"], red["best_high"]) == pytest.approx((low, high))
    assert red["limits"] == {"best_rate": 0.9, "fixed_rate": 0.9, "tolerance": 0.0, "min_n": 1}
    assert red["settings"]["sizes"] == [0.5] and red["settings"]["placements"] == "corners"
    assert [p["patch"] for p in red["patches"]] == ["red"]
    assert red["patches"][0]["fixed_setting"].startswith("0.5 ")
    assert (grey["best_rate"], grey["fixed_rate"], grey["n"]) == (0.0, 0.0, 10)
    assert "| red-patch |" in result.stdout and "patchfinder audit passed" in result.stdout


def test_max_images_measures_a_seeded_subset(env, tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("sizes = [0.5]", "sizes = [0.5]\nmax_images = 4"))
    runs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in runs:
        result = run_cli("audit", str(config), "--json", str(out))
        assert result.exit_code == 0, result.output
    assert numbers(runs[0]) == numbers(runs[1])
    red, _ = json.loads(runs[0].read_text())["checks"]
    assert red["n"] == 4 and red["n_candidates"] == 11 and red["settings"]["max_images"] == 4
    # 6 of the 10 eligible photos flip: a subset of 4 flips between 0 and 4 of them.
    assert red["best_rate"] in {0.0, 0.25, 0.5, 0.75, 1.0}


def test_a_check_over_its_limit_fails_and_every_report_says_why(env, tmp_path, monkeypatch):
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    config = write_config(tmp_path, red_limit=0.5)
    junit, out, baseline = (tmp_path / name for name in ("audit.xml", "audit.json", "base.json"))
    result = run_cli(
        "audit", str(config), "--junit", str(junit), "--json", str(out),
        "--baseline", str(baseline), "--update-baseline",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert not baseline.exists() and "not updated" in result.stderr  # never a failing baseline

    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["red-patch", "grey-patch"] and suite.get("failures") == "1"
    assert cases["grey-patch"].find("failure") is None
    message = cases["red-patch"].find("failure").get("message")
    low, high = wilson_interval(6, 10)
    for part in ("best_rate 0.600", "n=10", f"{low:.3f}-{high:.3f}", "limit 0.500"):
        assert part in message, message
    assert "fixed_rate" not in message  # the fixed limit (0.9) holds

    data = json.loads(out.read_text())
    assert not data["passed"] and data["exit_status"] == 1
    assert [c["passed"] for c in data["checks"]] == [False, True]
    assert data["checks"][0]["failures"] == [message]

    written = summary.read_text()
    assert written.startswith("earlier step\n") and "FAILED (1 of 2 checks)" in written
    assert "red-patch" in written and written.rstrip().endswith(result.stdout.rstrip()[-40:])


def test_a_regression_beyond_the_tolerance_fails_and_within_it_passes(env, tmp_path):
    baseline = tmp_path / "baseline.json"
    last_release = write_config(tmp_path, model="blue")
    result = run_cli("audit", str(last_release), "--baseline", str(baseline), "--update-baseline")
    assert result.exit_code == 0, result.output
    written = json.loads(baseline.read_text())
    assert [(c["name"], c["best_rate"], c["n"]) for c in written["checks"]] == [
        ("red-patch", 0.0, 11),
        ("grey-patch", 0.0, 11),
    ]

    # The new model: the red patch now flips 60 % (the limits, 90 %, still hold).
    strict = write_config(tmp_path, tolerance=0.1)
    result = run_cli("audit", str(strict), "--baseline", str(baseline))
    assert result.exit_code == 1, result.output
    assert "best_rate 0.600" in result.stdout
    assert "> baseline 0.000 (n=11) + tolerance 0.100" in result.stdout
    assert "grey-patch" in result.stdout and result.stdout.count("❌ fail") == 1

    lenient = write_config(tmp_path, tolerance=0.7)
    result = run_cli("audit", str(lenient), "--baseline", str(baseline))
    assert result.exit_code == 0, result.output
    assert json.loads(baseline.read_text()) == written  # compared against, not rewritten


def test_config_problems_are_listed_at_once_before_any_model_loads(env, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a broken config")

    monkeypatch.setattr("patchfinder.model.load_model", no_model)
    config = tmp_path / "broken.toml"
    config.write_text(
        """
[model]
name = "${AUDIT_WORLD}/red.keras"
labels = "${AUDIT_WORLD}/labels.txt"

[[checks]]
pair = "plain:reddish"
images = ["${AUDIT_WORLD}/photos"]
patches = ["${AUDIT_WORLD}/patches/red.png"]
limts = { best_rate = 0.5 }

[[checks]]
pair = "plain:reddish"
name = "missing"
images = ["${AUDIT_WORLD}/photos"]
patches = ["${AUDIT_WORLD}/patches/blue.png"]

[[checks]]
pair = "plian:reddish"
images = ["${AUDIT_WORLD}/photos"]
patches = ["${AUDIT_WORLD}/patches/red.png"]
"""
    )
    result = run_cli("audit", str(config))
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    for expected in (
        "3 problems",
        "checks[0].limts: unknown key (did you mean limits?)",
        f"checks[1].patches[0]: not found: {env / 'patches' / 'blue.png'}",
        "checks[2].pair: Unknown class 'plian'. Did you mean: plain?",
    ):
        assert expected in message, result.stderr
    assert "Traceback" not in result.output


def test_update_baseline_needs_a_baseline_file(env, tmp_path):
    result = run_cli("audit", str(write_config(tmp_path)), "--update-baseline")
    assert result.exit_code == 2 and "--baseline FILE" in result.stderr


# --- the config ------------------------------------------------------------------------------


def test_paths_are_relative_to_the_config_expanded_and_globbed(world, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_WORLD", str(world))
    config = world / "relative.toml"
    config.write_text(
        """
model = { name = "red.keras", labels = "$AUDIT_WORLD/labels.txt" }
defaults = { images = "photos", seed = 3, limits = { best_rate = 0.5, tolerance = 0.02 } }

[[checks]]
pair = "plain:reddish"
patches = ["patches/*.png"]
sizes = 0.3
limits = { fixed_rate = 0.25 }
"""
    )
    loaded = load_config(config)
    assert loaded.model == ModelConfig(
        name=str(world / "red.keras"), labels=world / "labels.txt", weights=None
    )
    (check,) = loaded.checks
    assert check.name == "plain->reddish"
    assert check.images == (world / "photos",)
    assert check.patches == (world / "patches" / "grey.png", world / "patches" / "red.png")
    assert (check.sizes, check.placements, check.seed) == ((0.3,), "corners", 3)
    assert check.limits == Limits(best_rate=0.5, fixed_rate=0.25, tolerance=0.02)


def test_a_relative_variable_means_the_current_directory(world, tmp_path, monkeypatch):
    """`PATCHFINDER_DATA=../shared/data patchfinder audit experiments/x.toml`: the variable's
    relative value is the shell's (the current directory), while paths written in the file
    stay relative to the file."""
    folder = tmp_path / "configs" / "nested"
    folder.mkdir(parents=True)
    config = write_config(folder)
    monkeypatch.chdir(world.parent)
    monkeypatch.setenv("AUDIT_WORLD", world.name)  # relative to the current directory
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    loaded = load_config(config)
    assert loaded.checks[0].images == (world / "photos",)
    assert loaded.model.name == str(world / "red.keras")
    monkeypatch.setenv("AUDIT_WORLD", f"./{world.name}/../{world.name}")
    result = run_cli("audit", str(config), "--json", str(tmp_path / "out.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.json").read_text())["checks"][0]["n"] == 10


CONFIG_PROBLEMS = {
    "unset variable": (
        'images = ["${NOT_SET_ANYWHERE}/photos"]',
        "checks[0].images[0]: environment variable NOT_SET_ANYWHERE is not set",
    ),
    "size out of range": ("sizes = [0.4, 1.5]", "checks[0].sizes: expected fractions"),
    "placement": ('placements = "corners+middle"', "checks[0].placements: Unknown placement"),
    "glob without match": ('patches = ["patches/*.jpg"]', "checks[0].patches[0]: no file matches"),
    "limit not a rate": ("limits = { best_rate = 2 }", "checks[0].limits.best_rate: expected a"),
    "no src photos": ('images = "photos/grey-0.png"', "no image labelled plain among the 1 images"),
    "same class twice": ('pair = "plain:plain"', "checks[0].pair: the pair's classes must differ"),
    "max_images zero": ("max_images = 0", "checks[0].max_images: expected a whole number >= 1"),
}


@pytest.mark.parametrize("line, expected", CONFIG_PROBLEMS.values(), ids=CONFIG_PROBLEMS)
def test_each_config_problem_is_located(world, line, expected):
    key = line.split(" = ")[0]
    defaults = {
        "pair": '"plain:reddish"',
        "images": '["photos"]',
        "patches": '["patches/red.png"]',
    }
    lines = [f"{k} = {v}" for k, v in defaults.items() if k != key] + [line]
    config = world / "problem.toml"
    config.write_text(
        'model = { name = "red.keras", labels = "labels.txt" }\n[[checks]]\n' + "\n".join(lines)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    "model, expected",
    [
        ('name = "resnet-9000"', "model.name: Unknown model 'resnet-9000'"),
        ('name = "efficientnet-lite0"\npreprocess = "unit"', "model.preprocess: applies to"),
        ('name = "gone.keras"', "model.name: model file not found"),
    ],
)
def test_model_problems_are_found_without_loading_it(world, model, expected):
    config = world / "model.toml"
    config.write_text(
        f'[model]\n{model}\n[[checks]]\npair = "snorkel:scuba_diver"\n'
        f'images = ["photos/grey-0.png"]\npatches = ["patches"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_duplicate_names_and_bad_toml(world):
    config = world / "twice.toml"
    check = '[[checks]]\npair = "plain:reddish"\nimages = "photos"\npatches = "patches"\n'
    config.write_text('model = { name = "red.keras", labels = "labels.txt" }\n' + check * 2)
    with pytest.raises(ConfigError, match=r"checks\[1\]\.name: 'plain->reddish' is also"):
        load_config(config)
    config.write_text("[[checks]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config)


# --- the verdict -----------------------------------------------------------------------------


def measured(best: int, fixed: int, n: int, limits: Limits) -> AuditResult:
    """A one-check result of `best` and `fixed` flips out of `n`, built without a model."""
    (best_low,), (best_high,) = wilson_interval([best], n)
    (fixed_low,), (fixed_high,) = wilson_interval([fixed], n)
    rates = PatchRates(
        "p", "given", n, best / n if n else float("nan"), best_low, best_high,
        fixed / n if n else float("nan"), fixed_low, fixed_high, "0.5 top-left",
    )  # fmt: skip
    check = Check("c", "a:b", (), (), limits=limits)
    config = AuditConfig(Path("audit.toml"), ModelConfig(), (check,))
    return AuditResult(config, "m", "w", (CheckResult(check, "a:b", n, n, (), (rates,)),))


VERDICTS = {
    "rate equal to its limit passes": (5, 2, 10, Limits(best_rate=0.5), None, ()),
    "over the best limit": (6, 2, 10, Limits(best_rate=0.5), None, ("best_rate 0.600",)),
    "over the fixed limit": (6, 3, 10, Limits(fixed_rate=0.2), None, ("fixed_rate 0.300",)),
    "no limits, no baseline": (9, 9, 10, Limits(), None, ()),
    "too few images": (0, 0, 0, Limits(best_rate=0.5), None, ("n=0",)),
    "within the tolerance": (6, 3, 10, Limits(tolerance=0.1), Baseline(0.5, 0.2, 10), ()),
    "beyond the tolerance": (
        6, 4, 10, Limits(tolerance=0.1), Baseline(0.5, 0.2, 10), ("fixed_rate 0.400",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("best, fixed, n, limits, before, failing", VERDICTS.values(), ids=VERDICTS)
def test_verdicts(best, fixed, n, limits, before, failing):
    baseline = None if before is None else {"c": before}
    verdict = compare(measured(best, fixed, n, limits), baseline)
    (outcome,) = verdict.outcomes
    assert len(outcome.failures) == len(failing), outcome.failures
    for failure, start in zip(outcome.failures, failing, strict=True):
        assert failure.startswith(start), failure
    assert verdict.exit_status == (audit.FAILED if failing else audit.PASSED)


def test_a_check_missing_from_the_baseline_is_noted_not_failed():
    verdict = compare(measured(6, 6, 10, Limits()), {"other": Baseline(0.0, 0.0, 10)})
    assert verdict.passed and verdict.outcomes[0].notes == ("no baseline for this check yet",)


# --- the shipped example on the shared data --------------------------------------------------


@pytest.mark.slow
def test_the_example_config_passes_and_fails_below_its_measured_rate(data_root, monkeypatch):
    """`experiments/audit-example.toml` on the real model and photos (~5 min on 2 cores):
    within its limits; the same numbers fail once a limit is set below a measured rate."""
    import dataclasses

    from patchfinder.model import load_model

    repo = Path(__file__).parents[1]
    monkeypatch.chdir(repo)  # the README's relative root, from the clone
    monkeypatch.setenv("PATCHFINDER_DATA", os.path.relpath(data_root.absolute(), repo))
    config = load_config(Path("experiments") / "audit-example.toml")
    result = run_audit(config, model=load_model(config.model.name))
    assert compare(result).exit_status == audit.PASSED
    snorkel = next(check for check in result.checks if check.check.name == "snorkel-train")
    assert snorkel.n == 100 and snorkel.best.best_rate > 0.1  # the train patches do flip some
    lowered = dataclasses.replace(
        snorkel.check,
        limits=dataclasses.replace(snorkel.check.limits, best_rate=snorkel.best.best_rate - 0.01),
    )
    failing = dataclasses.replace(
        result,
        checks=tuple(
            dataclasses.replace(check, check=lowered) if check is snorkel else check
            for check in result.checks
        ),
    )
    verdict = compare(failing)
    assert verdict.exit_status == audit.FAILED
    assert [o.name for o in verdict.outcomes if o.failures] == ["snorkel-train"]
