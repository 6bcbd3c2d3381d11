"""Flip statistics: which images a patch flips, at which size and place, with honest intervals.

The article's protocol, for a class pair src -> dst (snorkel -> scuba diver):

1. `split_images`: screening images (to pick patches and settings) apart from evaluation
   images (to report them), seeded and recorded for provenance.
2. `eligible`: only images of class src that the model classifies as src *before* patching
   count (n); anything else would credit the patch with the model's own errors.
3. `evaluate_patches`: paste every patch at every size and position onto the n images,
   batched and streamed, and keep per image whether the top-1 became dst (targeted flip),
   whether it left src (untargeted) and how much p(dst) rose.
4. `FlipTable.long()` (one row per patch x size x position) and `FlipTable.summary()` (the
   article's two numbers per patch, *best* and *fixed*), every rate with its n and a 95 %
   Wilson interval.

Criteria (`Flip`, `Untargeted`) are small values on model outputs that compose with `&` and
`|`, as in Foolbox. The tables are pure numpy and pandas: a `FlipTable` can be built from
arrays without a model.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from patchfinder.data import DEFAULT_CROP, ImageRecord, ImageSet, LoadSummary, iterate_batches
from patchfinder.labels import ImageClass
from patchfinder.model import Classifier
from patchfinder.paste import (
    DEFAULT_PLACEMENT,
    DEFAULT_SIZES,
    Placement,
    iterate_pasted,
    to_device,
)
from patchfinder.stats import wilson_interval
from patchfinder.types import ClassPair, Patch, Proposal

# --- criteria ----------------------------------------------------------------------------


def _index(value: int | ImageClass) -> int:
    return value.index if isinstance(value, ImageClass) else int(value)


class Criterion:
    """A yes/no decision per image on model outputs. Subclasses implement `decide` only.

    Called with logits or probabilities (B, K) (the top-1 is the same), returns bool (B,).
    Criteria compose: `a & b`, `a | b`.
    """

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        """bool (B,) for float outputs (B, K)."""
        raise NotImplementedError

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        outputs = np.asarray(outputs)
        if outputs.ndim != 2:
            raise ValueError(f"A criterion takes outputs (B, K); Received shape {outputs.shape}")
        return np.asarray(self.decide(outputs), dtype=bool)

    def __and__(self, other: Criterion) -> Criterion:
        return And(self, other)

    def __or__(self, other: Criterion) -> Criterion:
        return Or(self, other)


@dataclass(frozen=True)
class Flip(Criterion):
    """Targeted: the top-1 class is `dst` (the image was `src` before; see `eligible`)."""

    src: int
    dst: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _index(self.src))
        object.__setattr__(self, "dst", _index(self.dst))

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(axis=1) == self.dst


@dataclass(frozen=True)
class Untargeted(Criterion):
    """Untargeted: the top-1 class is no longer `src`."""

    src: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _index(self.src))

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(axis=1) != self.src


@dataclass(frozen=True)
class And(Criterion):
    """Both criteria hold."""

    first: Criterion
    second: Criterion

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return self.first(outputs) & self.second(outputs)


@dataclass(frozen=True)
class Or(Criterion):
    """Either criterion holds."""

    first: Criterion
    second: Criterion

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return self.first(outputs) | self.second(outputs)


# --- screening / evaluation split ----------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Two disjoint parts of an image set: screening (choose) and evaluation (report).

    Attributes:
        screening, evaluation: the parts, each in the order of the original set.
        seed: the seed that drew it; fraction: the screening share asked for.
    """

    screening: ImageSet
    evaluation: ImageSet
    seed: int
    fraction: float

    def to_dict(self) -> dict[str, object]:
        """The split for provenance: seed, fraction and the files of each part."""
        return {
            "seed": self.seed,
            "fraction": self.fraction,
            "screening": [str(path) for path in self.screening.paths],
            "evaluation": [str(path) for path in self.evaluation.paths],
        }


