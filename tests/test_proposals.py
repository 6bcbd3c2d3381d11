"""Proposals and controls on synthetic atlases, tiny images and a model whose answer is known.

The model (`redness_classifier`) scores class 1 ("red") by the image's mean redness,
R - (G + B) / 2: a red patch flips a bluish-grey image from class 0 to 1, a grey one cannot,
and how often a patch flips is graded by how blue each background is.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from patchfinder import proposals as proposals_mod
from patchfinder.activations import boxes as rf_boxes
from patchfinder.atlas import Atlas, build_cells, rank_cells
from patchfinder.data import ImageRecord, ImageSet, load_image
from patchfinder.evaluate import eligible, screen
from patchfinder.labels import ClassList, ImageClass
from patchfinder.model import KerasClassifier
from patchfinder.optimize import optimize_patch
from patchfinder.paste import Corners
from patchfinder.proposals import (
    candidate_crops,
    crop_boxes,
    deduplicate,
    noise_patch,
    random_crops,
    read_patches,
    write_proposals,
)
from patchfinder.types import ActivationSamples, ClassPair, Patch, Proposal

S = 32
CLASSES = ClassList(
    [ImageClass(i, "", name) for i, name in enumerate(["snorkel", "scuba_diver", "train", "dog"])]
)
PAIR = ClassPair(CLASSES[0], CLASSES[1])


# --- a synthetic atlas over real files ------------------------------------------------------

#: (label, prediction) per pool image: src, dst, two "other" images, an image *predicted*
#: src (so not "other"), and an unlabelled one predicted as another class.
IMAGES = [(0, 0), (1, 1), (2, 2), (3, 3), (2, 0), (-1, 3)]
#: (image, grid row, grid col, pair attribution, cell x, cell y) per sampled vector.
VECTORS = [
    # cell (0, 0), the most dst-favouring: other-class images, and better-scoring src ones
    (2, 1, 1, 3.0, 0, 0),
    (2, 2, 2, 2.5, 0, 0),  # same image again: only its best vector may be used
    (3, 0, 0, 2.0, 0, 0),  # a corner box, clipped by the image edge
    (0, 1, 2, 4.0, 0, 0),  # src image: skipped while other-class images remain
    (4, 2, 1, 3.5, 0, 0),  # predicted src: skipped too
    (5, 3, 3, 1.0, 0, 0),
    (3, 1, 3, -1.0, 0, 0),  # pushes toward src: never a candidate
    # cell (1, 0): only src and dst images, so they are used
    (0, 2, 2, 1.5, 1, 0),
    (1, 1, 1, 1.2, 1, 0),
    (0, 3, 0, 0.5, 1, 0),
    # cell (2, 0) favours src: never used
    (2, 1, 2, -2.0, 2, 0),
    (3, 2, 2, -1.0, 2, 0),
    (5, 1, 1, -3.0, 2, 0),
    # cell (3, 3): weakly dst-favouring, third in rank
    (2, 3, 1, 0.2, 3, 3),
    (3, 2, 3, 0.1, 3, 3),
    (5, 0, 2, 0.1, 3, 3),
]
RF_SIDE = 12


def write_pool(folder, rng, count: int = 6) -> list[str]:
    """Noise photos (lossless PNG, not square) so every crop has its own pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    return files


def synthetic_atlas(files: list[str]) -> tuple[Atlas, ActivationSamples]:
    table = np.array(VECTORS, dtype=np.float64)
    image = table[:, 0].astype(np.int64)
    position = table[:, 1:3].astype(np.int64)
    labels = np.array([label for label, _ in IMAGES])[image]
    predictions = np.array([prediction for _, prediction in IMAGES])[image]
    vectors = np.random.default_rng(1).normal(size=(len(VECTORS), 4)).astype(np.float32)
    samples = ActivationSamples(
        layer="conv",
        grid=(4, 4),
        input_size=S,
        files=files,
        vectors=vectors,
        image=image,
        position=position,
        box=rf_boxes(position, (4, 4), RF_SIDE, S),
        label=labels,
        prediction=predictions,
        pair_attribution=table[:, 3].astype(np.float32),
        class_ids=predictions[:, None],
        class_attribution=table[:, 3:4].astype(np.float32),
    )
    xy = (table[:, 4:6] + 0.5) / 4  # each vector in the middle of its cell of a 4 x 4 grid
    cells = build_cells(samples, xy, n=4, min_count=3)
    atlas = Atlas(pair=PAIR, layer="conv", xy=xy, n=4, cells=cells, pair_xy=xy)
    return atlas, samples


