"""Flip statistics: criteria, splits, tables from arrays, and the loop on a hand-built model.

The model (`redness_classifier`) reads only the mean colour of the image: class 1 when the
image is red enough, class 2 when blue enough, else class 0. So a big red patch flips class
0 -> 1 (targeted), a blue one moves images to class 2 (untargeted only), a grey one does
nothing, and a bigger patch flips more images.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchfinder.data import ImageRecord, ImageSet
from patchfinder.evaluate import (
    EligibleImages,
    Flip,
    FlipTable,
    Untargeted,
    eligible,
    evaluate_patches,
    split_images,
)
from patchfinder.labels import ClassList, ImageClass
from patchfinder.model import KerasClassifier
from patchfinder.paste import Centre, Corners, RandomPositions
from patchfinder.stats import wilson_interval
from patchfinder.types import ClassPair, Patch

S = 32
THRESHOLD = 30.0  # redness (R - (G + B) / 2) above which the model says class 1
CLASSES = ClassList([ImageClass(0, "", "snorkel"), ImageClass(1, "", "scuba_diver"),
                     ImageClass(2, "", "other")])  # fmt: skip
PAIR = ClassPair(CLASSES[0], CLASSES[1])


# --- criteria ----------------------------------------------------------------------------


def test_criteria_truth_table():
    # Top-1 of each row: 0 (still src), 1 (dst), 2 (another class).
    outputs = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
    flip, moved = Flip(CLASSES[0], CLASSES[1]), Untargeted(0)
    cases = {
        "flip": (flip, [False, True, False]),
        "untargeted": (moved, [False, True, True]),
        "and": (flip & moved, [False, True, False]),
        "or": (flip | Flip(0, 2), [False, True, True]),
        "nested": ((Flip(0, 2) | flip) & moved, [False, True, True]),
    }
    for name, (criterion, expected) in cases.items():
        assert criterion(outputs).tolist() == expected, name
    assert flip == Flip(0, 1)  # classes and indices are the same criterion
    with pytest.raises(ValueError, match="Received"):
        flip(np.zeros(3))


# --- split -------------------------------------------------------------------------------


def labelled_set(counts: dict[int | None, int]) -> ImageSet:
    records = [
        ImageRecord(Path(f"c{label}/{k:03d}.png"), None if label is None else CLASSES[label])
        for label, count in counts.items()
        for k in range(count)
    ]
    return ImageSet(records, classes=CLASSES)


def test_split_is_disjoint_complete_seeded_and_stratified():
    images = labelled_set({0: 21, 1: 10, None: 4})
    split = split_images(images, screening_fraction=0.3, seed=5)
    first, second = set(split.screening.paths), set(split.evaluation.paths)
    assert not first & second and first | second == set(images.paths)
    for label, count in ((CLASSES[0], 21), (CLASSES[1], 10), (None, 4)):
        taken = sum(r.label == label for r in split.screening)
        assert abs(taken - 0.3 * count) <= 0.5  # the fraction holds within each class
    again = split_images(images, screening_fraction=0.3, seed=5)
    assert again == split and again.to_dict() == split.to_dict()
    assert split_images(images, screening_fraction=0.3, seed=6).to_dict() != split.to_dict()
    shuffled = ImageSet(list(images)[::-1], classes=CLASSES)  # order does not matter
    assert set(split_images(shuffled, screening_fraction=0.3, seed=5).screening) == set(
        split.screening
    )
    record = split.to_dict()
    assert record["seed"] == 5 and len(record["screening"]) + len(record["evaluation"]) == 35


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_split_extremes(fraction):
    images = labelled_set({0: 5})
    split = split_images(images, screening_fraction=fraction, seed=0)
    assert len(split.screening) == 5 * fraction and len(split.evaluation) == 5 * (1 - fraction)
    with pytest.raises(ValueError, match="Received"):
        split_images(images, screening_fraction=1.5, seed=0)


# --- the table, from arrays --------------------------------------------------------------


def table(flips: np.ndarray, sizes=(0.2, 0.4), placements=("top-left", "top-right")) -> FlipTable:
    count = flips.shape[0]
    return FlipTable(
        patches=tuple(f"p{k}" for k in range(count)),
        kinds=("given",) * count,
        sizes=sizes,
        placements=placements,
        flips=flips,
        untargeted=flips.copy(),
        delta_p=flips.astype(np.float32),
    )


def test_best_and_fixed_on_a_hand_made_table():
    flips = np.zeros((2, 2, 2, 4), bool)  # P=2 patches, Z=2 sizes, L=2 placements, n=4
    flips[0, 0, 0, [0, 1]] = True  # 0.2 top-left flips images 0 and 1
    flips[0, 1, 1, [1, 2]] = True  # 0.4 top-right flips images 1 and 2
    summary = table(flips).summary().set_index("patch")
    assert summary.loc["p0", "best_rate"] == 0.75  # images 0, 1, 2 by some setting
    assert summary.loc["p0", "fixed_rate"] == 0.5  # no single setting gets more than two
    assert summary.loc["p0", "fixed_setting"] == "0.2 top-left"  # first of the tied best
    assert summary.loc["p1", "best_rate"] == 0 and summary.loc["p1", "fixed_rate"] == 0
    low, high = wilson_interval(3, 4)
    assert summary.loc["p0", "best_low"] == pytest.approx(low)
    assert summary.loc["p0", "best_high"] == pytest.approx(high)
    long = table(flips).long()
    assert list(long.columns) == [
        "patch", "kind", "size", "placement", "n", "flips", "flip_rate",
        "ci_low", "ci_high", "untargeted_rate", "mean_delta_p",
    ]  # fmt: skip
    assert len(long) == 8 and (long["n"] == 4).all()
    row = long[(long.patch == "p0") & (long["size"] == 0.4) & (long.placement == "top-right")]
    assert row["flips"].item() == 2 and row["flip_rate"].item() == 0.5


def test_best_bounds_fixed_bounds_every_setting(rng):
    flips = rng.random((5, 3, 4, 30)) < rng.random((5, 3, 4, 1)) * 0.4
    result = table(flips, sizes=(0.2, 0.3, 0.4), placements=tuple("abcd"))
    long, summary = result.long(), result.summary()
    for _, row in summary.iterrows():
        rates = long.loc[long.patch == row.patch, "flip_rate"]
        assert row.best_rate >= row.fixed_rate == rates.max()
        assert row.best_low <= row.best_rate <= row.best_high
    assert ((long.ci_low <= long.flip_rate) & (long.flip_rate <= long.ci_high)).all()


def test_no_eligible_images_gives_nan_rates_not_errors():
    empty = table(np.zeros((1, 2, 2, 0), bool))
    assert empty.summary()["best_rate"].isna().all()
    assert empty.long()["flip_rate"].isna().all() and (empty.long()["n"] == 0).all()


def test_table_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\(P, Z, L, n\)"):
        table(np.zeros((1, 3, 2, 4), bool))


# --- the loop, on a model that reads redness ---------------------------------------------


def redness_classifier() -> KerasClassifier:
    """Logits (0, k (redness - t), k (blueness - t)) of the image's mean colour."""
    import keras

    inputs = keras.Input((S, S, 3))
    pixels = keras.layers.Activation("linear", name="pixels")(inputs)
    mean = keras.layers.GlobalAveragePooling2D(name="pool")(pixels)
    logits = keras.layers.Dense(3, name="logits")(mean)
    model = keras.Model(inputs, logits)
    k = 0.5
    weights = k * np.array([[0, 1, -0.5], [0, -0.5, -0.5], [0, -0.5, 1]], np.float32)  # RGB x K
    bias = np.array([0, -k * THRESHOLD, -k * THRESHOLD], np.float32)
    model.get_layer("logits").set_weights([weights, bias])
    return KerasClassifier(
        model,
        name="redness",
        input_size=S,
        classes=CLASSES,
        layers=("pixels",),
        default_layer="pixels",
        weights_id="hand-made",
        preprocess="none",
    )


