"""The top-level recipes: each reads as one call per stage.

samples, atlas = pair_atlas(model, pool, pair)                       # activations, atlas
optimized = adversary(model, screening, pair)                        # the attacker's patch
search = propose(model, atlas, samples, screening, pair, adversary=optimized)  # screened
result = discover(model, pool, images, pair)                         # all of it, measured
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchfinder.activations import collect, footprint_vectors, pair_direction
from patchfinder.atlas import Atlas, build_atlas
from patchfinder.data import ImageSet, LoadSummary
from patchfinder.evaluate import (
    EligibleImages,
    FlipTable,
    Round,
    Screening,
    Split,
    eligible,
    evaluate_patches,
    exhaustive_cost,
    screen,
    split_images,
    successive_halving,
)
from patchfinder.model import Classifier
from patchfinder.optimize import optimize_patch
from patchfinder.paste import (
    DEFAULT_SIZES,
    Corners,
    Placement,
    paste_batch,
    patch_side,
    resize_patch,
)
from patchfinder.proposals import (
    REFINEMENTS,
    SOURCES,
    aimed_crops,
    candidate_crops,
    deduplicate,
    noise_patch,
    ranked_crops,
    refine_crops,
)
from patchfinder.proposals import random_crops as natural_crops  # `random_crops` is a count here
from patchfinder.types import ActivationSamples, ClassPair, Patch, Proposal

#: Where `propose` takes candidates from by default: all of `proposals.SOURCES`.
DEFAULT_SOURCES = SOURCES
#: How many of the best survivors `propose` refines (each in `len(REFINEMENTS)` ways).
REFINE_TOP = 5
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
    adversary: Patch | None = None,
    sources: Sequence[str] = DEFAULT_SOURCES,
    top_k: int = 10,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = Corners(),  # noqa: B008 (a frozen value)
    aimed: int = 150,
    halving: bool = True,
    refine: bool = True,
    max_screening: int = 32,
    budget: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Screening:
    """Natural crops from the atlas's `sources`, near-duplicates dropped, screened on
    `screening` (src images the model gets right) and cut to the `top_k` that flip most.

    Sources (see `proposals.SOURCES`; every proposal's `source` says which it came from):
    "attribution", the cells that most favour dst in their own images (the atlas's colour);
    "transfer", the cells whose vectors, dotted with `pair_direction` on the screening
    images, would push src photos most toward dst; "aimed", the `aimed` pool vectors most
    similar to `adversary`'s (the optimised patch pasted on the screening images), as in
    SNAFUE; "samples", as many (`aimed`) pool vectors, those with the highest attribution
    of their own whatever their cell (so it does not depend on the layout's binning).
    Crops of src or dst photos are used only where there is nothing else: the point is to
    find *other* classes' features that push src toward dst.

    Screening spends at most `budget` pasted images (forward passes), by default what the
    exhaustive screening of the attribution candidates on `max_screening` images costs, so
    that many more candidates cost no more. With `halving`, `successive_halving` spends it
    (with `refine`, the best five survivors' crops are rescaled and shifted in the last
    round); without, every candidate is pasted at every setting on `max_screening` images
    (`screen`, the old way, whatever the budget). Without screening images the `top_k`
    highest-attribution candidates are returned unscreened.

    Returns:
        A `Screening`: the kept proposals (best first), each round's cost, the candidates
        per source and the budget.
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ValueError(
            f"sources must be some of {', '.join(SOURCES)}; Received: {', '.join(sources) or '()'}"
        )
    have_images = screening is not None and len(screening) > 0
    by_source = {
        source: _candidates(model, atlas, samples, screening, pair, source, adversary=adversary,
                            count=aimed, sizes=sizes, placement=placement, seed=seed)
        for source in dict.fromkeys(["attribution", *sources])
    }  # fmt: skip
    crops = deduplicate([crop for source in sources for crop in by_source[source]])
    counts = dict(Counter(crop.source for crop in crops))
    if not have_images:
        kept = sorted(crops, key=lambda p: -p.attribution)[:top_k]
        return Screening(kept=kept, rounds=[], candidates=counts)
    assert screening is not None
    positions = len(placement.layout(model.input_size, sizes, np.random.default_rng(seed))[0])
    subset = _subset(screening, max_screening, seed)
    if budget is None:  # the old screening's cost, for the attribution candidates it screened
        old = len(deduplicate(by_source["attribution"]))
        budget = exhaustive_cost(old, len(subset), len(sizes), positions)
    cost = exhaustive_cost(len(crops), len(subset), len(sizes), positions)
    if not halving:
        kept = screen(
            model, crops, subset, pair, top_k=top_k, sizes=sizes, placement=placement,
            seed=seed, progress=_stage(progress, "screening", cost),
        )  # fmt: skip
        rounds = [Round(len(crops), len(subset), tuple(sizes), cost, len(kept))]
        return Screening(kept, rounds, candidates=counts, budget=budget, exhaustive=cost)
    refined = None
    if refine:
        refined = functools.partial(refine_crops, size=model.input_size, top=REFINE_TOP)
    search = successive_halving(
        model, crops, screening, pair, top_k=top_k, budget=budget, refine=refined,
        refine_count=REFINE_TOP * len(REFINEMENTS), sizes=sizes, placement=placement,
        seed=seed, progress=_stage(progress, "screening", budget),
    )  # fmt: skip
    return dataclasses.replace(search, exhaustive=cost)


def _candidates(
    model: Classifier,
    atlas: Atlas,
    samples: ActivationSamples,
    screening: EligibleImages | None,
    pair: ClassPair,
    source: str,
    *,
    adversary: Patch | None,
    count: int,
    sizes: Sequence[float],
    placement: Placement,
    seed: int,
) -> list[Proposal]:
    """One source's unscreened crops ([] where it needs screening images or an adversary
    that are missing)."""
    have_images = screening is not None and len(screening) > 0
    others = {"exclude_classes": [pair.src.index, pair.dst.index], "classes": model.classes}
    if source == "attribution":
        return candidate_crops(atlas, samples, **others)
    if source == "samples":
        return ranked_crops(atlas, samples, samples.pair_attribution, count=count, **others)
    if not have_images:
        return []
    assert screening is not None
    if source == "transfer":
        direction = pair_direction(model, screening.images, pair, layer=atlas.layer)  # (D,)
        scores = np.asarray(samples.vectors, np.float64) @ direction  # (N,)
        return candidate_crops(atlas, samples, scores=scores, source="transfer", **others)
    if adversary is None:
        return []
    targets = adversary_features(
        model, adversary, screening, layer=atlas.layer, sizes=sizes, placement=placement,
        seed=seed,
    )  # fmt: skip
    return aimed_crops(atlas, samples, targets, count=count, **others)


def adversary_features(
    model: Classifier,
    patch: Patch,
    images: EligibleImages,
    *,
    layer: str,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = Corners(),  # noqa: B008 (a frozen value)
    max_images: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """What `patch` looks like to `layer`: its activation vectors inside its footprint, pasted
    at every size and position of `placement` (unrotated boxes) on at most `max_images` of
    `images` (a seeded subset). Costs sizes x positions x images forward passes.

    Returns:
        float32 (A, D), for `proposals.aimed_crops`.
    """
    images = _subset(images, max_images, seed)
    size = model.input_size
    layouts = placement.layout(size, sizes, np.random.default_rng(seed))
    found = []
    for fraction, positions in zip(sizes, layouts, strict=True):
        side = patch_side(fraction, size)
        pasted = paste_batch(images.images, resize_patch(patch.pixels, side)[None], positions)
        boxes = [(p.x, p.y, p.x + side, p.y + side) for p in positions]
        boxes = np.repeat(np.asarray(boxes), len(images), axis=0)  # position-major, as pasted
        found.append(footprint_vectors(model, pasted.numpy(), boxes, layer=layer))
    return np.concatenate(found)


def _subset(images: EligibleImages, count: int, seed: int) -> EligibleImages:
    """`count` of the eligible images, drawn without replacement with `seed` (all if fewer)."""
    if len(images) <= count:
        return images
    return images.take(np.sort(np.random.default_rng(seed).choice(len(images), count, False)))


def controls(
    model: Classifier,
    pool: ImageSet,
    *,
    crop_sides: tuple[float, float] = (0.2, 0.5),
    random_crops: int = 5,
    seed: int = 0,
) -> list[Patch]:
    """The natural controls every discovery is measured against: uniform noise (chance) and
    random natural crops of the same pool at the discovered crops' sides, `crop_sides`
    (fractions of the input side: is the atlas needed, or would any natural crop do?)."""
    rng = np.random.default_rng(seed)
    side = model.input_size // 4
    patches = [noise_patch(side, rng=rng)]
    if random_crops > 0:
        patches += natural_crops(
            pool, count=random_crops, size=model.input_size, rng=rng, side_range=crop_sides
        )
    return patches


def adversary(
    model: Classifier,
    screening: EligibleImages,
    pair: ClassPair,
    *,
    steps: int = 100,
    sizes: Sequence[float] = DEFAULT_SIZES,
    seed: int = 0,
    progress: Progress | None = None,
) -> Patch | None:
    """The gradient-optimised patch trained on the screening images (Brown et al. 2017: what
    an attacker could reach), the upper-bound control and the aim of the "aimed" crops;
    None without steps or screening images."""
    if steps <= 0 or len(screening) == 0:
        return None
    return optimize_patch(
        model, screening, pair, steps=steps, sizes=sizes, seed=seed,
        progress=_stage(progress, "optimizing", steps),
    )  # fmt: skip


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
        search: how the proposals were screened: candidates per source, rounds, cost.
    """

    samples: ActivationSamples
    atlas: Atlas
    split: Split
    screening: EligibleImages
    evaluation: EligibleImages
    proposals: list[Proposal]
    patches: list[Patch]
    table: FlipTable
    search: Screening

    @property
    def missing_proposals(self) -> str:
        """Why the table has no discovered patch, for the summary and the CLI ("" if it has)."""
        if self.proposals:
            return ""
        pair = self.atlas.pair
        sources = ", ".join(self.search.candidates) or "the sources asked for"
        return (
            f"No discovered patch: no candidate came from {sources} at layer "
            f"{self.atlas.layer} (no atlas cell favours {pair.dst.name} over {pair.src.name}, "
            "no optimised patch aimed the search, or the source images failed to decode), so "
            "nothing was proposed or evaluated. Try another layer, a larger pool, or the "
            "'aimed' source."
        )


def split_screening(
    model: Classifier,
    images: ImageSet,
    pair: ClassPair,
    *,
    screening_fraction: float = 0.5,
    max_evaluation: int | None = None,
    seed: int = 0,
) -> tuple[Split, EligibleImages, EligibleImages]:
    """The src photos of `images` split, seeded, into screening and evaluation parts, each cut
    to the photos the model classifies as src (`eligible`); with `max_evaluation`, a seeded
    subset of that many evaluation photos.

    Returns:
        (split, screening, evaluation).
    """
    split = split_images(
        images.filter([pair.src]), screening_fraction=screening_fraction, seed=seed
    )
    screening = eligible(model, split.screening, pair)
    evaluation = eligible(model, split.evaluation, pair)
    if max_evaluation is not None:
        evaluation = _subset(evaluation, max_evaluation, seed)
    return split, screening, evaluation


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
    sources: Sequence[str] = DEFAULT_SOURCES,
    aimed: int = 150,
    halving: bool = True,
    refine: bool = True,
    random_crops: int = 5,
    optimize_steps: int = 100,
    seed: int = 0,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> Discovery:
    """Atlas, proposals, controls and evaluation for one class pair, without a human.

    `images` supplies the src photos (others are ignored); they are split, seeded, into a
    screening part that picks the proposals (and trains the optimised patch they are aimed
    by) and an evaluation part on which every patch, `given` ones included, is measured.
    With `max_evaluation`, a seeded subset of that many eligible evaluation images bounds the
    cost (`Discovery.evaluation` lists the ones measured). `sources`, `aimed`, `halving` and
    `refine` go to `propose`.
    """
    samples, atlas = pair_atlas(
        model, pool, pair, layer=layer, samples_per_image=samples_per_image, grid=grid,
        seed=seed, cache=cache, progress=progress,
    )  # fmt: skip
    split, screening, evaluation = split_screening(
        model, images, pair, screening_fraction=screening_fraction,
        max_evaluation=max_evaluation, seed=seed,
    )  # fmt: skip
    optimized = adversary(
        model, screening, pair, steps=optimize_steps, sizes=sizes, seed=seed, progress=progress
    )
    search = propose(
        model, atlas, samples, screening, pair, adversary=optimized, sources=sources,
        top_k=top_k, sizes=sizes, placement=placement, aimed=aimed, halving=halving,
        refine=refine, seed=seed, progress=progress,
    )  # fmt: skip
    proposals = search.kept
    baselines = controls(
        model,
        pool,
        crop_sides=_crop_sides(proposals, model.input_size),
        random_crops=random_crops,
        seed=seed,
    )
    patches = [*given, *(p.patch for p in proposals), *baselines]
    patches += [optimized] if optimized is not None else []
    table = _evaluate(model, evaluation, patches, pair, sizes, placement, seed, progress)
    return Discovery(
        samples, atlas, split, screening, evaluation, proposals, patches, table, search
    )


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