@pytest.fixture
def atlas_and_samples(tmp_path, rng):
    return synthetic_atlas(write_pool(tmp_path / "pool", rng))


def picked(proposals: list[Proposal], samples: ActivationSamples) -> list[tuple]:
    """(cell, image index, attribution) of each proposal, in order."""
    files = list(samples.files)
    return [(p.cell, files.index(p.source_file), round(p.attribution, 3)) for p in proposals]


def test_crops_come_from_the_top_dst_cells_preferring_other_classes(atlas_and_samples):
    atlas, samples = atlas_and_samples
    assert [(c.x, c.y) for c in rank_cells(atlas.cells)][:3] == [(0, 0), (1, 0), (3, 3)]
    found = candidate_crops(atlas, samples, top_cells=2, exclude_classes=[0, 1], classes=CLASSES)
    assert picked(found, samples) == [
        ((0, 0), 2, 3.0),  # best vector of image 2; src (4.0) and predicted-src (3.5) skipped
        ((0, 0), 3, 2.0),
        ((0, 0), 5, 1.0),
        ((1, 0), 0, 1.5),  # a cell with only src/dst images falls back on them
        ((1, 0), 1, 1.2),
    ]
    assert [p.patch.name for p in found] == [
        "cell00-00-a", "cell00-00-b", "cell00-00-c", "cell01-00-a", "cell01-00-b",
    ]  # fmt: skip
    assert [p.source_class for p in found] == ["train", "dog", "", "snorkel", "scuba_diver"]
    unnamed = candidate_crops(atlas, samples, top_cells=2, exclude_classes=[0, 1])
    assert [p.source_class for p in unnamed] == ["2", "3", "", "snorkel", "scuba_diver"]
    assert all(p.patch.kind == "discovered" and np.isnan(p.screening_rate) for p in found)


def test_scores_replace_the_attribution_for_cells_and_members(atlas_and_samples):
    atlas, samples = atlas_and_samples
    # Reverse the ranking: what pushed most toward src now scores highest, and vice versa.
    scores = -np.asarray(samples.pair_attribution, dtype=np.float64)
    found = candidate_crops(atlas, samples, top_cells=1, per_cell=9, scores=scores)
    by_score = [c for c in atlas.cells if scores[list(c.members)].mean() > 0]
    best = max(by_score, key=lambda c: scores[list(c.members)].mean())
    assert {p.cell for p in found} == {(best.x, best.y)} != {(0, 0)}
    kept = [scores[i] for i in best.members if scores[i] > 0]
    assert len(found) == len({int(samples.image[i]) for i in best.members if scores[i] > 0})
    assert all(p.attribution < 0 for p in found) and kept  # provenance keeps the attribution
    with pytest.raises(ValueError, match="one value per sample"):
        candidate_crops(atlas, samples, scores=scores[:3])


#: Cell (0, 0)'s dst-favouring vectors, one per image, best first.
ALL_OF_CELL_00 = [((0, 0), 0, 4.0), ((0, 0), 4, 3.5), ((0, 0), 2, 3.0), ((0, 0), 3, 2.0)]
ALL_OF_CELL_00 += [((0, 0), 5, 1.0)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            {"top_cells": 1, "per_cell": 2, "exclude_classes": [0, 1]},
            [((0, 0), 2, 3.0), ((0, 0), 3, 2.0)],
            id="per-cell-limit",
        ),
        pytest.param(
            {"top_cells": 1, "exclude_classes": [0, 1], "prefer_other_classes": False},
            ALL_OF_CELL_00,
            id="no-preference",
        ),
        pytest.param(
            {"top_cells": 1},
            ALL_OF_CELL_00,
            id="nothing-excluded",
        ),
        pytest.param(
            {"top_cells": 8, "per_cell": 1, "exclude_classes": [0, 1]},
            [((0, 0), 2, 3.0), ((1, 0), 0, 1.5), ((3, 3), 2, 0.2)],
            id="only-positive-cells",
        ),
    ],
)  # fmt: skip
def test_crop_selection_options(atlas_and_samples, options, expected):
    atlas, samples = atlas_and_samples
    assert picked(candidate_crops(atlas, samples, **options), samples) == expected


