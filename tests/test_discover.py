"""`discover` and `evaluate` end to end on a tiny model: every output, the disjoint split."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli, tiny_cnn


@pytest.fixture
def world(tmp_path, rng):
    """A saved tiny 10-class model; a pool of 12 photos; 16 photos labelled with the class
    the model predicts for most of them (so they are eligible), plus 4 of another class."""
    import keras

    model_path = tmp_path / "tiny.keras"
    model = tiny_cnn()
    model.save(model_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(10)))
    pool, src = tmp_path / "pool", tmp_path / "src"
    pool.mkdir()
    src.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(pool / f"p{i}.png")
    pixels = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(20)]
    inputs = np.stack([np.asarray(Image.fromarray(p).resize((32, 32)), np.float32) for p in pixels])
    predicted = keras.ops.convert_to_numpy(model(inputs / 255.0)).argmax(axis=1)
    common = int(np.bincount(predicted[:16]).argmax())
    other = (common + 1) % 10
    with open(src / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "name"])
        for i, p in enumerate(pixels):
            Image.fromarray(p).save(src / f"s{i}.png")
            writer.writerow([f"s{i}.png", f"thing{common if i < 16 else other}"])
    eligible = int((predicted[:16] == common).sum())
    return model_path, labels, pool, src, f"thing{common}:thing{other}", eligible


def test_discover_writes_everything_with_a_disjoint_split(world, tmp_path, monkeypatch):
    model_path, labels, pool, src, pair, eligible = world
    monkeypatch.setenv("PATCHFINDER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    result = run_cli(
        "discover", "--pool", str(pool), "--images", str(src), "--pair", pair, "--out", str(out),
        "--model", str(model_path), "--labels", str(labels), "--preprocess", "unit",
        "--layer", "conv2", "--samples-per-image", "4", "--grid", "3", "--top-k", "2",
        "--sizes", "0.3,0.5", "--random-crops", "2", "--optimize-steps", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("flips.csv", "summary.csv", "summary.md", "report.html", "split.json",
                 "provenance.json", "atlas/cells.csv", "atlas/pair_atlas.png",
                 "proposals/proposals.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert {"discovered", "noise", "random-crop", "optimized"} <= set(summary["kind"])
    split = json.loads((out / "split.json").read_text())
    assert split["screening"] and split["evaluation"]
    assert not set(split["screening"]) & set(split["evaluation"])
    assert set(split["screening_eligible"]) <= set(split["screening"])
    assert set(split["evaluated"]) <= set(split["evaluation"])
    provenance = json.loads((out / "provenance.json").read_text())
    # Every patch is measured on the evaluation part only, on images the model gets right.
    assert (summary["n"] == provenance["n_evaluation"]).all()
    assert provenance["n_evaluation"] + provenance["n_screening"] == eligible
    flips = pd.read_csv(out / "flips.csv")
    assert (
        (flips["ci_low"] <= flips["flip_rate"]) & (flips["flip_rate"] <= flips["ci_high"])
    ).all()
    for file in pd.read_csv(out / "proposals/proposals.csv")["patch"]:
        assert (out / "proposals" / f"{file}.png").is_file()


def test_discover_takes_its_candidates_from_the_sources_asked_for(world, tmp_path, monkeypatch):
    model_path, labels, pool, src, pair, _ = world
    monkeypatch.setenv("PATCHFINDER_CACHE", str(tmp_path / "cache"))
    common = (
        "discover", "--pool", str(pool), "--images", str(src), "--pair", pair,
        "--model", str(model_path), "--labels", str(labels), "--preprocess", "unit",
        "--layer", "conv2", "--samples-per-image", "4", "--grid", "3", "--top-k", "2",
        "--sizes", "0.5", "--random-crops", "0", "--optimize-steps", "3",
    )  # fmt: skip
    for sources in ("transfer", "aimed", "samples"):
        out = tmp_path / sources
        result = run_cli(*common, "--out", str(out), "--sources", sources)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "provenance.json").read_text())["sources"] == [sources]
        made = pd.read_csv(out / "proposals" / "proposals.csv")
        found = made[made["kind"] == "discovered"]["source"]
        assert set(found) <= {sources, f"{sources}+refined"}
        rounds = pd.read_csv(out / "screening.csv")
        assert rounds.empty or rounds["kept"].iloc[-1] == len(found)
    assert len(found) > 0  # sample crops need no cell to favour dst: the best vectors are taken
    result = run_cli(*common, "--out", str(tmp_path / "bad"), "--sources", "magic")
    assert result.exit_code == 2 and "sources must be some of" in result.output
