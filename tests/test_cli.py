"""The command line as a user runs it: exit codes, outputs and error messages."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from patchfinder import __version__
from patchfinder.cli import expand_multi_values

from conftest import run_cli, tiny_cnn

run = run_cli


def test_multi_value_options_take_every_value_up_to_the_next_option():
    args = ["atlas", "--images", "a", "b", "--pair", "x:y", "--patches", "p", "--seed", "1"]
    assert expand_multi_values(args) == [
        "atlas", "--images", "a", "--images", "b", "--pair", "x:y", "--patches", "p",
        "--seed", "1",
    ]  # fmt: skip


@pytest.fixture
def tiny_model_and_photos(tmp_path, rng):
    """A saved 10-class Keras model, its labels file, and a folder of photos with one bad file."""
    model_path = tmp_path / "tiny.keras"
    tiny_cnn(softmax=True).save(model_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(10)))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        pixels = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"photo{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return model_path, labels, photos


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_models_lists_the_zoo():
    result = run("models")
    assert result.exit_code == 0
    for name in ("efficientnet-lite0", "inception-v3", "inception-v1", "inception-v1-lucid"):
        assert name in result.stdout


def test_classify_csv_with_a_saved_model(tiny_model_and_photos):
    model_path, labels, photos = tiny_model_and_photos
    result = run(
        "classify", str(photos), "--model", str(model_path), "--labels", str(labels),
        "--preprocess", "unit", "--format", "csv", "--top", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert list(table.columns[:4]) == ["file", "label", "top1", "top1_prob"]
    assert "top3_prob" in table.columns and "top4" not in table.columns
    assert len(table) == 5 and (table["label"] == "").all()
    assert table["top1"].str.startswith("thing").all()
    assert ((table["top1_prob"] >= table["top2_prob"]) & (table["top2_prob"] > 0)).all()
    assert "broken.jpg" in result.stderr and "1 files skipped" in result.stderr


def test_classify_json_and_table_to_file(tiny_model_and_photos, tmp_path):
    model_path, labels, photos = tiny_model_and_photos
    common = ["classify", str(photos / "photo0.png"), "-m", str(model_path), "--labels"]
    result = run(*common, str(labels), "-f", "json", "-o", str(tmp_path / "out.json"))
    assert result.exit_code == 0, result.output
    records = pd.read_json(tmp_path / "out.json")
    assert len(records) == 1 and records.loc[0, "file"].endswith("photo0.png")
    result = run(*common, str(labels))
    assert result.exit_code == 0 and "photo0.png" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "{photos}", "--model", "resnet-9000"], "Unknown model 'resnet-9000'"),
        (["classify", "{photos}/absent.jpg"], "absent.jpg"),
        (["classify", "{photos}", "--model", "{model}"], "--labels"),
        (["classify", "{photos}", "--model", "{model}", "--labels", "{labels}",
          "--preprocess", "sepia"], "Unknown preprocessing 'sepia'"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_a_message(tiny_model_and_photos, args, message):
    model_path, labels, photos = tiny_model_and_photos
    filled = [a.format(photos=photos, model=model_path, labels=labels) for a in args]
    result = run(*filled)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_default_model_reaches_85_percent_on_imagenet_samples(data_root, tmp_path):
    """The foundation's promise: offline, the embedded default model classifies correctly."""
    out = tmp_path / "predictions.csv"
    result = run("classify", str(data_root / "imagenet-samples"), "-f", "csv", "-o", str(out))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 1000 and (table["label"] != "").all()
    top1 = (table["top1"] == table["label"]).mean()
    assert top1 >= 0.85, f"top-1 {top1:.3f}"


def test_atlas_writes_every_output(tiny_model_and_photos, tmp_path, monkeypatch):
    model_path, labels, photos = tiny_model_and_photos
    monkeypatch.setenv("PATCHFINDER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "atlas"
    args = [
        "atlas",
        "--images",
        str(photos / "photo0.png"),
        str(photos / "photo1.png"),
        str(photos),
        "--pair",
        "thing1:thing2",
        "--out",
        str(out),
        "--model",
        str(model_path),
        "--labels",
        str(labels),
        "--preprocess",
        "unit",
        "--layer",
        "conv2",
        "--samples-per-image",
        "6",
        "--grid",
        "4",
        "--min-count",
        "1",
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    for name in ("cells.csv", "activations.npz", "atlas.npz", "atlas.png", "pair_atlas.png",
                 "atlas.html", "provenance.json"):  # fmt: skip
        assert (out / name).is_file(), name
    cells = pd.read_csv(out / "cells.csv")
    for column in ("cell_x", "cell_y", "count", "attribution", "top_classes"):
        assert column in cells.columns
    # photo0 and photo1 are given twice (alone and in the folder): 7 images, 6 vectors each.
    assert cells["count"].sum() == 7 * 6
    assert list(cells["attribution"]) == sorted(cells["attribution"], reverse=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pair", "thing1:nothing"], "Unknown class 'nothing'"),
        (["--pair", "thing1"], "SRC:DST"),
        (["--layer", "conv9"], "Available layers: conv1, conv2, conv3"),
    ],
)
def test_atlas_usage_errors(tiny_model_and_photos, tmp_path, args, message):
    model_path, labels, photos = tiny_model_and_photos
    common = ["atlas", "--images", str(photos), "--out", str(tmp_path / "a"), "--model",
              str(model_path), "--labels", str(labels), "--pair", "thing1:thing2"]  # fmt: skip
    result = run(*common, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_atlas_with_an_empty_pool_is_a_clear_error(tiny_model_and_photos, tmp_path):
    model_path, labels, _ = tiny_model_and_photos
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("atlas", "--images", str(empty), "--pair", "thing1:thing2", "--model",
                 str(model_path), "--labels", str(labels))  # fmt: skip
    assert result.exit_code == 2 and "empty" in result.stderr