def rf_centre(samples: ActivationSamples, index: int) -> tuple[float, float]:
    row, col = samples.position[index]
    return (col + 0.5) * S / samples.grid[1], (row + 0.5) * S / samples.grid[0]


@pytest.mark.parametrize(("context", "min_side"), [(2.0, 20), (1.0, 1), (3.0, 48), (0.5, 4)])
def test_crop_boxes_are_square_inside_and_hold_the_receptive_field(
    atlas_and_samples, context, min_side
):
    atlas, samples = atlas_and_samples
    found = candidate_crops(
        atlas, samples, top_cells=8, context=context, min_side=min_side, exclude_classes=[0, 1]
    )
    assert found
    for proposal in found:
        x0, y0, x1, y1 = proposal.box
        side = x1 - x0
        assert side == y1 - y0 and x0 >= 0 and y0 >= 0 and x1 <= S and y1 <= S
        # One side for all: the layer's receptive field (12) widened, even at the clipped edge.
        assert side == min(max(round(context * RF_SIDE), min_side), S)
        files = np.asarray(samples.files)[samples.image]
        (index,) = np.flatnonzero(
            (samples.pair_attribution == proposal.attribution) & (files == proposal.source_file)
        )
        cx, cy = rf_centre(samples, index)
        assert x0 <= cx <= x1 and y0 <= cy <= y1
        rx0, ry0, rx1, ry1 = samples.box[index]
        if context >= 1:  # the whole receptive-field box, clipped or not
            assert x0 <= rx0 and y0 <= ry0 and rx1 <= x1 and ry1 <= y1
        if context == 1 and min(rx0, ry0) > 0 and max(rx1, ry1) < S:
            assert (x0, y0, x1, y1) == tuple(samples.box[index])  # interior: the box itself
        # Crops are the model-input view at that box, not resized.
        view = load_image(proposal.source_file, size=S)
        np.testing.assert_array_equal(proposal.patch.pixels, view[y0:y1, x0:x1])


def test_crop_boxes_slide_inside_and_never_shrink(atlas_and_samples):
    _, samples = atlas_and_samples
    corner = 2  # vector at grid (0, 0): centre (4, 4), receptive field clipped to 0..10
    assert crop_boxes(samples, [corner], context=2.0, min_side=1).tolist() == [[0, 0, 24, 24]]
    assert crop_boxes(samples, [corner], context=9.0, min_side=1).tolist() == [[0, 0, S, S]]
    assert crop_boxes(samples, [corner], context=0.5, min_side=4).tolist() == [[1, 1, 7, 7]]


def test_each_source_image_is_decoded_once_and_bad_files_are_skipped(
    atlas_and_samples, monkeypatch, caplog
):
    atlas, samples = atlas_and_samples
    with open(samples.files[3], "wb") as handle:
        handle.write(b"not a png")
    calls: list[str] = []

    def counting(path, **kwargs):
        calls.append(str(path))
        return load_image(path, **kwargs)

    monkeypatch.setattr(proposals_mod, "load_image", counting)
    found = candidate_crops(atlas, samples, top_cells=8, exclude_classes=[0, 1])
    assert len(calls) == len(set(calls))
    assert samples.files[3] not in {p.source_file for p in found} and found
    assert "image3.png" in caplog.text


# --- deduplication ----------------------------------------------------------------------------


def proposal(name, pixels, *, file="a.png", box=(0, 0, 8, 8), attribution=1.0) -> Proposal:
    return Proposal(
        patch=Patch(name, "discovered", np.asarray(pixels, np.float32)),
        source_file=file,
        source_class="",
        box=box,
        cell=(0, 0),
        attribution=attribution,
    )


