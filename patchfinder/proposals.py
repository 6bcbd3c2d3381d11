"""Proposals: from a class-pair atlas to natural patches worth pasting, and the controls.

The article's observation (Carter et al., 2019): in a class-pair atlas the features that push
src toward dst sit near *another* class's features, and natural crops of those flip the
prediction when pasted onto src photos. The recipe, as the caller runs it:

    crops = candidate_crops(atlas, samples, exclude_classes=[src, dst])  # unscreened
    crops = deduplicate(crops)                                           # one per look
    best = screen(model, crops, eligible_screening, pair, top_k=10, ...) # screening half only
    controls = [noise_patch(side, rng=rng), *random_crops(pool, ...),
                optimize_patch(model, eligible_screening, pair, ...)]    # what chance / an
    write_proposals([*best, *controls], folder)                          # attacker would do

Crops are cut from `load_image(file, size=S)`, the model-input view in which the samples'
receptive-field boxes live, and are *not* resized: a crop of side L holds exactly those L x L
model-input pixels, and pasting resizes it to each evaluated size.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchfinder.atlas import Atlas, rank_cells
from patchfinder.data import IMAGE_EXTENSIONS, ImageError, ImageSet, load_image
from patchfinder.io import atomic_write
from patchfinder.labels import ClassList
from patchfinder.types import (
    PATCH_KINDS,
    ActivationSamples,
    Cell,
    Patch,
    Proposal,
)

logger = logging.getLogger("patchfinder.proposals")

#: Side of the thumbnails `deduplicate` compares pixels on.
THUMBNAIL_SIDE = 16
#: File names `read_patches` takes a folder's kinds from (`file` column, optional `kind`).
PATCH_MANIFESTS = ("patches.csv", "proposals.csv")
#: Kind names other tools write, mapped to ours (the article's `patches.csv` says "published").
KIND_ALIASES = {"published": "given", "": "given"}
#: Columns of `proposals.csv`, in order.
PROPOSAL_COLUMNS = (
    "file", "patch", "kind", "source_file", "source_class", "x0", "y0", "x1", "y1",
    "cell_x", "cell_y", "attribution", "screening_rate", "screening_n", "source", "vector",
    "similarity", "parent",
)  # fmt: skip
#: Where candidates come from: atlas cells ranked by attribution, or by transfer (their
#: effect on src photos), pool vectors nearest to the optimised patch's ("aimed"), or pool
#: vectors ranked one by one by their own attribution, whatever their cell ("samples").
SOURCES = ("attribution", "transfer", "aimed", "samples")


# ----------------------------------------------------------------------------- candidates


def crop_boxes(
    samples: ActivationSamples, indices: np.ndarray, *, context: float, min_side: int
) -> np.ndarray:
    """Square crops around the receptive fields of the samples at `indices`, with context.

    A crop is centred on its vector's receptive-field centre, ((col + 0.5) S / w,
    (row + 0.5) S / h) as `activations.boxes` places it, and has side
    max(round(context * R), min_side), at most S, where R is the layer's receptive-field
    side: the largest box extent in the samples, since boxes at the image edge are clipped.
    A crop that would poke out of the image slides inside (it never shrinks), so it always
    holds the receptive-field centre, and the whole (clipped) box when context >= 1. With
    context 1 an interior crop *is* the receptive-field box.

    Returns:
        int64 (len(indices), 4) crops (x0, y0, x1, y1) in model-input pixels, inside [0, S].
    """
    size = samples.input_size
    h, w = samples.grid
    position = np.asarray(samples.position)[indices].reshape(-1, 2)  # (P, 2) (row, col)
    centre = np.stack([(position[:, 1] + 0.5) * size / w, (position[:, 0] + 0.5) * size / h], 1)
    extent = np.asarray(samples.box)[:, 2:] - np.asarray(samples.box)[:, :2]  # (N, 2)
    field = int(extent.max()) if extent.size else size
    side = int(np.clip(max(round(context * field), min_side), 1, size))
    start = np.floor(centre - side / 2.0 + 0.5)  # as `activations.boxes` rounds
    start = np.clip(start, 0, size - side)  # slide inside the image
    return np.concatenate([start, start + side], axis=1).astype(np.int64)


def _letters(rank: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "aa": a short rank suffix for patch names."""
    text = ""
    rank += 1
    while rank:
        rank, digit = divmod(rank - 1, 26)
        text = string.ascii_lowercase[digit] + text
    return text


