"""Sample spatial activation vectors with their attributions over an image pool; cache, resume.

The Activation Atlas article (Carter et al., Distill 2019) builds an atlas from activation
vectors at random spatial positions of one layer, each labelled by its *attribution*:
activation times gradient, summed over channels,

    attribution(p, f) = sum_c a[p, c] * (df / da)[p, c]        a = (h, w, D) at the layer,

to the pair objective f = logit[dst] - logit[src] (which way a vector pushes the image) and
to each of the image's top-R predicted classes (what a cell "is about").

Three steps, each usable alone, and `collect`, which runs them over an image set in batches
with a cache that a killed run resumes from:

    attribution = attribute(model, images, pair, layer=..., top_classes=R)  # 1 fwd, 1+R bwd
    side = receptive_field(model, layer)                         # effective RF, memoised
    batch = sample(attribution, indices, samples_per_image=K, seed=s, box_side=side)
    samples = collect(model, image_set, pair, ...)               # -> ActivationSamples

Cost per batch: one forward pass to the logits and 1 + R backward passes from the logits down
to the layer only (never to the input), from one persistent tape. A backward pass costs about
twice the forward FLOPs of the layers *above* the layer, so a deep layer is cheap. Summing f
over the batch before differentiating is exact: images do not interact (inference mode), so
the batch gradient holds every image's own gradient. Positions are sampled afterwards, from
the full (B, h, w) attribution maps: the cost does not depend on K.

Memory: the result holds N = M * K vectors of D float32 channels, N * D * 4 bytes (10,000
images x 16 positions x 192 channels = 123 MB); each cache shard holds its batch's share.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import tensorflow as tf

from patchfinder.data import ImageRecord, ImageSet, LoadSummary, iterate_batches
from patchfinder.io import atomic_write, cache_dir
from patchfinder.model import Classifier
from patchfinder.types import ActivationSamples, ClassPair

#: Bumped whenever what a shard holds or how it is computed changes: old caches are not reused.
CACHE_FORMAT = 1
#: Grids at least this wide (per axis) lose a 1-cell border when sampling (see `interior`).
BORDER_MIN_GRID = 5
#: Fraction of the |input gradient| mass the effective receptive field holds.
RF_MASS = 0.9


# --- attribution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribution:
    """A batch's layer activations and attribution maps, from one forward pass.

    Attributes:
        activations: float32 (B, h, w, D) at `layer`.
        pair: float32 (B, h, w) attribution to logit[dst] - logit[src].
        classes: float32 (B, h, w, R) attribution to each image's top-R classes.
        class_ids: int (B, R) those classes, best first (`class_ids[:, 0]` is the top-1).
        layer: the layer name; `input_size` S, the model's input side.
    """

    activations: np.ndarray
    pair: np.ndarray
    classes: np.ndarray
    class_ids: np.ndarray
    layer: str
    input_size: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.activations.shape[1]), int(self.activations.shape[2])


def attribute(
    model: Classifier,
    images: np.ndarray | tf.Tensor,
    pair: ClassPair,
    *,
    layer: str | None = None,
    top_classes: int = 3,
) -> Attribution:
    """Activations at `layer` and their attributions to the pair and to the top classes.

    One forward pass and 1 + `top_classes` backward passes (logits -> layer) for the batch.

    Args:
        model: the classifier.
        images: float32 (B, S, S, 3) RGB in 0..255.
        pair: attribution is to logit[pair.dst] - logit[pair.src].
        layer: a spatial layer of the model; None for its default layer.
        top_classes: R, how many of each image's best classes get an attribution map.

    Raises:
        UnknownLayerError: the model has no such layer (the message lists its layers).
        ValueError: the layer's output is not 4-D (B, h, w, D), or a class is out of range.
    """
    layer = model.resolve_layer(layer)
    num_classes = len(model.classes)
    _check_pair(pair, num_classes)
    if not 1 <= top_classes <= num_classes:
        raise ValueError(
            f"top_classes must be in 1..{num_classes}; Received: top_classes={top_classes}"
        )
    step = _attribution_step(model, layer, top_classes)
    src, dst = tf.constant(pair.src.index, tf.int32), tf.constant(pair.dst.index, tf.int32)
    acts, pair_map, class_maps, class_ids = step(tf.convert_to_tensor(images, tf.float32), src, dst)
    return Attribution(
        activations=acts.numpy(),
        pair=pair_map.numpy(),
        classes=class_maps.numpy(),
        class_ids=class_ids.numpy().astype(np.int64),
        layer=layer,
        input_size=model.input_size,
    )


def pair_direction(
    model: Classifier,
    images: np.ndarray,
    pair: ClassPair,
    *,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """The activation direction that pushes src images toward dst: the gradient of
    logit[dst] - logit[src] with respect to the activations at `layer`, averaged over the
    images and every position.

    A patch pasted onto a src image replaces that image's activations under it; to first
    order the pair's logit difference then changes by this gradient dotted with the new
    activations (less the old ones, which the patch does not choose). So `vectors @ direction`
    ranks sampled vectors by what their feature would do *on src photos*, where the pair
    attribution of `attribute` says what it did in its own image.

    Args:
        images: float32 (B, S, S, 3) src photos in 0..255 (e.g. the screening images).
    Returns:
        float32 (D,) direction; zeros when `images` is empty.
    """
    layer = model.resolve_layer(layer)
    _check_pair(pair, len(model.classes))
    total, count = None, 0
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(batch)  # records every op, whatever the backend holds as variables
            acts, logits = model.activations(batch, layer)  # (B, h, w, D), (B, K)
            _check_spatial(acts, model, layer)
            tape.watch(acts)
            difference = tf.reduce_sum(logits[:, pair.dst.index] - logits[:, pair.src.index])
        gradient = tape.gradient(difference, acts)  # (B, h, w, D)
        summed = tf.reduce_sum(gradient, axis=(0, 1, 2)).numpy().astype(np.float64)
        total = summed if total is None else total + summed
        count += int(np.prod(gradient.shape[:3]))
    if total is None:
        return np.zeros(0, np.float32)
    return (total / count).astype(np.float32)


def footprint_vectors(
    model: Classifier,
    images: np.ndarray,
    boxes: np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """The activation vectors at `layer` under a pasted patch: of each image, the positions
    whose receptive-field centre ((col + 0.5) S / w, (row + 0.5) S / h, as `boxes` places it)
    lies inside that image's box. What an adversarial patch looks like to the layer, to find
    natural features near it (`proposals.aimed_crops`).

    Args:
        images: float32 (B, S, S, 3) in 0..255, the patch already pasted.
        boxes: int (B, 4) (x0, y0, x1, y1) of the patch in each image.
    Returns:
        float32 (A, D): every footprint position of every image, image-major.
    """
    layer = model.resolve_layer(layer)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(images):
        raise ValueError(f"Need one box per image ({len(images)}); Received: {len(boxes)}")
    found = []
    for start in range(0, len(images), batch_size):
        acts, _ = model.activations(images[start : start + batch_size], layer)  # (b, h, w, D)
        _check_spatial(acts, model, layer)
        acts = acts.numpy()
        h, w = acts.shape[1:3]
        size = model.input_size
        cx, cy = (np.arange(w) + 0.5) * size / w, (np.arange(h) + 0.5) * size / h
        for vectors, (x0, y0, x1, y1) in zip(acts, boxes[start : start + batch_size], strict=True):
            rows = (cy >= y0) & (cy < y1)
            cols = (cx >= x0) & (cx < x1)
            found.append(vectors[rows][:, cols].reshape(-1, vectors.shape[-1]))
    if not found:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(found).astype(np.float32)


def _check_pair(pair: ClassPair, num_classes: int) -> None:
    for cls in (pair.src, pair.dst):
        if not 0 <= cls.index < num_classes:
            raise ValueError(
                f"Class {cls.name!r} (index {cls.index}) is not among the model's "
                f"{num_classes} classes; Received: pair={pair}"
            )


# Compiled steps per model (weakly: they go when the model goes), then per (layer, R).
_STEPS: weakref.WeakKeyDictionary[Classifier, dict[tuple[str, int], Callable]] = (
    weakref.WeakKeyDictionary()
)


def _attribution_step(model: Classifier, layer: str, top_classes: int) -> Callable:
    steps = _STEPS.setdefault(model, {})
    if (layer, top_classes) in steps:
        return steps[(layer, top_classes)]
    model_ref = weakref.ref(model)  # a strong reference would keep the model alive forever

    def step(images: tf.Tensor, src: tf.Tensor, dst: tf.Tensor):
        model = model_ref()
        with tf.GradientTape(persistent=True) as tape:
            # Watching the input records every op, whatever the backend holds as variables.
            tape.watch(images)
            acts, logits = model.activations(images, layer)  # (B, h, w, D), (B, K)
            _check_spatial(acts, model, layer)
            tape.watch(acts)
            # Images are independent: the gradient of the batch sum is each image's gradient.
            pair_total = tf.reduce_sum(
                tf.gather(logits, dst, axis=1) - tf.gather(logits, src, axis=1)
            )
            best = tf.math.top_k(logits, k=top_classes)  # values, indices: (B, R)
            class_totals = [tf.reduce_sum(best.values[:, r]) for r in range(top_classes)]
        pair_map = tf.reduce_sum(acts * tape.gradient(pair_total, acts), axis=-1)  # (B, h, w)
        class_maps = tf.stack(
            [tf.reduce_sum(acts * tape.gradient(total, acts), axis=-1) for total in class_totals],
            axis=-1,
        )  # (B, h, w, R)
        del tape
        return acts, pair_map, class_maps, best.indices

    steps[(layer, top_classes)] = tf.function(step, reduce_retracing=True)
    return steps[(layer, top_classes)]


# --- receptive fields ------------------------------------------------------------------------

# (grid, effective receptive field side) per model (weakly held), then per layer.
_GEOMETRY: weakref.WeakKeyDictionary[Classifier, dict[str, tuple[tuple[int, int], int]]] = (
    weakref.WeakKeyDictionary()
)


def receptive_field(model: Classifier, layer: str | None = None) -> int:
    """The side in input pixels of the layer's *effective* receptive field (memoised per model).

    The gradient of the centre position's activation sum with respect to the input is taken
    on 4 seeded random images plus one black image; the result is the side of the smallest
    square, centred on that position's centre, that holds `RF_MASS` (90%) of the |gradient|
    mass. Theoretical receptive fields of deep layers exceed the image, while the gradient
    mass concentrates near the centre (Luo et al. 2016), so the effective field is what a
    position "sees". A layer whose centre gradient is zero everywhere gets the whole image, S.

    Raises:
        UnknownLayerError: unknown layer; ValueError: the layer's output is not 4-D.
    """
    return _geometry(model, model.resolve_layer(layer))[1]


def _geometry(model: Classifier, layer: str) -> tuple[tuple[int, int], int]:
    known = _GEOMETRY.setdefault(model, {})
    if layer not in known:
        known[layer] = _effective_receptive_field(model, layer, probes=4)
    return known[layer]


def _effective_receptive_field(
    model: Classifier, layer: str, probes: int
) -> tuple[tuple[int, int], int]:
    size = model.input_size
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 255.0, (probes, size, size, 3))
    x = tf.constant(np.concatenate([noise, np.zeros((1, size, size, 3))]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        acts, _ = model.activations(x, layer)
        _check_spatial(acts, model, layer)
        h, w = int(acts.shape[1]), int(acts.shape[2])
        centre = tf.reduce_sum(acts[:, h // 2, w // 2, :])
    heat = np.abs(tape.gradient(centre, x).numpy()).sum(axis=(0, 3))  # (S, S)
    total = heat.sum()
    if not np.isfinite(total) or total <= 0:
        return (h, w), size
    integral = np.pad(heat.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    cy, cx = (h // 2 + 0.5) * size / h, (w // 2 + 0.5) * size / w
    for side in range(1, 2 * size + 1):
        (x0, x1), (y0, y1) = _span(cx, side, size), _span(cy, side, size)
        mass = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        if mass >= RF_MASS * total:
            return (h, w), side
    return (h, w), size


def _check_spatial(acts: tf.Tensor, model: Classifier, layer: str) -> None:
    if acts.shape.rank != 4:
        raise ValueError(
            f"Layer {layer!r} of {model.name} must output (batch, h, w, channels) to be "
            f"sampled spatially; Received: shape {tuple(acts.shape)}"
        )


def _span(centre: np.ndarray | float, side: int, size: int) -> tuple:
    """[start, stop) of `side` pixels centred on `centre`, clipped to [0, size]."""
    start = np.floor(np.asarray(centre) - side / 2 + 0.5).astype(np.int64)
    return np.clip(start, 0, size), np.clip(start + side, 0, size)


def boxes(positions: np.ndarray, grid: tuple[int, int], side: int, size: int) -> np.ndarray:
    """Receptive-field boxes (N, 4) int (x0, y0, x1, y1) for positions (N, 2) (row, col).

    Each box is the `side` x `side` square centred on the position's centre in input pixels,
    ((col + 0.5) * S / w, (row + 0.5) * S / h), clipped to [0, S]; it always holds that
    centre, so it is never empty.
    """
    h, w = grid
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    x0, x1 = _span((positions[:, 1] + 0.5) * size / w, side, size)
    y0, y1 = _span((positions[:, 0] + 0.5) * size / h, side, size)
    return np.stack([x0, y0, x1, y1], axis=1)


# --- sampling --------------------------------------------------------------------------------


def interior(grid: tuple[int, int]) -> np.ndarray:
    """The (row, col) positions that may be sampled, (P, 2), row-major.

    As in the article, edge positions are avoided: their receptive fields hang over the
    image border and see mostly padding. An axis at least `BORDER_MIN_GRID` (5) cells long
    loses its first and last cell; shorter axes keep all cells (too few would be left).
    """
    rows, cols = (np.arange(1, n - 1) if n >= BORDER_MIN_GRID else np.arange(n) for n in grid)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)


def sample_positions(grid: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct interior positions (count, 2) (row, col), in row-major order.

    Raises:
        ValueError: the interior has fewer than `count` positions.
    """
    allowed = interior(grid)
    if count > len(allowed):
        raise ValueError(
            f"Cannot sample {count} distinct positions from a {grid[0]}x{grid[1]} grid "
            f"({len(allowed)} away from the border); lower samples_per_image. "
            f"Received: samples_per_image={count}"
        )
    return allowed[np.sort(rng.choice(len(allowed), size=count, replace=False))]