def test_deduplicate_keeps_the_better_of_near_duplicates(rng):
    texture = rng.uniform(0, 255, (20, 20, 3))
    other = rng.uniform(0, 255, (20, 20, 3))
    candidates = [
        proposal("low", texture, file="a.png", attribution=1.0),
        proposal("high", texture + 2.0, file="b.png", box=(10, 10, 30, 30), attribution=2.0),
        proposal("distinct", other, file="a.png", box=(20, 20, 30, 30), attribution=0.5),
        proposal("overlap", rng.uniform(0, 255, (20, 20, 3)), file="a.png", box=(0, 0, 8, 9)),
        proposal("other-file", rng.uniform(0, 255, (16, 16, 3)), file="c.png"),
    ]
    kept = deduplicate(candidates)
    # "low" duplicates "high" by pixels (and loses on attribution); "overlap" covers the same
    # region of a.png as "low" (IoU 8/9) and is kept only because "low" went first.
    assert [p.patch.name for p in kept] == ["high", "distinct", "overlap", "other-file"]
    assert [p.patch.name for p in deduplicate(candidates[::-1])] == [
        "other-file", "overlap", "distinct", "high"
    ]  # fmt: skip
    assert len(deduplicate(candidates, threshold=1.01, iou=1.0)) == len(candidates)
    assert deduplicate([]) == []


def test_deduplicate_by_overlap_in_one_file(rng):
    first = proposal("a", rng.uniform(0, 255, (8, 8, 3)), box=(0, 0, 10, 10), attribution=1.0)
    second = proposal("b", rng.uniform(0, 255, (8, 8, 3)), box=(1, 1, 10, 10), attribution=3.0)
    far = proposal("c", rng.uniform(0, 255, (8, 8, 3)), box=(20, 20, 30, 30), attribution=0.0)
    assert [p.patch.name for p in deduplicate([first, second, far])] == ["b", "c"]


# --- a model whose answer is known ---------------------------------------------------------


def redness_classifier() -> KerasClassifier:
    """logit 0 = 0.5, logit 1 = 40 * mean over the image of (R - (G + B) / 2) / 255."""
    import keras

    inputs = keras.Input((S, S, 3))
    redness = keras.layers.Conv2D(1, 1, use_bias=False, name="redness")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(redness)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, logits)
    model.get_layer("redness").set_weights([np.array([1, -0.5, -0.5]).reshape(1, 1, 3, 1) / 255])
    model.get_layer("logits").set_weights([np.array([[0.0, 40.0]]), np.array([0.5, 0.0])])
    return KerasClassifier(
        model,
        name="redness",
        input_size=S,
        classes=ClassList([ImageClass(0, "", "grey"), ImageClass(1, "", "red")]),
        layers=("redness",),
        default_layer="redness",
        weights_id="fixed",
        preprocess="none",
    )


@pytest.fixture(scope="module")
def redness():
    return redness_classifier()


@pytest.fixture
def bluish_images(tmp_path, redness):
    """12 images of class 0, from grey to clearly blue: harder and harder to turn red."""
    folder = tmp_path / "bluish"
    folder.mkdir()
    records = []
    for i, blue in enumerate(np.linspace(0, 60, 12)):
        pixels = np.full((S, S, 3), 128.0) + np.array([-blue, 0.0, blue])
        path = folder / f"bluish{i:02d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        records.append(ImageRecord(path, redness.classes[0]))
    images = ImageSet(records, classes=redness.classes)
    pair = ClassPair(redness.classes[0], redness.classes[1])
    return eligible(redness, images, pair, batch_size=8), pair


def flat(name: str, colour, attribution: float = 1.0) -> Proposal:
    pixels = np.broadcast_to(np.asarray(colour, np.float32), (16, 16, 3)).copy()
    return proposal(name, pixels, file=f"{name}.png", attribution=attribution)