def _pick_members(
    cell: Cell,
    samples: ActivationSamples,
    score: np.ndarray,
    excluded: np.ndarray,
    *,
    per_cell: int,
    prefer_other_classes: bool,
) -> np.ndarray:
    """Up to `per_cell` of the cell's dst-favouring members (`score` > 0), best first, one
    per image."""
    members = np.asarray(cell.members, dtype=np.int64)
    members = members[score[members] > 0]  # a member pushing toward src is no candidate
    order = members[np.lexsort((members, -score[members]))]  # best first
    if prefer_other_classes and np.any(~excluded[order]):
        order = order[~excluded[order]]  # src/dst images only where a cell has nothing else
    _, first = np.unique(samples.image[order], return_index=True)  # each image's best vector
    return order[np.sort(first)][:per_cell]


def candidate_crops(
    atlas: Atlas,
    samples: ActivationSamples,
    *,
    top_cells: int = 8,
    per_cell: int = 6,
    context: float = 0.5,
    min_side: int = 48,
    exclude_classes: Sequence[int] = (),
    prefer_other_classes: bool = True,
    classes: ClassList | None = None,
    scores: np.ndarray | None = None,
    source: str = "attribution",
) -> list[Proposal]:
    """Natural crops around the vectors of the cells that most favour the pair's dst.

    Vectors are ranked by `scores` (default: their pair attribution, as the atlas shows it;
    `vectors @ activations.pair_direction(...)` ranks them by their effect on src photos).
    The `top_cells` cells with the highest positive mean score; in each, the members with
    the highest positive score, at most one per image and `per_cell` in all. A member's
    image is "other" when neither its label nor its prediction is in `exclude_classes` (the
    caller passes [src, dst]): with `prefer_other_classes`, a cell's src/dst images are used
    only when it has no other-class candidate, because the article's point is that *another*
    class's features flip the prediction.

    Each crop is centred on the member's receptive field, `context` times its side (see
    `crop_boxes`). The default, half the side, keeps the crop local: a deep layer's
    effective receptive field spans much of the input (135 of 224 px at EfficientNet-Lite0's
    block5c, 203 at block6d), so a wider crop is the whole photo rather than the feature the
    cell stands for, and the crops' sides (~0.2-0.5 of the input) match the sizes they are
    pasted at.

    Each source image is decoded once. An image that fails to decode is logged and skipped.

    Args:
        atlas: the class-pair atlas built from `samples`.
        samples: its activation samples (files, boxes, labels, attributions).
        top_cells: how many of the most dst-favouring cells to take crops from.
        per_cell: the most crops per cell.
        context: crop side over the receptive-field side (1.0: the box itself; 0.5: its
            central half).
        min_side: the smallest crop side in model-input pixels (capped at S).
        exclude_classes: class indices whose images are not "other" (usually [src, dst]).
        prefer_other_classes: use src/dst images only where a cell has no others.
        classes: names for `source_class`; None: the pair's names for src and dst labels,
            the class index as text for others, "" for unlabelled images.
        scores: float (N,) per-vector scores to rank by; None: `samples.pair_attribution`.
        source: what the proposals' `source` says ("transfer" when `scores` are that).
    Returns:
        Unscreened proposals (kind "discovered", named `cell<x>-<y>-<rank letter>`, with
        `<source>-` in front for another source than "attribution"), by cell rank then
        attribution, best first; `screening_rate` is nan.
    """
    if len(atlas.xy) != len(samples):
        raise ValueError(
            f"samples must be the atlas's own ({len(atlas.xy)} vectors); "
            f"Received: {len(samples)} samples"
        )
    for name, value in (("top_cells", top_cells), ("per_cell", per_cell), ("min_side", min_side)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; Received: {name}={value}")
    if not context > 0:
        raise ValueError(f"context must be positive; Received: context={context}")
    excluded = _excluded(samples, exclude_classes)
    if scores is None:
        score = np.asarray(samples.pair_attribution, dtype=np.float64)
        cells = [cell for cell in rank_cells(atlas.cells) if cell.attribution > 0]
    else:
        score = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(score) != len(samples):
            raise ValueError(
                f"scores must have one value per sample ({len(samples)}); Received: {len(score)}"
            )
        means = [float(score[cell.members].mean()) for cell in atlas.cells]
        ranked = sorted(zip(means, atlas.cells, strict=True), key=lambda m: (-m[0], -m[1].count))
        cells = [cell for mean, cell in ranked if mean > 0]
    cells = cells[:top_cells]
    picks = [
        (cell, rank, int(index))
        for cell in cells
        for rank, index in enumerate(
            _pick_members(
                cell,
                samples,
                score,
                excluded,
                per_cell=per_cell,
                prefer_other_classes=prefer_other_classes,
            )
        )
    ]
    if not picks:
        return []
    prefix = "" if source == "attribution" else f"{source}-"  # names stay unique across sources
    indices = np.asarray([index for _, _, index in picks])
    crops = crop_boxes(samples, indices, context=context, min_side=min_side)  # (P, 4)
    files = [samples.files[int(i)] for i in samples.image[indices]]
    pixels = cut(files, crops, size=samples.input_size)
    return [
        Proposal(
            patch=Patch(
                name=f"{prefix}cell{cell.x:02d}-{cell.y:02d}-{_letters(rank)}",
                kind="discovered",
                pixels=pixels[pick],
            ),
            source_file=files[pick],
            source_class=_class_name(int(samples.label[index]), atlas, classes),
            box=tuple(int(v) for v in crops[pick]),
            cell=(cell.x, cell.y),
            attribution=float(samples.pair_attribution[index]),
            source=source,
            vector=index,
        )
        for pick, (cell, rank, index) in enumerate(picks)
        if pick in pixels
    ]


def cut(files: Sequence[str], boxes: np.ndarray, *, size: int) -> dict[int, np.ndarray]:
    """{i: pixels of boxes[i] in files[i]}: crops of the S x S model-input views (the frame
    the samples' boxes live in), unresized; each file decoded once. A file that fails to
    decode is logged and its crops are left out.

    Args:
        files: (P,) image paths; boxes: int (P, 4) (x0, y0, x1, y1) inside [0, S].
    """
    pixels: dict[int, np.ndarray] = {}
    names = np.asarray([str(f) for f in files], dtype=object)
    for file in dict.fromkeys(names.tolist()):
        try:
            view = load_image(file, size=size)  # (S, S, 3)
        except ImageError as error:
            logger.warning("Skipping crops from %s", error)
            continue
        for i in np.flatnonzero(names == file):
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            pixels[int(i)] = view[y0:y1, x0:x1].copy()
    return pixels


def _excluded(samples: ActivationSamples, exclude_classes: Sequence[int]) -> np.ndarray:
    """bool (N,): the vector's image is labelled or predicted as one of `exclude_classes`."""
    exclude = np.asarray(list(exclude_classes), dtype=np.int64)
    return np.isin(samples.label, exclude) | np.isin(samples.prediction, exclude)


def _cell_of(atlas: Atlas) -> dict[int, tuple[int, int]]:
    """{sample index: (x, y) of its atlas cell}."""
    return {int(m): (cell.x, cell.y) for cell in atlas.cells for m in cell.members}


def aimed_crops(
    atlas: Atlas,
    samples: ActivationSamples,
    targets: np.ndarray,
    *,
    count: int = 150,
    context: float = 0.5,
    min_side: int = 48,
    exclude_classes: Sequence[int] = (),
    prefer_other_classes: bool = True,
    classes: ClassList | None = None,
) -> list[Proposal]:
    """Natural crops whose features are nearest to an adversary's (as SNAFUE does; Casper et
    al. 2023): the pool vectors most cosine-similar to `targets`, the activations of the
    optimised patch inside its footprint on src photos (`activations.footprint_vectors`).

    Each pool vector scores its highest cosine similarity to any target; the `count` best,
    at most one per image, other-class images first (as `candidate_crops`: with
    `prefer_other_classes`, src/dst images only when too few others), are cropped around their
    receptive fields (`crop_boxes` with `context`, `min_side`).

    Args:
        targets: float (A, D) the adversary's activation vectors at the atlas's layer.
    Returns:
        Proposals (kind "discovered", source "aimed", named `aim-<rank>`, best first), with
        `similarity`, `vector` and the vector's atlas `cell`.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1; Received: count={count}")
    vectors, targets = np.asarray(samples.vectors, np.float64), np.asarray(targets, np.float64)
    if len(vectors) == 0 or targets.size == 0:
        return []
    targets = targets.reshape(-1, vectors.shape[1])
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    aims = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    nearest = np.full(len(unit), -np.inf)
    for start in range(0, len(aims), 512):  # (N, 512) at a time: bounded memory
        nearest = np.maximum(nearest, (unit @ aims[start : start + 512].T).max(axis=1))
    return ranked_crops(
        atlas, samples, nearest, count=count, source="aimed", prefix="aim", similarity=True,
        context=context, min_side=min_side, exclude_classes=exclude_classes,
        prefer_other_classes=prefer_other_classes, classes=classes,
    )  # fmt: skip


def ranked_crops(
    atlas: Atlas,
    samples: ActivationSamples,
    scores: np.ndarray,
    *,
    count: int = 150,
    source: str = "samples",
    prefix: str = "sample",
    similarity: bool = False,
    context: float = 0.5,
    min_side: int = 48,
    exclude_classes: Sequence[int] = (),
    prefer_other_classes: bool = True,
    classes: ClassList | None = None,
) -> list[Proposal]:
    """Crops of the `count` pool vectors that score highest, at most one per image (its best
    vector), other-class images first (with `prefer_other_classes`, src/dst images only when
    too few others), cropped around their receptive fields (`crop_boxes` with `context`,
    `min_side`). Unlike `candidate_crops` the cells play no part, so a good vector counts
    whichever cell the layout put it in. By default `scores` are the vectors' own pair
    attributions (the "samples" source); `aimed_crops` passes cosine similarities.

    Args:
        scores: float (N,) one per pool vector of `samples`, higher is better.
        similarity: record `scores` as each proposal's `similarity`.
    Returns:
        Proposals (kind "discovered", source `source`, named `<prefix>-<rank>`, best first),
        with `vector` and the vector's atlas `cell`.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1; Received: count={count}")
    scores = np.asarray(scores, np.float64)
    if len(scores) != len(samples.image):
        raise ValueError(
            f"scores must have one value per pool vector ({len(samples.image)}); "
            f"Received: {len(scores)}"
        )
    if len(scores) == 0:
        return []
    excluded = _excluded(samples, exclude_classes)
    order = np.lexsort((np.arange(len(scores)), -scores))  # best first
    if prefer_other_classes:
        order = np.concatenate([order[~excluded[order]], order[excluded[order]]])
    _, first = np.unique(samples.image[order], return_index=True)  # each image's best vector
    chosen = order[np.sort(first)][:count]  # in `order`: other classes first, then score
    crops = crop_boxes(samples, chosen, context=context, min_side=min_side)
    files = [samples.files[int(i)] for i in samples.image[chosen]]
    pixels = cut(files, crops, size=samples.input_size)
    cells = _cell_of(atlas)
    return [
        Proposal(
            patch=Patch(name=f"{prefix}-{rank:03d}", kind="discovered", pixels=pixels[rank]),
            source_file=files[rank],
            source_class=_class_name(int(samples.label[index]), atlas, classes),
            box=tuple(int(v) for v in crops[rank]),
            cell=cells.get(int(index), (-1, -1)),
            attribution=float(samples.pair_attribution[index]),
            source=source,
            vector=int(index),
            similarity=float(scores[index]) if similarity else float("nan"),
        )
        for rank, index in enumerate(chosen)
        if rank in pixels
    ]


#: Box changes `refine_crops` tries around a crop: (scale of the side, shift in x, shift in
#: y, name suffix); shifts are fractions of the side. The centre is the feature the vector
#: saw, so the changes stay near it.
REFINEMENTS = (
    (0.75, 0.0, 0.0, "z75"),
    (1.33, 0.0, 0.0, "z133"),
    (1.0, -0.25, 0.0, "l"),
    (1.0, 0.25, 0.0, "r"),
    (1.0, 0.0, -0.25, "u"),
    (1.0, 0.0, 0.25, "d"),
)


def refine_crops(
    proposals: Sequence[Proposal],
    *,
    size: int,
    top: int = 5,
    changes: Sequence[tuple[float, float, float, str]] = REFINEMENTS,
    min_side: int = 16,
) -> list[Proposal]:
    """Other crops of the same photos around the first `top` proposals: each box scaled
    about its centre and shifted by a fraction of its side (`changes`), slid inside the
    S x S view and never below `min_side`. The patches stay natural crops, never
    pixel-optimised. A change that gives back the same box is skipped.

    Returns:
        Up to top x len(changes) proposals named `<name>-<suffix>`, with `parent` the
        proposal's name and source `<its source>+refined`.
    """
    variants: list[tuple[Proposal, tuple[int, int, int, int], str]] = []
    for proposal in proposals[:top]:
        x0, y0, x1, y1 = proposal.box
        side, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
        for scale, dx, dy, suffix in changes:
            new = int(np.clip(round(side * scale), min(min_side, size), size))
            left = int(np.clip(round(cx + dx * side - new / 2), 0, size - new))
            top_ = int(np.clip(round(cy + dy * side - new / 2), 0, size - new))
            box = (left, top_, left + new, top_ + new)
            if box != tuple(proposal.box):
                variants.append((proposal, box, suffix))
    pixels = cut(
        [p.source_file for p, _, _ in variants], np.asarray([b for _, b, _ in variants]), size=size
    )
    return [
        dataclasses.replace(
            parent,
            patch=Patch(f"{parent.patch.name}-{suffix}", parent.patch.kind, pixels[i]),
            box=box,
            source=f"{parent.source.split('+')[0]}+refined",
            parent=parent.patch.name,
            screening_rate=float("nan"),
            screening_n=0,
        )
        for i, (parent, box, suffix) in enumerate(variants)
        if i in pixels
    ]


def _class_name(label: int, atlas: Atlas, classes: ClassList | None) -> str:
    if label < 0:
        return ""
    if classes is not None and label < len(classes):  # else a label the model lacks
        return classes[label].name
    for known in (atlas.pair.src, atlas.pair.dst):
        if known.index == label:
            return known.name
    return str(label)


# ----------------------------------------------------------------------------- deduplication


def _thumbnails(patches: Iterable[Patch], side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """(P, side*side*3) unit vectors: each patch box-averaged to side x side, mean removed.

    Removing each thumbnail's mean (over pixels and channels) makes the comparison one of
    structure and colour balance rather than of overall brightness: every photo is
    positive everywhere, so raw cosines of natural images are all close to 1. A uniform
    patch becomes the zero vector and is similar to nothing.
    """
    rows = []
    for patch in patches:
        h, w = patch.pixels.shape[:2]
        k = -(-max(h, w) // side)  # samples per thumbnail pixel, so each averages >= 1 pixel
        ys = np.arange(side * k) * h // (side * k)  # nearest rows of a (side*k)^2 grid
        xs = np.arange(side * k) * w // (side * k)
        grid = patch.pixels[ys][:, xs].astype(np.float64)  # (side*k, side*k, 3)
        thumb = grid.reshape(side, k, side, k, 3).mean(axis=(1, 3)).ravel()  # box average
        thumb -= thumb.mean()
        norm = np.linalg.norm(thumb)
        rows.append(thumb / norm if norm > 1e-6 else np.zeros_like(thumb))
    return np.stack(rows) if rows else np.zeros((0, side * side * 3))


def _box_iou(boxes: np.ndarray) -> np.ndarray:
    """(P, 4) boxes -> (P, P) intersection over union."""
    b = np.asarray(boxes, dtype=np.float64)
    low = np.maximum(b[:, None, :2], b[None, :, :2])  # (P, P, 2)
    high = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)  # (P, P)
    area = np.prod(b[:, 2:] - b[:, :2], axis=-1)  # (P,)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def deduplicate(
    proposals: Sequence[Proposal], *, threshold: float = 0.9, iou: float = 0.5
) -> list[Proposal]:
    """Drop near-duplicate crops, keeping the one with the higher attribution.

    Two proposals are duplicates when they come from the same file with box IoU > `iou`
    (one region reached from two vectors or cells), or when their 16 x 16 thumbnails,
    mean-removed, have cosine similarity > `threshold` (the same picture twice in the pool,
    or near-identical crops). Greedy, highest attribution first (ties: earlier first).

    Returns:
        The kept proposals, in their input order.
    """
    if not proposals:
        return []
    thumbs = _thumbnails(p.patch for p in proposals)  # (P, 768)
    similar = thumbs @ thumbs.T > threshold  # (P, P)
    files = np.asarray([p.source_file for p in proposals])
    overlapping = (files[:, None] == files[None, :]) & (
        _box_iou(np.asarray([p.box for p in proposals])) > iou
    )
    duplicate = similar | overlapping  # (P, P)
    attribution = np.asarray([p.attribution for p in proposals], dtype=np.float64)
    kept: list[int] = []
    for i in np.argsort(-attribution, kind="stable"):
        if not duplicate[i, kept].any():
            kept.append(int(i))
    return [proposals[i] for i in sorted(kept)]


# ----------------------------------------------------------------------------- controls


def noise_patch(side: int, *, rng: np.random.Generator, name: str = "noise") -> Patch:
    """A side x side patch of uniform noise in 0..255 (the article's `random.png` control)."""
    if side < 1:
        raise ValueError(f"side must be at least 1; Received: side={side}")
    pixels = rng.uniform(0.0, 255.0, size=(side, side, 3)).astype(np.float32)
    return Patch(name=name, kind="noise", pixels=pixels)


def random_crops(
    images: ImageSet | Sequence[str | Path],
    *,
    count: int,
    size: int,
    rng: np.random.Generator,
    side_range: tuple[float, float] = (0.2, 0.5),
    prefix: str = "random",
) -> list[Patch]:
    """Square crops at random places of random pool images: what chance alone does.

    Like proposals they are cut from the S x S model-input view (`load_image(size=S)`),
    unresized; sides are uniform in `side_range` x S, comparable to proposals. Every random
    choice is drawn before any image is decoded, so the crops depend on `rng` alone; an
    image that fails to decode is logged and its crops are skipped.

    Args:
        images: the pool (an ImageSet or image paths).
        count: how many crops.
        size: S, the model's input side.
        rng: the only source of randomness.
        side_range: (low, high) crop side as fractions of S.
        prefix: names are `<prefix>-00`, `<prefix>-01`, ...
    Returns:
        Up to `count` patches of kind "random-crop".
    Raises:
        ValueError: no images, bad ranges, or none of the chosen images decodes.
    """
    paths = images.paths if isinstance(images, ImageSet) else [Path(p) for p in images]
    low, high = side_range
    if not paths:
        raise ValueError("random_crops needs at least one image; Received: none")
    if count < 1 or not 0 < low <= high <= 1:
        raise ValueError(
            f"Need count >= 1 and 0 < low <= high <= 1; Received: count={count}, "
            f"side_range={side_range}"
        )
    which = rng.integers(len(paths), size=count)  # (count,)
    sides = rng.integers(max(1, round(low * size)), max(1, round(high * size)) + 1, size=count)
    corners = rng.integers(0, size - sides[:, None] + 1, size=(count, 2))  # (count, 2) x, y
    crops: dict[int, np.ndarray] = {}
    for image in np.unique(which):
        try:
            view = load_image(paths[int(image)], size=size)
        except ImageError as error:
            logger.warning("Skipping random crops from %s", error)
            continue
        for i in np.flatnonzero(which == image):
            (x, y), side = corners[i], sides[i]
            crops[int(i)] = view[y : y + side, x : x + side].copy()
    if not crops:
        raise ValueError(f"None of the {len(set(which.tolist()))} images chosen could be decoded")
    return [
        Patch(name=f"{prefix}-{i:02d}", kind="random-crop", pixels=crops[i]) for i in sorted(crops)
    ]


# ----------------------------------------------------------------------------- files


def _png(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")


def write_proposals(patches: Sequence[Proposal | Patch], folder: str | Path) -> Path:
    """Write each patch as `<name>.png` (uint8 RGB) and their provenance as `proposals.csv`.

    Proposals carry their provenance; plain patches (the controls) get empty provenance
    columns. Every file is written atomically. `read_patches(folder)` reads them back with
    their kinds (the csv's `file` and `kind` columns).

    Columns: file, patch, kind, source_file, source_class, x0, y0, x1, y1 (the crop in the
    source's model-input pixels), cell_x, cell_y, attribution, screening_rate, screening_n.

    Returns:
        The path of `proposals.csv`.
    Raises:
        ValueError: two patches share a name, or a name is not a plain file name.
    """
    folder = Path(folder)
    items = [(item.patch, item) if isinstance(item, Proposal) else (item, None) for item in patches]
    names = [patch.name for patch, _ in items]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Patch names must be unique; Received repeated names: {repeated}")
    unsafe = [name for name in names if not name or Path(name).name != name or name[0] == "."]
    if unsafe:
        raise ValueError(f"Patch names must be plain file names; Received: {unsafe}")
    rows = []
    for patch, proposal in items:
        with atomic_write(folder / f"{patch.name}.png") as tmp:
            _png(patch.pixels).save(tmp, format="PNG")
        row = {"file": f"{patch.name}.png", "patch": patch.name, "kind": patch.kind}
        if proposal is not None:
            x0, y0, x1, y1 = proposal.box
            row |= {
                "source_file": proposal.source_file,
                "source_class": proposal.source_class,
                "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                "cell_x": proposal.cell[0], "cell_y": proposal.cell[1],
                "attribution": proposal.attribution,
                "screening_rate": proposal.screening_rate,
                "screening_n": proposal.screening_n,
                "source": proposal.source,
                "vector": proposal.vector,
                "similarity": proposal.similarity,
                "parent": proposal.parent,
            }  # fmt: skip
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(PROPOSAL_COLUMNS))
    # Integers stay integers where controls leave them empty (pandas would make them floats).
    whole = ["x0", "y0", "x1", "y1", "cell_x", "cell_y", "screening_n", "vector"]
    table[whole] = table[whole].astype("Int64")
    target = folder / "proposals.csv"
    with atomic_write(target) as tmp:
        table.to_csv(tmp, index=False)
    return target


def _manifest_kinds(folder: Path) -> dict[Path, str]:
    """{image path: kind} from the first of `PATCH_MANIFESTS` in `folder` (none: {})."""
    for manifest in PATCH_MANIFESTS:
        path = folder / manifest
        if path.is_file():
            break
    else:
        return {}
    kinds: dict[Path, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [(h or "").strip().lower() for h in reader.fieldnames or []]
        if "file" not in header:
            raise ValueError(
                f"{path} must have a `file` column (and optionally `kind`); "
                f"Received columns: {reader.fieldnames}"
            )
        reader.fieldnames = header
        for row in reader:
            file = (row.get("file") or "").strip()
            if not file:
                continue
            text = (row.get("kind") or "").strip().lower()
            kind = KIND_ALIASES.get(text, text)
            if kind not in PATCH_KINDS:
                raise ValueError(
                    f"{path}, line {reader.line_num}: kind must be one of {PATCH_KINDS} (or "
                    f"{sorted(k for k in KIND_ALIASES if k)}); Received: {text!r}"
                )
            kinds[(folder / file).resolve()] = kind
    return kinds


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_patches(paths: Sequence[str | Path]) -> list[Patch]:
    """User-given patches: image files, or folders of them (not searched recursively).

    A `patches.csv` (or a `proposals.csv` from `write_proposals`) beside the images may name
    each file's kind: column `file` (relative to that folder) plus an optional `kind`;
    "published" (the article's word) and empty mean "given", the default. Names are the
    file stems. Pixels are `load_image` at the image's own resolution with no border crop:
    upright, RGB, transparency on white, float32 0..255; a non-square image keeps its
    centred square (pasting resizes patches to squares).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not an image or cannot be decoded (naming it), a folder has no
            images (naming it), a manifest is malformed, or two patches share a name.
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"Patch file or folder not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_image(p))
            if not found:
                raise ValueError(
                    f"No patch images in {path} (extensions {sorted(IMAGE_EXTENSIONS)}, any case)"
                )
            files += found
        elif _is_image(path):
            files.append(path)
        else:
            raise ValueError(
                f"{path} is not an image; expected one of {sorted(IMAGE_EXTENSIONS)} or a folder"
            )
    if not files:
        raise ValueError("read_patches needs at least one image file or folder; Received: none")
    manifests = {folder: _manifest_kinds(folder) for folder in {f.parent for f in files}}
    patches, seen = [], {}
    for file in files:
        if file.stem in seen:
            raise ValueError(
                f"Patch names (file stems) must be unique; Received: {seen[file.stem]} and {file}"
            )
        seen[file.stem] = file
        kind = manifests[file.parent].get(file.resolve(), "given")
        patches.append(Patch(name=file.stem, kind=kind, pixels=_read_pixels(file)))
    return patches


def _read_pixels(path: Path) -> np.ndarray:
    """The image's centred square at its own resolution, via `load_image` (ImageError names it)."""
    try:
        with Image.open(path) as img:
            side = min(img.size)
    except Exception as error:
        raise ImageError(path, f"not a readable image ({type(error).__name__}: {error})") from None
    return load_image(path, size=max(side, 1), crop_fraction=1.0)
