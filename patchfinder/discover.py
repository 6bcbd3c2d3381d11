"""The top-level recipes: each reads as one call per stage.

samples, atlas = pair_atlas(model, pool, pair)      # activations -> atlas
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from patchfinder.activations import collect
from patchfinder.atlas import Atlas, build_atlas
from patchfinder.data import ImageSet, LoadSummary
from patchfinder.model import Classifier
from patchfinder.types import ActivationSamples, ClassPair


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
    progress: Callable[[str, int, int], None] | None = None,
    summary: LoadSummary | None = None,
) -> tuple[ActivationSamples, Atlas]:
    """Sample attributed activations over `pool` and lay them out as a class-pair atlas.

    `progress(stage, done, total)` reports each stage (`activations`, then `layout`). The
    activations are cached (see `activations.collect`): a rerun with the same model, layer,
    pool, K and seed skips straight to the layout, and a killed run resumes.
    """
    report = progress or (lambda stage, done, total: None)
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        report("activations", done, len(pool))

    samples = collect(
        model,
        pool,
        pair,
        layer=model.resolve_layer(layer),
        samples_per_image=samples_per_image,
        seed=seed,
        cache=cache,
        progress=advance,
        summary=summary,
    )
    report("layout", 0, 1)
    atlas = build_atlas(samples, pair, n=grid, min_count=min_count, seed=seed)
    report("layout", 1, 1)
    return samples, atlas