def test_screen_keeps_the_top_k_by_flip_rate(redness, bluish_images):
    screening, pair = bluish_images
    assert len(screening) == 12  # all classified grey (class 0) before patching
    candidates = [
        flat("grey", (128, 128, 128), attribution=9.0),  # best attribution, flips nothing
        flat("pink", (200, 90, 90)),
        flat("red", (255, 0, 0)),
        flat("orange", (255, 120, 0)),
    ]
    kept = screen(
        redness, candidates, screening, pair, top_k=3, sizes=(0.2, 0.4), placement=Corners()
    )
    assert [p.patch.name for p in kept] == ["red", "orange", "pink"]
    rates = [p.screening_rate for p in kept]
    assert rates[0] > rates[1] > rates[2] > 0  # graded by how blue the backgrounds are
    assert all(p.screening_n == 12 for p in kept)
    assert screen(redness, candidates, screening, pair, top_k=3, sizes=(0.2, 0.4)) == kept
    # Ties on rate go to the higher attribution.
    tied = [flat("red-a", (255, 0, 0), 1.0), flat("red-b", (255, 0, 0), 2.0)]
    assert [p.patch.name for p in screen(redness, tied, screening, pair, top_k=2)] == [
        "red-b", "red-a"
    ]  # fmt: skip
    # With no flips at all, the patch that raises p(dst) more ranks first, whatever its
    # attribution: a faint tint is no flip but a step toward one.
    faint = [flat("grey", (128, 128, 128), 9.0), flat("tint", (150, 120, 120), 1.0)]
    kept = screen(redness, faint, screening, pair, top_k=2, sizes=(0.2,))
    assert [p.screening_rate for p in kept] == [0.0, 0.0]
    assert [p.patch.name for p in kept] == ["tint", "grey"]


def mean_log_p_dst(model, screening, pair, patch: Patch) -> float:
    outputs = []
    for size in (0.2, 0.3):
        pasted = Corners()(screening.images, patch, np.random.default_rng(0), size=size)
        outputs.append(np.log(model.probabilities(pasted).numpy()[:, pair.dst.index]))
    return float(np.mean(outputs))


def test_optimized_patch_beats_its_start_and_is_seeded(redness, bluish_images):
    screening, pair = bluish_images
    options = {"side": 8, "learning_rate": 0.2, "batch_size": 4, "sizes": (0.2, 0.3)}
    start = optimize_patch(redness, screening, pair, steps=0, seed=3, **options)
    trained = optimize_patch(redness, screening, pair, steps=15, seed=3, **options)
    again = optimize_patch(redness, screening, pair, steps=15, seed=3, **options)
    other = optimize_patch(redness, screening, pair, steps=15, seed=4, **options)
    assert trained.kind == "optimized" and trained.pixels.shape == (8, 8, 3)
    assert trained.pixels.min() >= 0 and trained.pixels.max() <= 255
    assert mean_log_p_dst(redness, screening, pair, trained) > mean_log_p_dst(
        redness, screening, pair, start
    )
    assert trained.pixels[..., 0].mean() > start.pixels[..., 0].mean()  # it learnt "red"
    np.testing.assert_array_equal(trained.pixels, again.pixels)
    assert not np.array_equal(trained.pixels, other.pixels)


# --- controls ----------------------------------------------------------------------------


def test_noise_patch_is_seeded_uniform_noise():
    first = noise_patch(24, rng=np.random.default_rng(5))
    assert first.kind == "noise" and first.pixels.shape == (24, 24, 3)
    assert first.pixels.dtype == np.float32 and 0 <= first.pixels.min() <= first.pixels.max() <= 255
    np.testing.assert_array_equal(
        first.pixels, noise_patch(24, rng=np.random.default_rng(5)).pixels
    )
    assert not np.array_equal(first.pixels, noise_patch(24, rng=np.random.default_rng(6)).pixels)