def split_images(images: ImageSet, *, screening_fraction: float = 0.5, seed: int) -> Split:
    """Split a set into screening and evaluation images, per class (stratified), seeded.

    Within each class (unlabelled images form one group), the images sorted by path are
    shuffled by `np.random.default_rng(seed)` and the first round(fraction * count) go to
    screening. The result depends only on the seed and the set's contents, not its order.
    """
    if not 0.0 <= screening_fraction <= 1.0:
        raise ValueError(f"screening_fraction must be in [0, 1]; Received: {screening_fraction!r}")
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for position, record in enumerate(images):
        groups.setdefault(-1 if record.label is None else record.label.index, []).append(position)
    screening: set[int] = set()
    for label in sorted(groups):
        members = sorted(groups[label], key=lambda i: str(images[i].path))
        take = int(np.floor(screening_fraction * len(members) + 0.5))
        order = rng.permutation(len(members))
        screening.update(members[i] for i in order[:take])
    first = [r for i, r in enumerate(images) if i in screening]
    second = [r for i, r in enumerate(images) if i not in screening]
    return Split(
        ImageSet(first, classes=images.classes),
        ImageSet(second, classes=images.classes),
        seed=seed,
        fraction=screening_fraction,
    )


# --- eligible images ---------------------------------------------------------------------


@dataclass(frozen=True)
class EligibleImages:
    """The n images a patch is tested on: class src, classified as src before patching.

    Attributes:
        images: float32 (n, S, S, 3) in 0..255, the decoded model inputs.
        records: their n records, in set order.
        clean_probs_dst: float32 (n,) p(dst) before patching (the baseline of delta p).
        n_candidates: the src images that decoded, before the rule (n <= n_candidates).
        skipped: (path, reason) for the src images that failed to decode.
    """

    images: np.ndarray
    records: list[ImageRecord]
    clean_probs_dst: np.ndarray
    n_candidates: int
    skipped: list[tuple[Path, str]]

    def __post_init__(self) -> None:
        count = len(self.images)
        if len(self.records) != count or len(self.clean_probs_dst) != count:
            raise ValueError(
                f"Need one record and one clean p(dst) per image ({count}); Received: "
                f"{len(self.records)} records, {len(self.clean_probs_dst)} probabilities"
            )

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: np.ndarray) -> EligibleImages:
        """The images at `indices` (int (m,)), in that order; the load counts stay."""
        return EligibleImages(
            images=self.images[indices],
            records=[self.records[i] for i in indices],
            clean_probs_dst=self.clean_probs_dst[indices],
            n_candidates=self.n_candidates,
            skipped=self.skipped,
        )


def eligible(
    model: Classifier,
    images: ImageSet,
    pair: ClassPair,
    *,
    batch_size: int = 32,
    crop_fraction: float = DEFAULT_CROP,
) -> EligibleImages:
    """The article's rule: keep the images labelled src whose clean top-1 is src.

    Images of other classes and unlabelled ones are left out first; the rest are decoded in
    batches (`data.iterate_batches`; undecodable files are skipped and listed) and classified.
    """
    candidates = [record for record in images if record.label == pair.src]
    summary = LoadSummary()
    size = model.input_size
    kept: list[np.ndarray] = []
    records: list[ImageRecord] = []
    clean: list[np.ndarray] = []
    for batch in iterate_batches(
        candidates, size=size, batch_size=batch_size, crop_fraction=crop_fraction, summary=summary
    ):
        probs = model.probabilities(batch.images).numpy()  # (B, K)
        keep = probs.argmax(axis=1) == pair.src.index
        kept.append(batch.images[keep])
        clean.append(probs[keep, pair.dst.index])
        records += [r for r, k in zip(batch.records, keep, strict=True) if k]
    return EligibleImages(
        images=np.concatenate(kept) if kept else np.zeros((0, size, size, 3), np.float32),
        records=records,
        clean_probs_dst=np.concatenate(clean).astype(np.float32)
        if clean
        else np.zeros(0, np.float32),
        n_candidates=summary.loaded,
        skipped=list(summary.skipped),
    )


