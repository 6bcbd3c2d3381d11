"""Feature-visualisation icons on the tiny three-conv model: properties, not golden numbers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchfinder import featurevis, render
from patchfinder.atlas import Atlas
from patchfinder.labels import ClassList, ImageClass
from patchfinder.model import KerasClassifier
from patchfinder.types import ActivationSamples, Cell, ClassPair

from conftest import tiny_cnn

LAYER = "conv3"
S = 32


@pytest.fixture(scope="module")
def model() -> KerasClassifier:
    return KerasClassifier(
        tiny_cnn(),
        name="tiny",
        input_size=S,
        classes=ClassList([ImageClass(i, "", f"class{i}") for i in range(10)]),
        layers=("conv1", "conv2", "conv3"),
        default_layer=LAYER,
        weights_id="random",
        preprocess="unit",
    )


@pytest.fixture(scope="module")
def directions(model) -> np.ndarray:
    """(3, 16) directions the model does produce: activation vectors of noise images, as an
    atlas cell's mean would be (a random direction may point where no ReLU output can)."""
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 255, (2, S, S, 3)).astype(np.float32)
    acts, _ = model.activations(noise, LAYER)
    vectors = acts.numpy().reshape(-1, acts.shape[-1])  # (2 h w, 16)
    return vectors[rng.choice(len(vectors), 3, replace=False)]


def icons(model, directions, **kwargs) -> np.ndarray:
    settings = {"icon_size": S, "steps": 24, "batch_size": 2, "seed": 0} | kwargs
    return featurevis.feature_icons(model, LAYER, directions, **settings)


@pytest.fixture(scope="module")
def optimised(model, directions) -> np.ndarray:
    return icons(model, directions)


def test_shape_dtype_and_progress(model, directions):
    counts: list[int] = []
    result = icons(model, directions, icon_size=20, steps=3, progress=counts.append)
    assert result.shape == (3, 20, 20, 3) and result.dtype == np.uint8
    assert sum(counts) == 3 * 3  # directions x steps, in batches of 2 and 1


def test_a_seed_gives_the_same_icons(model, directions, optimised):
    np.testing.assert_array_equal(icons(model, directions), optimised)
    assert not np.array_equal(icons(model, directions, seed=1), optimised)


def test_optimising_raises_the_objective_of_every_direction(model, directions, optimised):
    start = icons(model, directions, steps=0)  # the initial images, nearly uniform grey
    assert start.std() < 3 < optimised.std()
    before = featurevis.direction_objective(model, LAYER, start, directions)
    after = featurevis.direction_objective(model, LAYER, optimised, directions)
    assert (after > before).all()


def test_different_directions_give_different_icons(optimised):
    for i in range(len(optimised)):
        for j in range(i):
            difference = np.abs(optimised[i].astype(int) - optimised[j].astype(int)).mean()
            assert difference > 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"icon_size": 0}, "icon_size"),
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_value_errors(model, directions, kwargs, match):
    with pytest.raises(ValueError, match=match):
        icons(model, directions, **kwargs)


def test_directions_must_match_the_layer(model, directions):
    with pytest.raises(ValueError, match="Received: shape \\(3, 15\\)"):
        icons(model, directions[:, :-1])


# --- write_atlas -----------------------------------------------------------------------------


def small_atlas(model: KerasClassifier, folder, vectors: np.ndarray) -> tuple:
    """Samples (N = len(vectors)) on one red image and an atlas of two cells on a 2 x 2 grid,
    cell k holding the samples k, k + 2, k + 4, ..."""
    Image.fromarray(np.full((S, S, 3), (255, 0, 0), np.uint8)).save(folder / "red.png")
    n = len(vectors)
    samples = ActivationSamples(
        layer=LAYER,
        grid=(8, 8),
        input_size=S,
        files=[str(folder / "red.png")],
        vectors=vectors.astype(np.float32),
        image=np.zeros(n, np.int64),
        position=np.zeros((n, 2), np.int64),
        box=np.tile([0, 0, 8, 8], (n, 1)),
        label=np.zeros(n, np.int64),
        prediction=np.zeros(n, np.int64),
        pair_attribution=np.linspace(-1.0, 1.0, n, dtype=np.float32),
        class_ids=np.tile([0, 1], (n, 1)),
        class_attribution=np.ones((n, 2), np.float32),
    )
    cells = []
    for k, (x, y) in enumerate([(0, 0), (1, 1)]):
        members = np.arange(k, n, 2)
        cells.append(
            Cell(
                x=x,
                y=y,
                members=members,
                mean_activation=vectors[members].mean(axis=0).astype(np.float32),
                attribution=float(samples.pair_attribution[members].mean()),
                top_classes=((0, 1.0),),
                exemplar=int(members[0]),
            )
        )
    classes = model.classes
    atlas = Atlas(
        pair=ClassPair(classes[0], classes[1]),
        layer=LAYER,
        xy=np.random.default_rng(0).uniform(size=(n, 2)),
        n=2,
        cells=cells,
        pair_xy=np.random.default_rng(1).uniform(size=(n, 2)),
    )
    return samples, atlas


def test_write_atlas_draws_the_feature_icons_of_the_cell_means(model, directions, tmp_path):
    samples, atlas = small_atlas(model, tmp_path, np.concatenate([directions, directions[::-1]]))
    counts: list[int] = []
    render.write_atlas(
        tmp_path / "out", samples, atlas, model.classes, details={}, icon_size=16,
        icons="featurevis", model=model, featurevis_steps=3, seed=2, progress=counts.append,
    )  # fmt: skip
    assert sum(counts) == 2 * 3  # cells x steps
    means = np.stack([cell.mean_activation for cell in atlas.cells])
    expected = featurevis.feature_icons(model, LAYER, means, icon_size=16, steps=3, seed=2)
    canvas = np.asarray(Image.open(tmp_path / "out" / "atlas.png").convert("RGB"))
    for cell, icon in zip(atlas.cells, expected, strict=True):
        block = canvas[cell.y * 16 : (cell.y + 1) * 16, cell.x * 16 : (cell.x + 1) * 16]
        np.testing.assert_array_equal(block[2:-2, 2:-2], icon[2:-2, 2:-2])  # inside the frame


def test_write_atlas_with_featurevis_icons_needs_a_model(model, directions, tmp_path):
    samples, atlas = small_atlas(model, tmp_path, np.concatenate([directions, directions]))
    with pytest.raises(ValueError, match="Received: model=None"):
        render.write_atlas(
            tmp_path / "out", samples, atlas, model.classes, details={}, icons="featurevis"
        )
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_write_atlas_rejects_unknown_icon_kinds(model, directions, tmp_path):
    samples, atlas = small_atlas(model, tmp_path, np.concatenate([directions, directions]))
    with pytest.raises(ValueError, match="Received: icons='sketch'"):
        render.write_atlas(
            tmp_path / "out", samples, atlas, model.classes, details={}, icons="sketch"
        )
