"""The top-level recipes: each reads as one call per stage.

samples, atlas = pair_atlas(model, pool, pair)                       # activations, atlas
proposals = propose(model, atlas, samples, screening, pair)          # crops, screened
result = discover(model, pool, images, pair)                         # all of it, measured
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchfinder.activations import collect, pair_direction
from patchfinder.atlas import Atlas, build_atlas
from patchfinder.data import ImageSet, LoadSummary
from patchfinder.evaluate import (
    EligibleImages,
    FlipTable,
    Split,
    eligible,
    evaluate_patches,
    screen,
    split_images,
)
from patchfinder.model import Classifier
from patchfinder.optimize import optimize_patch
from patchfinder.paste import DEFAULT_SIZES, Corners, Placement
from patchfinder.proposals import (
    candidate_crops,
    deduplicate,
    noise_patch,
)
from patchfinder.proposals import random_crops as natural_crops  # `random_crops` is a count here
from patchfinder.types import ActivationSamples, ClassPair, Patch, Proposal

#: How `propose` ranks the atlas's vectors for cropping.
RANKINGS = ("attribution", "transfer")
#: progress(stage, done, total): one bar per stage in the CLI.
Progress = Callable[[str, int, int], None]


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None]:
    """A `progress(k)` callback for one stage, counting up to `total`."""
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(stage, done, total)

    if progress is not None:
        progress(stage, 0, total)
    return advance


def pair_atlas(
    model: Classifier,
    pool: ImageSet,
    pair: ClassPair,
    *,
    layer: str | None = None,
    samples_per_image: int = 16,
    grid: int = 20,
    min_count: int = 3,
    seed: int = 0,
    cache: Path | None = None,
    progress: Progress | None = None,
    summary: LoadSummary | None = None,
) -> tuple[ActivationSamples, Atlas]:
    """Sample attributed activations over `pool` and lay them out as a class-pair atlas.

    The activations are cached (see `activations.collect`): a rerun with the same model,
    layer, pool, K and seed skips straight to the layout, and a killed run resumes.
    """
    samples = collect(
        model,
        pool,
        pair,
        layer=model.resolve_layer(layer),
        samples_per_image=samples_per_image,
        seed=seed,
        cache=cache,
        progress=_stage(progress, "activations", len(pool)),
        summary=summary,
    )
    done = _stage(progress, "layout", 1)
    atlas = build_atlas(samples, pair, n=grid, min_count=min_count, seed=seed)
    done(1)
    return samples, atlas


def propose(
    model: Classifier,
    atlas: Atlas,
    samples: ActivationSamples,
    screening: EligibleImages | None,
    pair: ClassPair,
    *,
    top_k: int = 10,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = Corners(),  # noqa: B008 (a frozen value)
    max_screening: int = 32,
    rank_by: str = "attribution",
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Proposal]:
    """Natural crops from the cells that most favour dst, near-duplicates dropped, screened on
    `screening` (src images the model gets right) and cut to the `top_k` that flip most.

    Crops from src or dst images are used only where a cell has nothing else: the point is
    to find *other* classes' features that push src toward dst. Without screening images the
    `top_k` highest-attribution crops are returned unscreened. Screening uses at most
    `max_screening` images: it ranks candidates, so it needs fewer images than evaluation.

    `rank_by` picks the cells and vectors to crop: "attribution" by their pair attribution
    in their own images (the atlas's colouring); "transfer" by their dot product with
    `pair_direction` on the screening images, what the feature would do pasted onto src
    photos (needs screening images; without them attribution is used).
    """
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by must be one of {', '.join(RANKINGS)}; Received: {rank_by!r}")
    scores = None
    if rank_by == "transfer" and screening is not None and len(screening):
        direction = pair_direction(model, screening.images, pair, layer=atlas.layer)  # (D,)
        scores = np.asarray(samples.vectors, np.float64) @ direction  # (N,)
    crops = deduplicate(
        candidate_crops(
            atlas,
            samples,
            exclude_classes=[pair.src.index, pair.dst.index],
            classes=model.classes,
            scores=scores,
        )
    )
    if screening is None or len(screening) == 0:
        return sorted(crops, key=lambda p: -p.attribution)[:top_k]
    screening = _subset(screening, max_screening, seed)
    settings = len(sizes) * len(
        placement.layout(model.input_size, sizes, np.random.default_rng(seed))[0]
    )
    return screen(
        model,
        crops,
        screening,
        pair,
        top_k=top_k,
        sizes=sizes,
        placement=placement,
        seed=seed,
        progress=_stage(progress, "screening", len(crops) * settings * len(screening)),
    )


def _subset(images: EligibleImages, count: int, seed: int) -> EligibleImages:
    """`count` of the eligible images, drawn without replacement with `seed` (all if fewer)."""
    if len(images) <= count:
        return images
    return images.take(np.sort(np.random.default_rng(seed).choice(len(images), count, False)))


def controls(
    model: Classifier,
    pool: ImageSet,
    screening: EligibleImages,
    pair: ClassPair,
    *,
    crop_sides: tuple[float, float] = (0.2, 0.5),
    random_crops: int = 5,
    optimize_steps: int = 100,
    sizes: Sequence[float] = DEFAULT_SIZES,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Patch]:
    """The patches every discovery is measured against: uniform noise (chance), random
    natural crops of the same pool at the discovered crops' sides, `crop_sides` (fractions
    of the input side: is the atlas needed, or would any natural crop do?) and a
    gradient-optimised patch trained on the screening images (Brown et al. 2017: what an
    attacker could reach)."""
    rng = np.random.default_rng(seed)
    side = model.input_size // 4
    patches = [noise_patch(side, rng=rng)]
    if random_crops > 0:
        patches += natural_crops(
            pool, count=random_crops, size=model.input_size, rng=rng, side_range=crop_sides
        )
    if optimize_steps > 0 and len(screening):
        patches.append(
            optimize_patch(
                model,
                screening,
                pair,
                steps=optimize_steps,
                sizes=sizes,
                seed=seed,
                progress=_stage(progress, "optimizing", optimize_steps),
            )
        )
    return patches


@dataclass
class Discovery:
    """Everything one `discover` run produced, for the report and for provenance.

    Attributes:
        samples, atlas: the class-pair atlas the proposals came from.
        split: which src images screened the proposals and which evaluated them (disjoint).
        screening, evaluation: the eligible images of each part (n = len(evaluation)).
        proposals: the discovered patches with their provenance, best screened first.
        patches: every patch evaluated (given, discovered, controls), in table order.
        table: the flip outcomes on the evaluation images.
    """

    samples: ActivationSamples
    atlas: Atlas
    split: Split
    screening: EligibleImages
    evaluation: EligibleImages
    proposals: list[Proposal]
    patches: list[Patch]
    table: FlipTable

    @property
    def missing_proposals(self) -> str:
        """Why the table has no discovered patch, for the summary and the CLI ("" if it has)."""
        if self.proposals:
            return ""
        pair = self.atlas.pair
        return (
            f"No discovered patch: no atlas cell at layer {self.atlas.layer} favours "
            f"{pair.dst.name} over {pair.src.name} (none has a positive mean attribution, or "
            "their source images failed to decode), so nothing was proposed or evaluated. Try "
            "another layer, a larger pool, or ranking by transfer."
        )


def discover(
    model: Classifier,
    pool: ImageSet,
    images: ImageSet,
    pair: ClassPair,
    *,
    given: Sequence[Patch] = (),
    layer: str | None = None,
    samples_per_image: int = 16,
    grid: int = 20,
    top_k: int = 10,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = Corners(),  # noqa: B008 (a frozen value)
    screening_fraction: float = 0.5,
    max_evaluation: int | None = None,
    rank_by: str = "attribution",
    random_crops: int = 5,
    optimize_steps: int = 100,
    seed: int = 0,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> Discovery:
    """Atlas, proposals, controls and evaluation for one class pair, without a human.

    `images` supplies the src photos (others are ignored); they are split, seeded, into a
    screening part that picks the proposals (and trains the optimised patch) and an
    evaluation part on which every patch, `given` ones included, is measured. With
    `max_evaluation`, a seeded subset of that many eligible evaluation images bounds the cost
    (`Discovery.evaluation` lists the ones measured).
    """
    samples, atlas = pair_atlas(
        model,
        pool,
        pair,
        layer=layer,
        samples_per_image=samples_per_image,
        grid=grid,
        seed=seed,
        cache=cache,
        progress=progress,
    )
    split = split_images(
        images.filter([pair.src]), screening_fraction=screening_fraction, seed=seed
    )
    screening, evaluation = (
        eligible(model, split.screening, pair),
        eligible(model, split.evaluation, pair),
    )
    if max_evaluation is not None:
        evaluation = _subset(evaluation, max_evaluation, seed)
    proposals = propose(
        model,
        atlas,
        samples,
        screening,
        pair,
        top_k=top_k,
        sizes=sizes,
        placement=placement,
        rank_by=rank_by,
        seed=seed,
        progress=progress,
    )
    baselines = controls(
        model,
        pool,
        screening,
        pair,
        crop_sides=_crop_sides(proposals, model.input_size),
        random_crops=random_crops,
        optimize_steps=optimize_steps,
        sizes=sizes,
        seed=seed,
        progress=progress,
    )
    patches = [*given, *(p.patch for p in proposals), *baselines]
    table = _evaluate(model, evaluation, patches, pair, sizes, placement, seed, progress)
    return Discovery(samples, atlas, split, screening, evaluation, proposals, patches, table)


def _crop_sides(proposals: Sequence[Proposal], size: int) -> tuple[float, float]:
    """The range of the proposals' crop sides as fractions of the input side S."""
    sides = [(p.box[2] - p.box[0]) / size for p in proposals] or [0.2, 0.5]
    return min(sides), max(sides)