# --- the flip table ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FlipTable:
    """Per-image outcomes of P patches x Z sizes x L positions on the same n images.

    Attributes:
        patches, kinds: (P,) patch names and kinds.
        sizes: (Z,) patch sizes, fractions of the image side.
        placements: (L,) position names (`top-left`, ...).
        flips: bool (P, Z, L, n) targeted flips (top-1 became dst).
        untargeted: bool (P, Z, L, n) the top-1 left src.
        delta_p: float (P, Z, L, n) p(dst) patched minus p(dst) clean.
        files: (n,) the images, for tracing (may be empty).
    """

    patches: tuple[str, ...]
    kinds: tuple[str, ...]
    sizes: tuple[float, ...]
    placements: tuple[str, ...]
    flips: np.ndarray
    untargeted: np.ndarray
    delta_p: np.ndarray
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = (len(self.patches), len(self.sizes), len(self.placements))
        for name in ("flips", "untargeted", "delta_p"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 4 or value.shape[:3] != shape:
                raise ValueError(
                    f"FlipTable.{name} must be (P, Z, L, n) = {shape} + (n,); "
                    f"Received: {value.shape}"
                )
            object.__setattr__(self, name, value)
        if len(self.kinds) != len(self.patches):
            raise ValueError(f"Need one kind per patch; Received: {len(self.kinds)} kinds")
        if self.untargeted.shape != self.flips.shape or self.delta_p.shape != self.flips.shape:
            raise ValueError("flips, untargeted and delta_p must have the same shape")
        if self.files and len(self.files) != self.n:
            raise ValueError(f"Need one file per image (n={self.n}); Received: {len(self.files)}")

    @property
    def n(self) -> int:
        """The number of eligible images every rate is over."""
        return int(self.flips.shape[-1])

    def long(self) -> pd.DataFrame:
        """One row per patch x size x placement.

        Columns: `patch, kind, size, placement, n, flips, flip_rate, ci_low, ci_high,
        untargeted_rate, mean_delta_p` (targeted flip rate with its Wilson 95 % interval).
        """
        shape = self.flips.shape[:3]
        counts = self.flips.sum(axis=-1)  # (P, Z, L)
        low, high = wilson_interval(counts, self.n)
        p, z, ell = (index.ravel() for index in np.indices(shape))
        with np.errstate(invalid="ignore", divide="ignore"):
            untargeted = self.untargeted.sum(axis=-1) / self.n
            delta = self.delta_p.sum(axis=-1, dtype=np.float64) / self.n
        return pd.DataFrame(
            {
                "patch": np.array(self.patches, dtype=object)[p],
                "kind": np.array(self.kinds, dtype=object)[p],
                "size": np.array(self.sizes, dtype=float)[z],
                "placement": np.array(self.placements, dtype=object)[ell],
                "n": self.n,
                "flips": counts.ravel(),
                "flip_rate": counts.ravel() / self.n if self.n else np.nan,
                "ci_low": np.broadcast_to(low, shape).ravel(),
                "ci_high": np.broadcast_to(high, shape).ravel(),
                "untargeted_rate": untargeted.ravel(),
                "mean_delta_p": delta.ravel(),
            }
        )

    def summary(self) -> pd.DataFrame:
        """The article's two numbers per patch, each with its Wilson 95 % interval.

        * best: the share of the n images flipped by *at least one* size and placement.
        * fixed: the rate of the single best (size, placement), applied to every image;
          `fixed_setting` names it (`0.4 top-left`; the first in table order on ties).

        Both pick their maximum on the same images they report, so they are optimistic,
        the more so for small n and many settings: choose the setting on screening images
        and report it on evaluation images (`split_images`) for an unbiased number.

        Columns: `patch, kind, n, best_rate, best_low, best_high, fixed_rate, fixed_low,
        fixed_high, fixed_setting`.
        """
        count = len(self.patches)
        best = self.flips.any(axis=(1, 2)).sum(axis=-1)  # (P,) images flipped somewhere
        settings = len(self.sizes) * len(self.placements)
        per_setting = self.flips.sum(axis=-1).reshape(count, settings)  # (P, Z * L)
        choice = per_setting.argmax(axis=1) if settings else np.zeros(count, int)
        fixed = per_setting.max(axis=1) if settings else np.zeros(count, int)
        labels = [f"{size:g} {place}" for size in self.sizes for place in self.placements]
        best_low, best_high = wilson_interval(best, self.n)
        fixed_low, fixed_high = wilson_interval(fixed, self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            best_rate, fixed_rate = best / self.n, fixed / self.n
        return pd.DataFrame(
            {
                "patch": list(self.patches),
                "kind": list(self.kinds),
                "n": self.n,
                "best_rate": best_rate,
                "best_low": np.broadcast_to(best_low, (count,)),
                "best_high": np.broadcast_to(best_high, (count,)),
                "fixed_rate": fixed_rate,
                "fixed_low": np.broadcast_to(fixed_low, (count,)),
                "fixed_high": np.broadcast_to(fixed_high, (count,)),
                "fixed_setting": [labels[c] if self.n and labels else "" for c in choice],
            }
        )


# --- the evaluation loop -----------------------------------------------------------------


def evaluate_patches(
    model: Classifier,
    eligible: EligibleImages,
    patches: Sequence[Patch],
    pair: ClassPair,
    *,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = DEFAULT_PLACEMENT,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> FlipTable:
    """Paste every patch at every size and position on the eligible images; count flips.

    Pasted images stream through `model.probabilities` `batch_size` at a time (see
    `paste.iterate_pasted`) and are dropped after their batch; only the per-image outcomes
    (P x Z x L x n booleans and floats) are kept. The positions are drawn once, from
    `np.random.default_rng(seed)`, before any patch is pasted: every patch is tested at the
    same positions (for random placements too), so patches compare fairly. The n images are
    copied to the device once (n x S x S x 3 float32) and every batch is pasted there.

    Args:
        model: the classifier; its `input_size` is the images' side S.
        eligible: the n images (`eligible`).
        patches: the P patches (unique names).
        pair: src -> dst; a targeted flip is top-1 == dst.
        sizes: Z patch sides as fractions of S.
        placement: where patches go (L positions per size).
        seed: seeds random placements.
        batch_size: the most pasted images per forward pass.
        progress: called after each batch with its number of pasted images.
    """
    names = [patch.name for patch in patches]
    if len(set(names)) != len(names):
        raise ValueError(f"Patch names must be unique; Received: {names}")
    if not sizes:
        raise ValueError("Need at least one patch size")
    size = model.input_size
    if eligible.images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"Eligible images must be (n, {size}, {size}, 3) for {model}; "
            f"Received: {eligible.images.shape}"
        )
    layouts = placement.layout(size, sizes, np.random.default_rng(seed))
    count = len(eligible)
    shape = (len(patches), len(sizes), len(layouts[0]), count)
    targeted, untargeted = np.zeros(shape, bool), np.zeros(shape, bool)
    delta = np.zeros(shape, np.float32)
    flat = (targeted.reshape(-1), untargeted.reshape(-1), delta.reshape(-1))  # views
    is_flip, is_moved = Flip(pair.src, pair.dst), Untargeted(pair.src)
    clean = np.asarray(eligible.clean_probs_dst, np.float32)
    if count:
        for batch in iterate_pasted(
            to_device(eligible.images),
            [patch.pixels for patch in patches],
            layouts=layouts,
            sizes=sizes,
            batch_size=batch_size,
        ):
            probs = model.probabilities(batch.images).numpy()  # (b, K)
            done = slice(batch.start, batch.start + len(probs))
            flat[0][done] = is_flip(probs)
            flat[1][done] = is_moved(probs)
            flat[2][done] = probs[:, pair.dst.index] - clean[batch.image_index]
            if progress is not None:
                progress(len(probs))
    return FlipTable(
        patches=tuple(names),
        kinds=tuple(patch.kind for patch in patches),
        sizes=tuple(float(s) for s in sizes),
        placements=tuple(p.name for p in layouts[0]),
        flips=targeted,
        untargeted=untargeted,
        delta_p=delta,
        files=tuple(str(record.path) for record in eligible.records),
    )


# --- screening proposals ---------------------------------------------------------------


def screen(
    model: Classifier,
    proposals: Sequence[Proposal],
    eligible_screening: EligibleImages,
    pair: ClassPair,
    *,
    top_k: int = 10,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = DEFAULT_PLACEMENT,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[Proposal]:
    """The `top_k` proposals that flip the most screening images, best first.

    Every proposal is pasted at every size and position on the screening images
    (`evaluate_patches`) and ranked by best rate (images flipped by at least one setting),
    then fixed rate (the single best setting), then the largest mean rise of p(dst) over the
    settings, then attribution, then input order: the same inputs give the same ranking.
    Screening images must not be the evaluation images: the chosen patches are then reported
    on images they were not chosen on.

    Args:
        model, pair: the classifier and the pair (a flip is top-1 == dst).
        proposals: the candidates (unique names), e.g. from `deduplicate`.
        eligible_screening: the screening images the model gets right (`eligible`).
        top_k: how many to keep.
        sizes, placement, seed, batch_size, progress: passed to `evaluate_patches`.
    Returns:
        Copies of the kept proposals with `screening_rate` (the best rate) and `screening_n`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; Received: top_k={top_k}")
    if not proposals:
        return []
    measured = evaluate_patches(
        model,
        eligible_screening,
        [proposal.patch for proposal in proposals],
        pair,
        sizes=sizes,
        placement=placement,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    return _ranked(proposals, measured)[:top_k]


def _ranked(proposals: Sequence[Proposal], measured: FlipTable) -> list[Proposal]:
    """The proposals best first by best rate, fixed rate, the largest mean rise of p(dst)
    over the settings, attribution, then input order; with their screening rate and n."""
    table = measured.summary()  # one row per proposal, in order
    best = np.nan_to_num(table["best_rate"].to_numpy(np.float64), nan=-1.0)  # n = 0: last
    fixed = np.nan_to_num(table["fixed_rate"].to_numpy(np.float64), nan=-1.0)
    # Few screening images flip, so whole-image rates tie often; the rise of p(dst) still
    # tells a patch that nearly flips them from one that does nothing.
    lift = measured.long().groupby("patch", sort=False)["mean_delta_p"].max()
    lift = np.nan_to_num(lift.reindex(table["patch"]).to_numpy(np.float64), nan=-1.0)
    attribution = np.asarray([p.attribution for p in proposals], dtype=np.float64)
    order = np.lexsort((np.arange(len(proposals)), -attribution, -lift, -fixed, -best))
    return [
        dataclasses.replace(
            proposals[i],
            screening_rate=float(table["best_rate"].iloc[i]),
            screening_n=int(table["n"].iloc[i]),
        )
        for i in order
    ]


# --- successive halving ----------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One round of successive halving.

    Attributes:
        candidates: how many proposals it measured (refined variants included).
        images: on how many screening images (the first of a seeded order).
        sizes: at which patch sizes (largest first), every position of the placement each.
        pasted: the pasted images it cost (forward passes): candidates x images x settings.
        kept: how many it passed on (the last round: how many it returned).
    """

    candidates: int
    images: int
    sizes: tuple[float, ...]
    pasted: int
    kept: int


@dataclass(frozen=True)
class Screening:
    """What `successive_halving` kept, and what each round cost.

    Attributes:
        kept: the kept proposals, best first, each with the rate and n of its last round.
        rounds: the rounds, in order.
        candidates: how many candidates each source gave ({source: count}, first round).
        budget: the pasted images the screening was allowed (0: unbudgeted).
        exhaustive: what screening every candidate at every setting on the images the budget
            was set for would have cost (0: not computed).
    """

    kept: list[Proposal]
    rounds: list[Round]
    candidates: dict[str, int] = dataclasses.field(default_factory=dict)
    budget: int = 0
    exhaustive: int = 0

    def table(self) -> pd.DataFrame:
        """One row per round: round, candidates, images, sizes, pasted, kept."""
        rows = [
            {"round": number, **dataclasses.asdict(r), "sizes": " ".join(map(str, r.sizes))}
            for number, r in enumerate(self.rounds, start=1)
        ]
        columns = ["round", "candidates", "images", "sizes", "pasted", "kept"]
        return pd.DataFrame(rows, columns=columns)

    def describe(self) -> str:
        """One sentence for a report: candidates per source, rounds and cost."""
        if not self.rounds:
            return ""
        sources = ", ".join(f"{count} {source}" for source, count in self.candidates.items())
        kept = " -> ".join(str(r.candidates) for r in self.rounds)
        text = (
            f"Screening: {sum(self.candidates.values())} candidates ({sources}); "
            f"{len(self.rounds)} round(s) measured {kept} candidates (refined variants "
            f"included) and kept {self.rounds[-1].kept}, at {self.pasted:,} pasted images"
        )
        if self.budget:
            text += f" of a budget of {self.budget:,}"
        if self.exhaustive:
            text += (
                f"; screening every candidate at every setting would have cost "
                f"{self.exhaustive:,} ({self.exhaustive / max(self.pasted, 1):.1f}x)"
            )
        return text + "."

    @property
    def pasted(self) -> int:
        """The screening's whole cost in pasted images (forward passes)."""
        return sum(r.pasted for r in self.rounds)


def exhaustive_cost(candidates: int, images: int, sizes: int, positions: int) -> int:
    """Pasted images of `screen`: every candidate at every setting on every image."""
    return candidates * images * sizes * positions


def halving_schedule(
    candidates: int,
    *,
    keep: int,
    images: int,
    sizes: int,
    positions: int,
    budget: int,
    eta: int = 3,
    extra_last: int = 0,
) -> list[tuple[int, int, int]]:
    """(candidates, images, sizes) of each round, from counts alone (pure arithmetic).

    Round r measures n_r candidates, n_0 = `candidates`, n_(r+1) = max(keep, ceil(n_r / eta)),
    until n_r <= keep; the last round also measures `extra_last` refined variants. Every round
    gets the same share of `budget` (pasted images), so a candidate's share grows as the field
    narrows: it is spent on more images first (the rates are over images), then on more sizes
    (largest first), never more than all of either. A round always measures each candidate on
    at least one image at one size, which may exceed a budget too small for that.
    """
    if keep < 1 or eta < 2 or min(candidates, images, sizes, positions) < 1:
        raise ValueError(
            "Need keep >= 1, eta >= 2 and at least one candidate, image, size and position; "
            f"Received: keep={keep}, eta={eta}, candidates={candidates}, images={images}, "
            f"sizes={sizes}, positions={positions}"
        )
    counts = [candidates]
    while counts[-1] > keep:
        counts.append(max(keep, -(-counts[-1] // eta)))
    measured = counts[:-1] or counts
    measured = [*measured[:-1], measured[-1] + extra_last]
    share = budget / len(measured)
    schedule = []
    for count in measured:
        each = share / count  # pasted images per candidate
        z = int(np.clip(each // (images * positions), 1, sizes))
        i = int(np.clip(each // (z * positions), 1, images))
        schedule.append((count, i, z))
    return schedule


def successive_halving(
    model: Classifier,
    proposals: Sequence[Proposal],
    eligible_screening: EligibleImages,
    pair: ClassPair,
    *,
    top_k: int = 10,
    budget: int,
    eta: int = 3,
    refine: Callable[[list[Proposal]], list[Proposal]] | None = None,
    refine_count: int = 0,
    sizes: Sequence[float] = DEFAULT_SIZES,
    placement: Placement = DEFAULT_PLACEMENT,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Screening:
    """Screen many proposals within `budget` pasted images: all of them on a few images and
    sizes, then the best 1/eta on more, down to `top_k` (Jamieson and Talwalkar 2016).

    Each round ranks as `screen` does (images flipped, the best single setting, then the
    rise of p(dst), which still ranks candidates when a few images flip none) on the first
    images of one seeded order of `eligible_screening` and the largest sizes, every position
    of `placement` (`halving_schedule` says how many). With `refine`, the last round also
    measures `refine(survivors)` (given best first): variants, other crops of the same photos,
    whose `parent` names the proposal they came from; `refine_count` is how many variants it
    returns, so that the schedule budgets for them. Of each family (a proposal and its
    variants) only the best is kept.

    Returns:
        A `Screening`: the kept proposals (`screening_rate` and `screening_n` from the last
        round they were measured in) and the cost of every round.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; Received: top_k={top_k}")
    sources = dict(Counter(p.source for p in proposals))
    if not proposals or len(eligible_screening) == 0:
        return Screening(kept=[], rounds=[], candidates=sources, budget=budget)
    order = np.random.default_rng(seed).permutation(len(eligible_screening))
    by_size = sorted(sizes, reverse=True)
    positions = len(placement.layout(model.input_size, sizes, np.random.default_rng(seed))[0])
    schedule = halving_schedule(
        len(proposals), keep=top_k, images=len(eligible_screening), sizes=len(sizes),
        positions=positions, budget=budget, eta=eta, extra_last=refine_count if refine else 0,
    )  # fmt: skip
    field, rounds = list(proposals), []
    for number, (_, images, z) in enumerate(schedule):
        last = number == len(schedule) - 1
        if last and refine is not None:
            field = field + refine(field)  # variants of the best survivors compete with them
        subset = eligible_screening.take(np.sort(order[:images]))
        measured = evaluate_patches(
            model, subset, [p.patch for p in field], pair, sizes=by_size[:z],
            placement=placement, seed=seed, batch_size=batch_size, progress=progress,
        )  # fmt: skip
        ranked = _ranked(field, measured)
        if last:
            ranked = _best_of_families(ranked)
        keep = top_k if last else max(top_k, -(-len(field) // eta))
        field = ranked[:keep]
        measured_count = len(measured.patches)
        pasted = exhaustive_cost(measured_count, images, z, positions)
        rounds.append(Round(measured_count, images, tuple(by_size[:z]), pasted, len(field)))
    return Screening(kept=field, rounds=rounds, candidates=sources, budget=budget)


def _best_of_families(ranked: Sequence[Proposal]) -> list[Proposal]:
    """The first (best) of each family: a proposal and the variants whose `parent` it is."""
    seen: set[str] = set()
    kept = []
    for proposal in ranked:
        family = proposal.parent or proposal.patch.name
        if family not in seen:
            seen.add(family)
            kept.append(proposal)
    return kept