def test_random_crops_are_seeded_natural_crops(tmp_path, rng):
    files = write_pool(tmp_path / "pool", rng, count=3)
    crops = random_crops(files, count=5, size=S, rng=np.random.default_rng(7))
    again = random_crops(files, count=5, size=S, rng=np.random.default_rng(7))
    assert [c.name for c in crops] == [f"random-{i:02d}" for i in range(5)]
    assert all(c.kind == "random-crop" for c in crops)
    for crop, twin in zip(crops, again, strict=True):
        np.testing.assert_array_equal(crop.pixels, twin.pixels)
        side = crop.pixels.shape[0]
        assert crop.pixels.shape == (side, side, 3) and round(0.2 * S) <= side <= round(0.5 * S)
        views = [load_image(f, size=S) for f in files]  # it is a window of some pool image
        assert any(
            np.array_equal(view[y : y + side, x : x + side], crop.pixels)
            for view in views
            for y in range(S - side + 1)
            for x in range(S - side + 1)
        )
    images = ImageSet([ImageRecord(Path(f)) for f in files], classes=CLASSES)
    from_set = random_crops(images, count=5, size=S, rng=np.random.default_rng(7))
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(crops, from_set, strict=True))
    with pytest.raises(ValueError, match="side_range"):
        random_crops(files, count=2, size=S, rng=rng, side_range=(0.5, 0.2))


# --- files -------------------------------------------------------------------------------


def test_write_proposals_round_trips_through_read_patches(tmp_path, atlas_and_samples):
    atlas, samples = atlas_and_samples
    found = candidate_crops(atlas, samples, top_cells=2, exclude_classes=[0, 1])
    found[0] = dataclasses.replace(found[0], screening_rate=0.5, screening_n=10)
    control = noise_patch(10, rng=np.random.default_rng(0))
    csv_path = write_proposals([*found, control], tmp_path / "out")
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    assert all(value.isdigit() for value in raw["x0"][:-1]) and raw["x0"].iloc[-1] == ""
    table = pd.read_csv(csv_path)
    assert list(table.columns) == list(proposals_mod.PROPOSAL_COLUMNS)
    assert table["patch"].tolist() == [p.patch.name for p in found] + ["noise"]
    assert table.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == list(found[0].box)
    assert table.loc[0, "screening_rate"] == 0.5 and table.loc[0, "screening_n"] == 10
    assert table.loc[0, "source_file"] == found[0].source_file
    read = {patch.name: patch for patch in read_patches([tmp_path / "out"])}
    assert set(read) == {p.patch.name for p in found} | {"noise"}
    for original in [p.patch for p in found] + [control]:
        back = read[original.name]
        assert back.kind == original.kind and back.pixels.shape == original.pixels.shape
        assert np.abs(back.pixels - original.pixels).max() <= 1.0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind
    with pytest.raises(ValueError, match="unique"):
        write_proposals([control, control], tmp_path / "again")
    with pytest.raises(ValueError, match="plain file names"):
        write_proposals([dataclasses.replace(control, name="../escape")], tmp_path / "again")


def test_read_patches_honours_the_manifest(tmp_path, rng):
    folder = tmp_path / "given"
    folder.mkdir()
    for name in ("train-01", "random", "mine"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            folder / f"{name}.png"
        )
    (folder / "patches.csv").write_text(
        "file,source_class,target_class,kind,depicts\n"
        "train-01.png,snorkel,scuba_diver,published,steam locomotive\n"
        "random.png,*,*,noise,uniform noise control\n"
    )
    loose = tmp_path / "loose.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(loose)
    patches = read_patches([folder, loose])
    assert [(p.name, p.kind) for p in patches] == [
        ("mine", "given"), ("random", "noise"), ("train-01", "given"), ("loose", "given")
    ]  # fmt: skip
    assert patches[0].pixels.shape == (30, 30, 3)  # a non-square image keeps its centred square
    np.testing.assert_array_equal(
        patches[0].pixels, load_image(folder / "mine.png", size=30, crop_fraction=1.0)
    )


def test_read_patches_errors_name_what_is_wrong(tmp_path, rng):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        read_patches([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty"):
        read_patches([empty])
    with pytest.raises(FileNotFoundError, match="absent"):
        read_patches([tmp_path / "absent"])
    with pytest.raises(ValueError, match="notes.txt"):
        read_patches([empty / "notes.txt"])
    kinds = tmp_path / "kinds"
    kinds.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(kinds / "x.png")
    (kinds / "patches.csv").write_text("file,kind\nx.png,sticker\n")
    with pytest.raises(ValueError, match="sticker"):
        read_patches([kinds])