def _evaluate(
    model: Classifier,
    images: EligibleImages,
    patches: Sequence[Patch],
    pair: ClassPair,
    sizes: Sequence[float],
    placement: Placement,
    seed: int,
    progress: Progress | None,
) -> FlipTable:
    """`evaluate_patches` with an `evaluating` progress bar sized to the pasted images."""
    positions = placement.layout(model.input_size, sizes, np.random.default_rng(seed))[0]
    total = len(images) * len(patches) * len(sizes) * len(positions)
    return evaluate_patches(
        model,
        images,
        patches,
        pair,
        sizes=sizes,
        placement=placement,
        seed=seed,
        progress=_stage(progress, "evaluating", total),
    )


def measure(
    model: Classifier,
    images: ImageSet,
    pair: ClassPair,
    patches: Sequence[Patch],
    *,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = Corners(),  # noqa: B008 (a frozen value)
    seed: int = 0,
    max_images: int | None = None,
    progress: Progress | None = None,
) -> tuple[EligibleImages, FlipTable]:
    """Flip rates of given patches on the src images of `images` that the model gets right
    (no discovery, no split): what `patchfinder evaluate` and an audit run. With
    `max_images`, a seeded subset of at most that many of those images is measured."""
    evaluation = eligible(model, images.filter([pair.src]), pair)
    if max_images is not None:
        evaluation = _subset(evaluation, max_images, seed)
    return evaluation, _evaluate(model, evaluation, patches, pair, sizes, placement, seed, progress)