@dataclass
class BatchSamples:
    """The vectors sampled from a batch, K per image; fields as in `ActivationSamples`."""

    vectors: np.ndarray  # float32 (n, D)
    image: np.ndarray  # int (n,)
    position: np.ndarray  # int (n, 2)
    box: np.ndarray  # int (n, 4)
    prediction: np.ndarray  # int (n,)
    pair_attribution: np.ndarray  # float32 (n,)
    class_ids: np.ndarray  # int (n, R)
    class_attribution: np.ndarray  # float32 (n, R)


def sample(
    attribution: Attribution,
    image_indices: Sequence[int] | np.ndarray,
    *,
    samples_per_image: int = 16,
    seed: int = 0,
    box_side: int,
) -> BatchSamples:
    """Sample K positions per image and read off their vectors, attributions and boxes.

    Image i's positions come from `np.random.default_rng([seed, image_indices[i]])`: they
    depend on the seed and the image's index in its set only, never on the batching.
    """
    indices = np.asarray(image_indices, dtype=np.int64)
    if len(indices) != len(attribution.activations):
        raise ValueError(
            f"Need one image index per image; Received: {len(indices)} indices for "
            f"{len(attribution.activations)} images"
        )
    k = samples_per_image
    grid = attribution.grid
    position = np.concatenate(
        [sample_positions(grid, k, np.random.default_rng([seed, int(i)])) for i in indices]
        or [np.zeros((0, 2), np.int64)]
    )  # (n, 2), image-major
    row_of = np.repeat(np.arange(len(indices)), k)  # (n,) batch row of each sample
    at = (row_of, position[:, 0], position[:, 1])
    class_ids = attribution.class_ids[row_of]
    return BatchSamples(
        vectors=attribution.activations[at].astype(np.float32),
        image=indices[row_of],
        position=position,
        box=boxes(position, grid, box_side, attribution.input_size),
        prediction=class_ids[:, 0].copy(),
        pair_attribution=attribution.pair[at].astype(np.float32),
        class_ids=class_ids,
        class_attribution=attribution.classes[at].astype(np.float32),
    )


