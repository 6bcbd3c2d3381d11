"""Sampling activations with attributions: exactness, seeding, boxes, cache and resume.

Every model is a tiny Keras network built here; attributions are checked against the closed
form of a model whose logits are a linear read-out of globally pooled activations.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchfinder import activations as activations_mod
from patchfinder.activations import (
    attribute,
    boxes,
    cache_key,
    collect,
    interior,
    pair_direction,
    receptive_field,
    sample_positions,
)
from patchfinder.data import LoadSummary, find_images, load_images
from patchfinder.labels import ClassList, ImageClass
from patchfinder.model import KerasClassifier, UnknownLayerError
from patchfinder.types import ClassPair

from conftest import tiny_cnn

SIZE = 32
CLASSES = ClassList([ImageClass(i, "", f"class{i}") for i in range(10)])
PAIR = ClassPair(CLASSES[1], CLASSES[4])
INT_FIELDS = ("image", "position", "box", "label", "prediction", "class_ids")
FLOAT_FIELDS = ("vectors", "pair_attribution", "class_attribution")


def classifier(keras_model, layers=("conv1", "conv2", "conv3"), **kw) -> KerasClassifier:
    return KerasClassifier(
        keras_model,
        name=keras_model.name,
        input_size=SIZE,
        classes=CLASSES,
        layers=layers,
        default_layer=layers[-1],
        weights_id="random",
        preprocess="unit",
        **kw,
    )


def pooled_linear_model():
    """Logits = W^T mean_p a[p] + b over the layer `feat`: attributions have a closed form."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="feat")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="pooled")


@pytest.fixture(scope="module")
def model() -> KerasClassifier:
    return classifier(tiny_cnn(size=SIZE))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """8 images, two of them undecodable and forming a whole batch of 2; some labelled."""
    folder = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    rows = ["file,name"]
    for i in range(6):
        name = f"im{i}.png"
        pixels = rng.integers(0, 256, (SIZE + 8, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},{'class3' if i % 2 else ''}")
    for name in ("im1x.png", "im1y.png"):  # sorted right after im1: batch 1 when batch_size=2
        (folder / name).write_bytes(b"not an image")
        rows.append(f"{name},")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return find_images(folder, classes=CLASSES)


def assert_same(a, b) -> None:
    assert (a.layer, a.grid, a.input_size, a.files) == (b.layer, b.grid, b.input_size, b.files)
    for name in INT_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in FLOAT_FIELDS:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6, err_msg=name
        )


def count_attribute_calls(monkeypatch) -> list[int]:
    """Count model batches: every forward/backward of a collection goes through `attribute`."""
    calls: list[int] = []
    real = activations_mod.attribute

    def counting(model, images, *args, **kwargs):
        calls.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(activations_mod, "attribute", counting)
    return calls


# --- attribution ---------------------------------------------------------------------------


