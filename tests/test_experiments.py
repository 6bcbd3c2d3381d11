"""Experiments: the shipped files, config errors, the data-root message, and `reproduce` end
to end on a tiny 1000-class model (every output, the side-by-side table, determinism)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from patchfinder.config import ConfigError
from patchfinder.datasets import DATASETS
from patchfinder.experiments import (
    EXPERIMENTS_DIR,
    check_data_root,
    list_experiments,
    load_experiment,
    read_experiment,
)
from patchfinder.labels import imagenet

from conftest import run_cli, tiny_cnn

SHIPPED = ("baseball-whale", "noodles-wok", "train-patch")

EXPERIMENT = """
name = "tiny"
title = "A tiny experiment"
pair = "{pair}"

[data]
pool = ["imagenet-samples"]
images = ["tiny-imagenet-targets"]
patches = ["activation-atlas-article/patches/train-*.png"]
noise = ["activation-atlas-article/patches/random.png"]

[evaluation]
sizes = [0.3, 0.5]
placements = "corners"
seed = 3
screening_fraction = 0.5
max_evaluation = 6

[discovery]
layer = "conv3"
top_k = 2
samples_per_image = 4
grid = 3
random_crops = 1
optimize_steps = 2

[article]
model = "InceptionV1"
data = "1,000 photos per class"
n = 827
best_rate = 0.85
fixed_rate = 0.654
noise_best_rate = 0.139
noise_fixed_rate = 0.042
"""


def test_the_shipped_experiments_load_and_name_known_datasets():
    experiments = list_experiments()
    assert [e.name for e in experiments] == list(SHIPPED)
    for experiment in experiments:
        assert experiment.file == EXPERIMENTS_DIR / f"{experiment.name}.toml"
        assert set(experiment.datasets) <= set(DATASETS)
        assert experiment.article.n > 0
        assert 0 < experiment.article.noise_fixed_rate < experiment.article.fixed_rate
        assert experiment.article.fixed_rate < experiment.article.best_rate <= 1
        patch_set = experiment.data["patches"][0].rsplit("/", 1)[1].split("-")[0]
        assert patch_set in {"train", "baseball", "noodles"}


def test_the_variant_experiments_are_sound_and_vary_one_main_experiment():
    # Each variant is a main experiment with its name, layer, seed or discovery counts changed.
    from patchfinder.efficientnet_lite import ATLAS_LAYERS

    mains = {e.name: e for e in list_experiments()}
    variants = sorted((EXPERIMENTS_DIR / "variants").glob("*.toml"))
    assert variants
    for file in variants:
        variant = read_experiment(file)
        assert variant.name == file.stem
        main = mains[next(name for name in mains if variant.name.startswith(name + "-"))]
        assert (variant.pair, variant.data, variant.article) == (main.pair, main.data, main.article)
        assert (variant.sizes, variant.placements) == (main.sizes, main.placements)
        assert variant.discovery["layer"] in ATLAS_LAYERS["lite0"]


def test_a_variant_extends_its_base_table_by_table(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(EXPERIMENT.format(pair="snorkel:scuba_diver"))
    (tmp_path / "v").mkdir()
    variant = tmp_path / "v" / "variant.toml"
    variant.write_text('extends = "../base.toml"\n[evaluation]\nseed = 7\n')
    original, varied = read_experiment(base), read_experiment(variant)
    assert varied.name == "variant"  # the file's stem: a name is never inherited
    assert varied.seed == 7 and varied.sizes == original.sizes  # merged key by key
    assert (varied.pair, varied.data) == (original.pair, original.data)
    assert varied.article == original.article
    variant.write_text('extends = "../missing.toml"\n')
    with pytest.raises(ConfigError, match="not found"):
        read_experiment(variant)
    variant.write_text('extends = "variant.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        read_experiment(variant)


@pytest.mark.slow
def test_the_shipped_experiments_find_their_data(data_root):
    for experiment in list_experiments():
        assert check_data_root(experiment, data_root) == Path(os.path.abspath(data_root))
        assert len(experiment.paths("patches", data_root)) == 10
        assert [p.name for p in experiment.paths("noise", data_root)] == ["random.png"]


def test_experiments_are_found_in_the_working_folder_first(tmp_path, monkeypatch):
    # `pip install .` copies the package, not experiments/: a clone's root must serve.
    (tmp_path / "experiments").mkdir()
    shutil.copy(EXPERIMENTS_DIR / "noodles-wok.toml", tmp_path / "experiments" / "mine.toml")
    (tmp_path / "experiments" / "notes.toml").write_text('title = "no [article]: not listed"\n')
    monkeypatch.chdir(tmp_path)
    assert [e.name for e in list_experiments()] == ["noodles-wok"]
    assert load_experiment("mine").file == tmp_path / "experiments" / "mine.toml"
    monkeypatch.chdir(tmp_path / "experiments")
    assert [e.name for e in list_experiments()] == list(SHIPPED)


def test_an_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ValueError, match="baseball-whale, noodles-wok, train-patch"):
        load_experiment("train-patches")


def test_every_problem_in_an_experiment_file_is_reported_at_once(tmp_path):
    bad = EXPERIMENT.format(pair="snorkel:snorkle").replace(
        'pool = ["imagenet-samples"]', 'pool = ["imagenet-sample"]'
    )
    bad = bad.replace("sizes = [0.3, 0.5]", "sizes = [0.3, 1.5]").replace("n = 827", "")
    bad = bad.replace("top_k = 2", "top_k = -1\ntopk = 2")
    file = tmp_path / "bad.toml"
    file.write_text(bad)
    with pytest.raises(ConfigError) as caught:
        read_experiment(file)
    problems = "\n".join(caught.value.problems)
    assert "pair: " in problems and "snorkle" in problems
    assert "'imagenet-sample' is not a known dataset" in problems
    assert "evaluation.sizes" in problems
    assert "article: missing n" in problems
    assert "discovery.top_k" in problems
    assert "discovery.topk: unknown key (did you mean top_k?)" in problems
    assert len(caught.value.problems) == 6


def test_data_paths_must_stay_under_the_data_root(tmp_path):
    file = tmp_path / "escape.toml"
    file.write_text(
        EXPERIMENT.format(pair="snorkel:scuba_diver").replace(
            '"tiny-imagenet-targets"', '"tiny-imagenet-targets/../../etc"'
        )
    )
    with pytest.raises(ConfigError, match="must be relative to the data root"):
        read_experiment(file)


def test_a_missing_data_root_names_each_dataset_and_its_source(tmp_path):
    experiment = load_experiment("train-patch")
    with pytest.raises(FileNotFoundError) as caught:
        check_data_root(experiment, None)
    message = str(caught.value)
    assert "--data" in message and "PATCHFINDER_DATA" in message
    for name in experiment.datasets:
        assert name in message and DATASETS[name].repository in message
    (tmp_path / "imagenet-samples").mkdir()
    with pytest.raises(FileNotFoundError) as caught:
        check_data_root(experiment, tmp_path)
    assert "  imagenet-samples:" not in str(caught.value)
    assert "patchfinder data fetch nips17-dev tiny-imagenet-targets" in str(caught.value)


def _planted_pair(model, inputs: np.ndarray, *, src: int, dst: int, lean: float = 1.0) -> None:
    """Rewrite the tiny model's head so that, by construction rather than by luck of the
    floats: every input is classified `src` by a wide margin, and every non-zero vector at
    `conv3` favours `dst`. Then logit[dst] - logit[src] = c * sum(pooled conv3) - margin with
    c > 0, so each conv3 vector's attribution (ReLU output times the positive gradient c / HW)
    is positive, and the clean margin is at least 5 logits on every input. With `lean` < 0
    every vector favours src instead (c < 0), so no atlas cell favours dst."""
    import keras

    head = model.get_layer("logits")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.weights)  # (16, K), (K,)
    pooled = keras.ops.convert_to_numpy(
        keras.Model(model.input, model.get_layer("pool").output)(inputs)
    )  # (n, 16)
    logits = pooled @ kernel + bias  # (n, K)
    bias[src] += float(logits.max() - logits[:, src].min()) + 10.0
    c = 1.0 / max(float(pooled.sum(axis=1).max()), 1e-3)  # c * sum(pooled) <= 1 on the inputs
    kernel[:, dst] = kernel[:, src] + lean * c
    bias[dst] = bias[src] - 6.0
    head.set_weights([kernel, bias])


@pytest.fixture
def tiny_root(tmp_path, rng):
    """A data root with the shipped layout, a saved tiny 1000-class model whose head makes
    every src photo eligible and every atlas vector favour dst (`_planted_pair`), and the
    experiment file."""
    return _tiny_root(tmp_path, rng, lean=1.0)


def _tiny_root(
    tmp_path, rng, *, lean: float, sources: str = '["attribution", "transfer", "aimed"]'
):
    classes = imagenet()
    src_name, dst_name = "snorkel", "scuba_diver"
    model = tiny_cnn(num_classes=1000)
    root = tmp_path / "data"
    pool, src = root / "imagenet-samples", root / "tiny-imagenet-targets"
    patches = root / "activation-atlas-article" / "patches"
    for folder in (pool, src, patches):
        folder.mkdir(parents=True)
    pool_pixels = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(10)]
    for i, pixels in enumerate(pool_pixels):
        Image.fromarray(pixels).save(pool / f"p{i}.png")
    pixels = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(16)]
    inputs = np.stack(
        [np.asarray(Image.fromarray(p).resize((32, 32)), np.float32) for p in pool_pixels + pixels]
    )
    src_index, dst_index = classes.get(src_name).index, classes.get(dst_name).index
    _planted_pair(model, inputs / 255.0, src=src_index, dst=dst_index, lean=lean)
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    with open(src / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "name"])
        for i, p in enumerate(pixels):
            Image.fromarray(p).save(src / f"s{i}.png")
            writer.writerow([f"s{i}.png", src_name])
    with open(patches / "patches.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "kind"])
        for i in range(3):
            name = f"train-{i:02d}.png"
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(patches / name)
            writer.writerow([name, "published"])
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            patches / "random.png"
        )
        writer.writerow(["random.png", "noise"])
    experiment = tmp_path / "tiny.toml"
    text = EXPERIMENT.format(pair=f"{src_name}:{dst_name}")
    experiment.write_text(
        text.replace("optimize_steps = 2\n", f"optimize_steps = 2\nsources = {sources}\n")
    )
    return root, model_path, experiment, len(pixels)


def _reproduce(tiny_root, out):
    root, model_path, experiment, _ = tiny_root
    return run_cli(
        "reproduce", str(experiment), "--model", str(model_path), "--preprocess", "unit",
        "--data", str(root), "--out", str(out),
    )  # fmt: skip


def test_reproduce_writes_the_side_by_side_table_and_is_deterministic(
    tiny_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATCHFINDER_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    result = _reproduce(tiny_root, first)
    assert result.exit_code == 0, result.output
    for name in ("summary.md", "summary.csv", "flips.csv", "report.html", "provenance.json",
                 "split.json", "proposals/proposals.csv", "atlas/cells.csv"):  # fmt: skip
        assert (first / name).is_file(), name
    summary = pd.read_csv(first / "summary.csv")
    kinds = summary.groupby("kind")["patch"].apply(set).to_dict()
    assert kinds["given"] == {"train-00", "train-01", "train-02"}
    assert "random" in kinds["noise"]
    assert {"discovered", "random-crop", "optimized"} <= set(kinds)
    eligible = tiny_root[3]
    split = json.loads((first / "split.json").read_text())
    assert not set(split["screening"]) & set(split["evaluation"])
    assert set(split["evaluated"]) <= set(split["evaluation"])
    assert len(split["evaluated"]) == min(6, eligible - len(split["screening_eligible"]))
    assert (summary["n"] == len(split["evaluated"])).all()
    text = (first / "summary.md").read_text()
    table = text.split("\n\n")[1]  # the headline table comes right after the title
    assert "article's patches, as published" in table and "85.0 %" in table
    assert "article's noise control, as published" in table and "4.2 %" in table
    for label in ("article's patches (top one)", "discovered (top one)", "optimised"):
        assert label in table
    assert "article's patches, as published" in (first / "report.html").read_text()
    provenance = json.loads((first / "provenance.json").read_text())
    assert provenance["experiment"] == "tiny" and provenance["seed"] == 3
    assert provenance["data"]["images"] == {"tiny-imagenet-targets": 16}
    assert provenance["data"]["patches"] == {
        f"activation-atlas-article/patches/train-0{i}.png": 1 for i in range(3)
    }
    assert "versions" in provenance and "git_commit" in provenance
    shutil.rmtree(tmp_path / "cache")  # the re-run recomputes everything
    result = _reproduce(tiny_root, second)
    assert result.exit_code == 0, result.output
    for name in ("summary.csv", "flips.csv", "split.json"):
        assert (first / name).read_text() == (second / name).read_text(), name


def test_a_run_without_proposals_says_so_in_the_summary_and_the_output(tmp_path, rng, monkeypatch):
    # Every vector favours src, so no cell favours dst by attribution or by transfer (aimed
    # crops are the nearest to the optimised patch, whatever they favour: left out).
    root, model_path, experiment, _ = _tiny_root(
        tmp_path, rng, lean=-1.0, sources='["attribution", "transfer"]'
    )
    monkeypatch.chdir(tmp_path / "data" / "imagenet-samples")
    monkeypatch.setenv("PATCHFINDER_DATA", "..")  # relative: the current directory's parent
    result = run_cli(
        "reproduce", str(experiment), "--model", str(model_path), "--preprocess", "unit",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["data_root"] == str(root)
    assert "No discovered patch" in result.output
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert "discovered" not in set(summary["kind"]) and "optimized" in set(summary["kind"])
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "discovered (top one): none survived" in text and "No discovered patch" in text


def test_reproduce_without_data_says_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("PATCHFINDER_DATA", raising=False)
    result = run_cli("reproduce", "train-patch")
    assert result.exit_code == 2
    assert "tiny-imagenet-targets" in result.output and "rangeetpan/IMagenet" in result.output
    result = run_cli("reproduce", "no-such-experiment", "--data", str(tmp_path))
    assert result.exit_code == 2 and "train-patch" in result.output
    result = run_cli("reproduce")
    assert result.exit_code == 2 and "--list" in result.output


def test_reproduce_lists_the_experiments():
    result = run_cli("reproduce", "--list")
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.output


def test_data_commands_list_and_check_their_arguments(tmp_path, monkeypatch):
    from rich.console import Console

    from patchfinder import cli

    monkeypatch.setattr(cli, "console", Console(width=300))  # one line per row
    (tmp_path / "nips17-dev").mkdir()  # a folder without its labels is not a copy
    result = run_cli("data", "list", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "│" in line]
    for dataset in DATASETS.values():
        (row,) = [row for row in rows if f"│ {dataset.name} " in row]
        assert dataset.source in row and "│ no " in row
    result = run_cli("data", "fetch", "imagenet-samples", "--root", str(tmp_path), "--url", "x")
    assert result.exit_code == 2 and "NAME=URL" in result.output
    result = run_cli("data", "fetch", "imagenet-sample", "--root", str(tmp_path))
    assert result.exit_code == 2 and "imagenet-samples" in result.output