# --- collection with cache and resume ---------------------------------------------------------


def cache_key(
    model: Classifier,
    images: Sequence[ImageRecord],
    pair: ClassPair,
    *,
    layer: str | None = None,
    samples_per_image: int = 16,
    top_classes: int = 3,
    seed: int = 0,
) -> str:
    """The SHA-256 naming a collection's cache folder.

    It covers the model (name, weights id, layer, input size), the ordered image files with
    their sizes and modification times, K, R, the seed and the pair: anything that changes
    the result. Not the batch size, which does not (shards record their own image range).
    """
    return _key_digest(
        _key_inputs(model, pair, model.resolve_layer(layer), samples_per_image, top_classes, seed),
        images,
    )


def _key_inputs(
    model: Classifier, pair: ClassPair, layer: str, k: int, r: int, seed: int
) -> dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "model": model.name,
        "weights_id": model.weights_id,
        "layer": layer,
        "input_size": model.input_size,
        "samples_per_image": k,
        "top_classes": r,
        "seed": seed,
        "pair": [[c.index, c.wnid, c.name] for c in (pair.src, pair.dst)],
    }


def _key_digest(inputs: dict[str, object], images: Sequence[ImageRecord]) -> str:
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    digest.update(_files_digest(images).encode())
    return digest.hexdigest()


