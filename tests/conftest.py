"""Shared fixtures: seeded randomness, tiny models built in-test, and the shared data root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder named by PATCHFINDER_DATA; tests that need it skip without it."""
    value = os.environ.get("PATCHFINDER_DATA")
    if not value:
        pytest.skip("PATCHFINDER_DATA is not set: point it at the shared data folder")
    root = Path(value)
    if not (root / "imagenet-samples" / "labels.csv").is_file():
        pytest.skip(f"PATCHFINDER_DATA={root} has no imagenet-samples/labels.csv")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep model caches out of the user's home, shared across one test session."""
    if "PATCHFINDER_CACHE" not in os.environ:
        monkeypatch.setenv("PATCHFINDER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_cnn(num_classes: int = 10, size: int = 32, *, softmax: bool = False, seed: int = 0):
    """A three-conv Keras classifier with named spatial layers `conv1`, `conv2`, `conv3`."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax" if softmax else None, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name="tiny")


def run_cli(*args: str):
    """Run the command line as the console script does (multi-value options expanded)."""
    from typer.testing import CliRunner

    from patchfinder.cli import app, expand_multi_values

    return CliRunner().invoke(app, expand_multi_values(args))