def test_attribution_equals_the_closed_form_of_a_pooled_linear_readout(pool, tmp_path):
    linear = classifier(pooled_linear_model(), layers=("feat",))
    weights = linear.model.get_layer("logits").get_weights()[0]  # (D, K)
    samples = collect(linear, pool, PAIR, samples_per_image=8, batch_size=4, cache=tmp_path)
    h, w = samples.grid
    assert (h, w) == (SIZE // 2, SIZE // 2)
    # logit_k = sum_p a[p] . W[:, k] / (h w) + b_k, so d logit_k / d a[p] = W[:, k] / (h w).
    expected = samples.vectors @ (weights[:, PAIR.dst.index] - weights[:, PAIR.src.index])
    np.testing.assert_allclose(samples.pair_attribution, expected / (h * w), atol=1e-5)
    per_class = np.einsum("nd,dnr->nr", samples.vectors, weights[:, samples.class_ids])
    np.testing.assert_allclose(samples.class_attribution, per_class / (h * w), atol=1e-5)
    assert np.abs(samples.pair_attribution).max() > 1e-3  # not trivially zero

    # The top classes and prediction are the model's own ranking of each image.
    pixels, loaded, _ = load_images(pool, size=SIZE)
    ranking = np.argsort(-linear.logits(pixels).numpy(), axis=1)[:, :3]
    index_of = {str(record.path): i for i, record in enumerate(loaded)}
    rows = [index_of[samples.files[i]] for i in samples.image]
    np.testing.assert_array_equal(samples.class_ids, ranking[rows])
    np.testing.assert_array_equal(samples.prediction, ranking[rows, 0])


def test_pair_direction_is_the_readout_difference_of_a_pooled_linear_model(rng):
    linear = classifier(pooled_linear_model(), layers=("feat",))
    weights = linear.model.get_layer("logits").get_weights()[0]  # (D, K)
    images = rng.uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    # d logit_k / d a[p] = W[:, k] / (h w) at every position of every image.
    expected = (weights[:, PAIR.dst.index] - weights[:, PAIR.src.index]) / (SIZE // 2) ** 2
    for batch_size in (2, 5):
        direction = pair_direction(linear, images, PAIR, batch_size=batch_size)
        np.testing.assert_allclose(direction, expected, rtol=1e-5, atol=1e-7)
    flipped = pair_direction(linear, images, ClassPair(PAIR.dst, PAIR.src))
    np.testing.assert_allclose(flipped, -expected, rtol=1e-5, atol=1e-7)
    assert pair_direction(linear, images[:0], PAIR).shape == (0,)


def test_reversed_pair_negates_the_attribution(model, rng):
    images = rng.uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    forward = attribute(model, images, PAIR, layer="conv2")
    backward = attribute(model, images, ClassPair(PAIR.dst, PAIR.src), layer="conv2")
    assert forward.pair.shape == (3, SIZE // 2, SIZE // 2)
    assert forward.classes.shape == (3, SIZE // 2, SIZE // 2, 3)
    np.testing.assert_allclose(forward.pair, -backward.pair, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(forward.classes, backward.classes, rtol=1e-5, atol=1e-7)


# --- sampling --------------------------------------------------------------------------------


def test_results_do_not_depend_on_the_batch_size(model, pool, tmp_path):
    small = collect(model, pool, PAIR, batch_size=2, cache=tmp_path / "a")
    large = collect(model, pool, PAIR, batch_size=5, cache=tmp_path / "b")
    assert_same(small, large)


def test_positions_are_distinct_seeded_and_avoid_the_border(model, pool, tmp_path):
    samples = collect(model, pool, PAIR, samples_per_image=12, cache=tmp_path)
    h, w = samples.grid
    assert (h, w) == (8, 8) and samples.vectors.shape == (6 * 12, 16)
    rows, cols = samples.position.T
    assert rows.min() >= 1 and rows.max() <= h - 2 and cols.min() >= 1 and cols.max() <= w - 2
    for image in np.unique(samples.image):
        positions = samples.position[samples.image == image]
        assert len(positions) == 12 and len({tuple(p) for p in positions}) == 12
    again = collect(model, pool, PAIR, samples_per_image=12, cache=tmp_path / "again")
    np.testing.assert_array_equal(again.position, samples.position)
    other = collect(model, pool, PAIR, samples_per_image=12, seed=1, cache=tmp_path)
    assert not np.array_equal(other.position, samples.position)


@pytest.mark.parametrize(
    ("grid", "rows", "cols"),
    [
        ((8, 8), range(1, 7), range(1, 7)),
        ((7, 3), range(1, 6), range(3)),
        ((4, 4), range(4), range(4)),
    ],
)
def test_interior_drops_a_border_only_on_axes_of_five_or_more(grid, rows, cols):
    expected = [(r, c) for r in rows for c in cols]
    assert [tuple(p) for p in interior(grid)] == expected
    with pytest.raises(ValueError, match="samples_per_image"):
        sample_positions(grid, len(expected) + 1, np.random.default_rng(0))


# --- receptive fields and boxes -------------------------------------------------------------


def test_effective_receptive_field_of_a_box_filter_is_its_kernel():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    ones = keras.initializers.Constant(1.0)
    x = keras.layers.Conv2D(2, 5, padding="same", kernel_initializer=ones, name="box")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    linear = classifier(
        keras.Model(inputs, keras.layers.Dense(10)(x), name="box5"), layers=("box",)
    )
    # Uniform 5x5 gradient mass: a 4x4 square holds 64% < 90%, so the side is 5.
    assert receptive_field(linear, "box") == 5


def test_boxes_lie_in_the_image_hold_their_centre_and_grow_with_depth(model, pool, tmp_path):
    sides = [receptive_field(model, layer) for layer in model.layers]
    assert sides == sorted(sides) and sides[0] >= 1 and sides[-1] <= SIZE
    samples = collect(model, pool, PAIR, cache=tmp_path)
    x0, y0, x1, y1 = samples.box.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    h, w = samples.grid
    cx, cy = (samples.position[:, 1] + 0.5) * SIZE / w, (samples.position[:, 0] + 0.5) * SIZE / h
    assert ((x0 <= cx) & (cx <= x1) & (y0 <= cy) & (cy <= y1)).all()
    whole = (x0 > 0) & (x1 < SIZE) & (y0 > 0) & (y1 < SIZE)  # not clipped
    assert whole.any()
    assert (x1 - x0)[whole].tolist() == [sides[-1]] * whole.sum()
    assert np.abs((x0 + x1)[whole] / 2 - cx[whole]).max() <= 0.5
    assert np.abs((y0 + y1)[whole] / 2 - cy[whole]).max() <= 0.5


def test_boxes_clip_at_the_image_edge():
    clipped = boxes(np.array([[0, 0], [3, 3]]), (4, 4), side=20, size=SIZE)
    assert clipped.tolist() == [[0, 0, 14, 14], [18, 18, 32, 32]]


# --- cache and resume ------------------------------------------------------------------------


def test_a_complete_cache_is_assembled_without_the_model(model, pool, tmp_path, monkeypatch):
    first = collect(model, pool, PAIR, batch_size=3, cache=tmp_path)
    folder = tmp_path / cache_key(model, pool, PAIR)
    assert sorted(p.name for p in folder.iterdir()) == [
        "batch-000000.npz",
        "batch-000001.npz",
        "batch-000002.npz",
        "meta.json",
    ]
    calls = count_attribute_calls(monkeypatch)

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(model, "activations", no_model)
    monkeypatch.setattr(model, "logits", no_model)
    done: list[int] = []
    second = collect(model, pool, PAIR, batch_size=3, cache=tmp_path, progress=done.append)
    assert calls == [] and done == [3, 3, 2]
    assert_same(first, second)


def test_a_killed_run_resumes_from_its_finished_batches(model, pool, tmp_path, monkeypatch):
    class Killed(Exception):
        pass

    done: list[int] = []

    def dies_after_two_batches(count: int) -> None:
        done.append(count)
        if len(done) == 2:
            raise Killed

    with pytest.raises(Killed):
        collect(model, pool, PAIR, batch_size=2, cache=tmp_path, progress=dies_after_two_batches)
    calls = count_attribute_calls(monkeypatch)
    resumed = collect(model, pool, PAIR, batch_size=2, cache=tmp_path)
    # Batches 0 and 1 are on disk (batch 1 holds only the two undecodable files); 2 and 3 run.
    assert calls == [2, 2]
    assert_same(resumed, collect(model, pool, PAIR, batch_size=2, cache=tmp_path / "fresh"))


def test_an_unreadable_shard_is_recomputed(model, pool, tmp_path, monkeypatch):
    reference = collect(model, pool, PAIR, batch_size=3, cache=tmp_path)
    (tmp_path / cache_key(model, pool, PAIR) / "batch-000001.npz").write_bytes(b"truncated")
    calls = count_attribute_calls(monkeypatch)
    assert_same(collect(model, pool, PAIR, batch_size=3, cache=tmp_path), reference)
    assert calls == [2]  # batch 1 is [im1y im2 im3]: two images decode


def test_shards_of_another_batch_size_are_recomputed_not_misread(
    model, pool, tmp_path, monkeypatch
):
    reference = collect(model, pool, PAIR, batch_size=2, cache=tmp_path)
    calls = count_attribute_calls(monkeypatch)
    assert_same(collect(model, pool, PAIR, batch_size=5, cache=tmp_path), reference)
    assert calls == [3, 3]  # [im0 im1 (im1x im1y) im2] [im3 im4 im5]


def test_cache_key_follows_what_changes_the_result(model, pool, tmp_path):
    key = cache_key(model, pool, PAIR)
    assert cache_key(model, pool, PAIR, layer="conv3") == key  # the default layer
    assert cache_key(model, pool, PAIR, seed=1) != key
    assert cache_key(model, pool, PAIR, layer="conv2") != key
    assert cache_key(model, pool, ClassPair(PAIR.dst, PAIR.src)) != key
    assert cache_key(model, pool, PAIR, samples_per_image=4) != key
    assert cache_key(model, pool[:4], PAIR) != key
    collect(model, pool, PAIR, seed=1, cache=tmp_path)
    collect(model, pool, PAIR, layer="conv2", cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


# --- undecodable files, labels and errors ---------------------------------------------------


def test_undecodable_files_are_skipped_and_counted_on_every_run(model, pool, tmp_path):
    for attempt in range(2):  # computed, then from the cache
        summary = LoadSummary()
        samples = collect(model, pool, PAIR, batch_size=2, cache=tmp_path, summary=summary)
        assert summary.loaded == 6, attempt
        assert sorted(path.name for path, _ in summary.skipped) == ["im1x.png", "im1y.png"]
        assert len(samples.files) == 8
        names = {samples.files[i].rsplit("/", 1)[-1] for i in samples.image}
        assert names == {f"im{i}.png" for i in range(6)}


def test_labels_come_from_the_image_set(model, pool, tmp_path):
    samples = collect(model, pool, PAIR, cache=tmp_path)
    for index, label in zip(samples.image, samples.label, strict=True):
        record = pool[int(index)]
        assert label == (-1 if record.label is None else record.label.index)
    assert set(samples.label.tolist()) == {-1, 3}


def test_errors_name_the_problem(model, pool, tmp_path):
    with pytest.raises(ValueError, match="no images"):
        collect(model, pool[:0], PAIR, cache=tmp_path)
    with pytest.raises(UnknownLayerError, match="conv2"):
        collect(model, pool, PAIR, layer="conv9", cache=tmp_path)
    flat = classifier(tiny_cnn(size=SIZE), layers=("conv3", "logits"))
    with pytest.raises(ValueError, match="channels"):
        collect(flat, pool, PAIR, layer="logits", cache=tmp_path)
    with pytest.raises(ValueError, match="samples_per_image"):
        collect(model, pool, PAIR, samples_per_image=37, cache=tmp_path)
    with pytest.raises(ValueError, match="class"):
        collect(model, pool, ClassPair(CLASSES[1], ImageClass(12, "", "far")), cache=tmp_path)