def _files_digest(images: Sequence[ImageRecord]) -> str:
    """SHA-256 over the ordered (path, size, mtime) of the image files."""
    digest = hashlib.sha256()
    for record in images:
        try:
            stat = os.stat(record.path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"{record.path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


@dataclass
class _Shard:
    """One batch of the image set, as written to `batch-NNNNNN.npz`."""

    start: int  # the batch covers image indices [start, stop) of the set
    stop: int
    grid: tuple[int, int]
    samples: BatchSamples
    skipped: list[tuple[int, str]]  # (image index, reason) of images that did not decode

    @property
    def loaded(self) -> int:
        return self.stop - self.start - len(self.skipped)

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self.samples, f.name) for f in fields(BatchSamples)}
        with atomic_write(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                start=self.start,
                stop=self.stop,
                grid=np.asarray(self.grid, np.int64),
                skipped_index=np.asarray([i for i, _ in self.skipped], np.int64),
                skipped_reason=np.asarray([r for _, r in self.skipped], dtype=str),
                **arrays,
            )

    @classmethod
    def load(cls, path: Path, start: int, stop: int) -> _Shard | None:
        """The shard at `path` if it exists, is readable and covers [start, stop)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if (int(data["start"]), int(data["stop"])) != (start, stop):
                    return None  # written with another batch size: recompute
                samples = BatchSamples(**{f.name: data[f.name] for f in fields(BatchSamples)})
                skipped = list(
                    zip(
                        data["skipped_index"].tolist(), data["skipped_reason"].tolist(), strict=True
                    )
                )
                return cls(start, stop, tuple(data["grid"].tolist()), samples, skipped)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            return None  # missing or unreadable: recompute


def collect(
    model: Classifier,
    images: ImageSet,
    pair: ClassPair,
    *,
    layer: str | None = None,
    samples_per_image: int = 16,
    top_classes: int = 3,
    batch_size: int = 32,
    seed: int = 0,
    cache: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    summary: LoadSummary | None = None,
) -> ActivationSamples:
    """Sample `samples_per_image` vectors per image at `layer`, with their attributions.

    Batch b covers images [b * batch_size, (b + 1) * batch_size) of the set. Each finished
    batch is written to `<cache>/<key>/batch-<b>.npz` (atomically, with the image indices and
    the skipped files inside) beside a `meta.json` of the key's inputs; a rerun loads the
    finished batches and computes only the others, so a killed run resumes, and a complete
    cache is assembled without running the model. Positions are seeded per image, so results
    do not depend on the batch size (changing it between runs recomputes, same result).

    Args:
        model: the classifier.
        images: the image pool; files that fail to decode are skipped and counted.
        pair: attribution is to logit[pair.dst] - logit[pair.src].
        layer: the spatial layer to sample; None for the model's default.
        samples_per_image: K distinct positions per image, away from the border.
        top_classes: R classes per image whose attribution labels the vectors.
        batch_size: images per forward pass (and per cache shard).
        seed: seeds every image's positions, with the image's index.
        cache: root folder of the caches; default `patchfinder.io.cache_dir("activations")`.
        progress: called after each batch with its number of images (including skipped ones
            and batches loaded from the cache), so the calls sum to `len(images)`.
        summary: receives the number of images loaded and each skipped file with the reason.

    Returns:
        `ActivationSamples` with N = K x (images that decoded) vectors, image-major.

    Raises:
        ValueError: no images, no image that decodes, invalid counts, a layer without
            (B, h, w, D) output, or more samples than interior positions.
        UnknownLayerError: the model has no such layer (the message lists its layers).
    """
    if len(images) == 0:
        raise ValueError("Cannot collect activations: the image set has no images")
    layer = model.resolve_layer(layer)
    _check_pair(pair, len(model.classes))
    for name, value in (
        ("samples_per_image", samples_per_image),
        ("top_classes", top_classes),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; Received: {name}={value}")
    if top_classes > len(model.classes):
        raise ValueError(
            f"top_classes must be at most the {len(model.classes)} classes of {model.name}; "
            f"Received: top_classes={top_classes}"
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative; Received: seed={seed}")

    inputs = _key_inputs(model, pair, layer, samples_per_image, top_classes, seed)
    folder = Path(cache or cache_dir("activations")) / _key_digest(inputs, images)
    ranges = [(b, min(b + batch_size, len(images))) for b in range(0, len(images), batch_size)]
    shards: dict[int, _Shard] = {}
    for number, (start, stop) in enumerate(ranges):
        shard = _Shard.load(_shard_path(folder, number), start, stop)
        if shard is not None:
            shards[number] = shard
            _report(shard, images, summary, progress)

    pending = [number for number in range(len(ranges)) if number not in shards]
    if pending:
        meta = _read_meta(folder)
        if "receptive_field" in meta and "grid" in meta:
            grid, side = tuple(meta["grid"]), int(meta["receptive_field"])
        else:
            grid, side = _geometry(model, layer)
        sample_positions(grid, samples_per_image, np.random.default_rng(0))  # fail early
        meta = {**inputs, "images": len(images), "grid": grid, "receptive_field": side}
        _write_meta(folder, {**meta, "batch_size": batch_size})
        decoded = _stream(images, ranges, pending, model.input_size, batch_size)
        for number, indices, pixels, skipped in decoded:
            if len(indices):
                attribution = attribute(model, pixels, pair, layer=layer, top_classes=top_classes)
                batch = sample(
                    attribution,
                    indices,
                    samples_per_image=samples_per_image,
                    seed=seed,
                    box_side=side,
                )
            else:  # every image of the batch failed to decode
                batch = _empty_samples(top_classes)
            shard = _Shard(*ranges[number], grid, batch, skipped)
            shard.save(_shard_path(folder, number))
            shards[number] = shard
            _report(shard, images, summary, progress)
    return _assemble(images, layer, model.input_size, [shards[n] for n in range(len(ranges))])


def _shard_path(folder: Path, number: int) -> Path:
    return folder / f"batch-{number:06d}.npz"


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(folder: Path, meta: dict) -> None:
    with atomic_write(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))


def _report(
    shard: _Shard,
    images: ImageSet,
    summary: LoadSummary | None,
    progress: Callable[[int], None] | None,
) -> None:
    if summary is not None:
        summary.loaded += shard.loaded
        summary.skipped.extend((images[i].path, reason) for i, reason in shard.skipped)
    if progress is not None:
        progress(shard.stop - shard.start)


def _stream(
    images: ImageSet,
    ranges: list[tuple[int, int]],
    pending: list[int],
    side: int,
    batch_size: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Decode the pending batches in one `tf.data` stream, regrouped by batch number.

    Yields (batch number, set indices (n,), images (n, S, S, 3), skipped [(index, reason)]).
    Skipped files shift the stream's own batches, so decoded images are regrouped by the set
    batch they belong to. A batch is complete once the stream has moved past its last image;
    by then `iterate_batches` has recorded its skipped files, in stream order.
    """
    wanted = np.concatenate([np.arange(*ranges[n]) for n in pending])  # set index per position
    ends = np.cumsum([ranges[n][1] - ranges[n][0] for n in pending]).tolist()  # in the stream
    decoding = LoadSummary()
    current, begin, taken = 0, 0, 0  # batch being filled, its first stream position
    held: dict[int, np.ndarray] = {}  # stream position -> decoded image, for `current`

    def close() -> tuple[int, np.ndarray, np.ndarray, list[tuple[int, str]]]:
        nonlocal taken
        missing = [p for p in range(begin, ends[current]) if p not in held]
        reasons = decoding.skipped[taken : taken + len(missing)]
        taken += len(missing)
        skipped = [(int(wanted[p]), why) for p, (_, why) in zip(missing, reasons, strict=True)]
        pixels = np.stack(list(held.values())) if held else np.zeros((0, side, side, 3), np.float32)
        return pending[current], wanted[list(held)], pixels, skipped

    records = [images[int(i)] for i in wanted]
    for batch in iterate_batches(records, size=side, batch_size=batch_size, summary=decoding):
        for position, pixels in zip(batch.indices.tolist(), batch.images, strict=True):
            while position >= ends[current]:
                yield close()
                current, begin, held = current + 1, ends[current], {}
            held[position] = pixels
    while current < len(pending):
        yield close()
        current, begin, held = current + 1, ends[current], {}