def tinted(redness: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy grey image whose mean redness R - (G + B) / 2 is `redness`."""
    colour = 128 + np.array([2, -1, -1]) * redness / 3
    return np.clip(colour + rng.uniform(-10, 10, (S, S, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[ImageSet, KerasClassifier]:
    """20 eligible snorkels (redness -40..25), 3 already red ones, 4 of another class."""
    folder = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(1)
    plan = [(f"ok{k:02d}", r, 0) for k, r in enumerate(np.linspace(-40, 25, 20))]
    plan += [(f"red{k}", 60.0, 0) for k in range(3)]  # misclassified before patching
    plan += [(f"other{k}", 0.0, 2) for k in range(4)]  # not the source class
    records = []
    for name, redness, label in plan:
        Image.fromarray(tinted(redness, rng)).save(folder / f"{name}.png")
        records.append(ImageRecord(folder / f"{name}.png", CLASSES[label]))
    return ImageSet(records, classes=CLASSES), redness_classifier()


@pytest.fixture(scope="module")
def candidates(pool) -> EligibleImages:
    images, model = pool
    return eligible(model, images, PAIR, batch_size=8)


def colour_patch(name: str, rgb: tuple[float, float, float]) -> Patch:
    return Patch(name, "given", np.broadcast_to(np.float32(rgb), (20, 20, 3)).copy())


PATCHES = [
    colour_patch("red", (255, 0, 0)),
    colour_patch("grey", (128, 128, 128)),
    colour_patch("blue", (0, 0, 255)),
]


def test_eligibility_keeps_src_images_classified_as_src(candidates):
    assert candidates.n_candidates == 23  # the 20 + 3 snorkels; other classes never count
    assert len(candidates) == 20 and candidates.images.shape == (20, S, S, 3)
    assert all(r.path.name.startswith("ok") for r in candidates.records)
    assert candidates.clean_probs_dst.shape == (20,) and not candidates.skipped


def test_a_red_patch_flips_more_the_bigger_it_is(pool, candidates):
    model = pool[1]
    result = evaluate_patches(model, candidates, PATCHES, PAIR, sizes=(0.2, 0.3, 0.4, 0.5))
    long, summary = result.long(), result.summary().set_index("patch")
    by_size = long[long.patch == "red"].groupby("size")["flip_rate"].mean().to_numpy()
    assert np.all(np.diff(by_size) >= 0) and by_size[0] < by_size[-1]
    assert summary.loc["red", "best_rate"] > summary.loc["grey", "best_rate"] == 0
    assert summary.loc["blue", "best_rate"] == 0  # blue moves images, but not to dst ...
    blue = long[long.patch == "blue"]
    assert blue.untargeted_rate.max() > 0  # ... only away from src
    red = long[long.patch == "red"]
    assert (red.mean_delta_p > 0).all()
    assert red.groupby("size")["mean_delta_p"].mean().is_monotonic_increasing
    assert (red.untargeted_rate >= red.flip_rate).all()  # every targeted flip leaves src
    for patch, row in summary.iterrows():
        rates = long.loc[long.patch == patch, "flip_rate"]
        assert row.best_rate >= row.fixed_rate >= rates.max() - 1e-12
    assert ((long.ci_low <= long.flip_rate) & (long.flip_rate <= long.ci_high)).all()
    assert (long["n"] == 20).all() and set(long.placement) == {
        "top-left", "top-right", "bottom-left", "bottom-right",
    }  # fmt: skip


class Recording:
    """A classifier wrapper that records every batch it is given (sizes, and images if asked)."""

    def __init__(self, model: KerasClassifier, *, keep_images: bool = False) -> None:
        self.model, self.input_size, self.keep_images = model, model.input_size, keep_images
        self.batches: list[int] = []
        self.images: list[np.ndarray] = []

    def probabilities(self, images):
        self.batches.append(int(images.shape[0]))
        if self.keep_images:
            self.images.append(images.numpy())
        return self.model.probabilities(images)


def test_results_do_not_depend_on_batch_size_and_memory_stays_flat(pool, candidates):
    few = EligibleImages(
        candidates.images[::2],
        candidates.records[::2],
        candidates.clean_probs_dst[::2],
        candidates.n_candidates,
        [],
    )  # n = 10
    results, done = {}, []
    for batch_size in (1, 7, 64):
        recording = Recording(pool[1])
        results[batch_size] = evaluate_patches(
            recording,
            few,
            PATCHES[:2],
            PAIR,
            sizes=(0.3, 0.5),
            placement=Corners() + Centre(),
            batch_size=batch_size,
            progress=done.append,
        )
        total = 2 * 2 * 5 * 10
        assert max(recording.batches) <= batch_size and sum(recording.batches) == total
        assert done == recording.batches  # progress counts each batch's pasted images
        done.clear()
    for a, b in itertools.pairwise(results.values()):
        np.testing.assert_array_equal(a.flips, b.flips)
        np.testing.assert_array_equal(a.untargeted, b.untargeted)
        np.testing.assert_allclose(a.delta_p, b.delta_p, atol=1e-5)


def test_random_placements_are_the_same_for_every_patch(pool, candidates):
    same = [colour_patch("a", (255, 0, 0)), colour_patch("b", (255, 0, 0))]
    pasted = {}
    for seed in (4, 4, 5):
        recording = Recording(pool[1], keep_images=True)
        evaluate_patches(
            recording, candidates, same, PAIR, placement=RandomPositions(count=3), seed=seed
        )
        images = np.concatenate(recording.images)
        first, second = np.split(images, 2)  # patch-major: all of a, then all of b
        np.testing.assert_array_equal(first, second)  # b went exactly where a went
        assert pasted.setdefault(seed, first) is first or np.array_equal(pasted[seed], first)
    assert not np.array_equal(pasted[4], pasted[5])