def _empty_samples(top_classes: int) -> BatchSamples:
    return BatchSamples(
        vectors=np.zeros((0, 0), np.float32),
        image=np.zeros(0, np.int64),
        position=np.zeros((0, 2), np.int64),
        box=np.zeros((0, 4), np.int64),
        prediction=np.zeros(0, np.int64),
        pair_attribution=np.zeros(0, np.float32),
        class_ids=np.zeros((0, top_classes), np.int64),
        class_attribution=np.zeros((0, top_classes), np.float32),
    )


def _assemble(
    images: ImageSet, layer: str, input_size: int, shards: list[_Shard]
) -> ActivationSamples:
    full = [shard for shard in shards if len(shard.samples.image)]
    if not full:
        raise ValueError(
            f"Cannot collect activations: none of the {len(images)} images could be decoded"
        )

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(shard.samples, name) for shard in full])

    image = joined("image")
    labels = np.asarray(
        [-1 if record.label is None else record.label.index for record in images], np.int64
    )
    return ActivationSamples(
        layer=layer,
        grid=full[0].grid,
        input_size=input_size,
        files=[str(record.path) for record in images],
        vectors=joined("vectors").astype(np.float32, copy=False),
        image=image,
        position=joined("position"),
        box=joined("box"),
        label=labels[image],
        prediction=joined("prediction"),
        pair_attribution=joined("pair_attribution"),
        class_ids=joined("class_ids"),
        class_attribution=joined("class_attribution"),
    )


# --- saving ---------------------------------------------------------------------------------

_ARRAYS = (
    "vectors", "image", "position", "box", "label", "prediction",
    "pair_attribution", "class_ids", "class_attribution",
)  # fmt: skip


def save_samples(samples: ActivationSamples, path: str | Path) -> Path:
    """Write the samples with their provenance (files, boxes, labels) to one `.npz`, atomically."""
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            layer=np.array(samples.layer),
            grid=np.array(samples.grid, np.int64),
            input_size=np.array(samples.input_size, np.int64),
            files=np.array(samples.files, dtype=str),
            **{name: getattr(samples, name) for name in _ARRAYS},
        )
    return Path(path)


def load_samples(path: str | Path) -> ActivationSamples:
    """Read samples written by `save_samples`; a missing or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Activation samples not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return ActivationSamples(
                layer=str(data["layer"]),
                grid=(int(data["grid"][0]), int(data["grid"][1])),
                input_size=int(data["input_size"]),
                files=[str(f) for f in data["files"]],
                **{name: data[name] for name in _ARRAYS},
            )
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a patchfinder activations file: {error}") from None
