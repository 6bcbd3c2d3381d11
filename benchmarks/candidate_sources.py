"""Which candidate source gives the crops that flip? Sources side by side on the same photos.

For one experiment (seed and data as `patchfinder reproduce` uses them) this takes the
`--count` best crops of each way of ranking pool vectors one by one (`proposals.ranked_crops`,
one crop per image, other classes first): by their own pair attribution (the "samples"
source) and by transfer (their dot product with the pair direction on the screening photos),
each at several crop contexts (0.5 is the default: half a receptive field; 4.0 is the whole
photo), and the experiment's given patches as the reference. Every one is pasted at sizes 0.5
and 0.4 at the four corners on `--photos` screening photos (never the evaluation photos), and
the best rate (flipped at any setting) is summarised per set: top, mean of the top 10, median.

This measures candidates *before* screening, so it says which source to give the screening,
not what a run will report. About 10 min on two CPU cores for 6 x 40 + 10 patches on 25
photos (50,000 pasted images), after the activations (cached as `reproduce` caches them).
Usage:

    python benchmarks/candidate_sources.py train-patch --out results/candidate-sources/train-patch
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from patchfinder import discover
from patchfinder.activations import pair_direction
from patchfinder.evaluate import evaluate_patches
from patchfinder.experiments import check_data_root, experiment_inputs, load_experiment
from patchfinder.io import write_csv, write_json
from patchfinder.model import load_model
from patchfinder.paste import parse_placements
from patchfinder.proposals import ranked_crops, read_patches
from patchfinder.provenance import provenance

CONTEXTS = (0.5, 1.0, 4.0)
SIZES = (0.5, 0.4)


def measure(name: str, root: Path, model_name: str, *, count: int, photos: int) -> pd.DataFrame:
    """One row per patch: set (ranking and context, or "given"), name, source class, best
    rate on the screening photos."""
    experiment = load_experiment(name)
    model = load_model(model_name)
    pair, pool, images = experiment_inputs(experiment, root, model)
    seed, settings = experiment.seed, experiment.discovery
    samples, atlas = discover.pair_atlas(model, pool, pair, layer=settings.get("layer"), seed=seed)
    _, screening, _ = discover.split_screening(
        model, images, pair, screening_fraction=experiment.screening_fraction, seed=seed
    )
    direction = pair_direction(model, screening.images, pair, layer=atlas.layer)  # (D,)
    rankings = {
        "samples": samples.pair_attribution,
        "transfer": np.asarray(samples.vectors, np.float64) @ direction,
    }
    others = {"exclude_classes": [pair.src.index, pair.dst.index], "classes": model.classes}
    rows, patches = [], []
    for ranking, scores in rankings.items():
        for context in CONTEXTS:
            label = f"{ranking} x{context:g}"
            crops = ranked_crops(
                atlas, samples, scores, count=count, context=context,
                prefix=f"{ranking}{context:g}", **others,
            )  # fmt: skip
            rows += [(label, c.patch.name, c.source_class) for c in crops]
            patches += [c.patch for c in crops]
    given = read_patches(experiment.paths("patches", root))
    rows += [("given", p.name, "") for p in given]
    patches += given
    table = evaluate_patches(
        model, discover._subset(screening, photos, seed), patches, pair, sizes=SIZES,
        placement=parse_placements(experiment.placements), seed=seed,
    )  # fmt: skip
    flips = np.asarray(table.flips)  # (P, Z, L, n)
    best = flips.reshape(len(patches), -1, flips.shape[-1]).any(axis=1).mean(axis=1)
    frame = pd.DataFrame(rows, columns=["set", "patch", "source_class"])
    frame["best_rate"] = best
    frame["n"] = flips.shape[-1]
    return frame


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per set: patches, photos, top rate (and its patch), mean of the top 10, median."""

    def one(group: pd.DataFrame) -> pd.Series:
        rates = np.sort(group["best_rate"].to_numpy())[::-1]
        return pd.Series({
            "patches": len(rates),
            "n": int(group["n"].iloc[0]),
            "top": rates[0],
            "top_patch": group.loc[group["best_rate"].idxmax(), "patch"],
            "mean_top10": rates[:10].mean(),
            "median": float(np.median(rates)),
        })  # fmt: skip

    return frame.groupby("set", sort=False)[list(frame.columns)].apply(one).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=os.environ.get("PATCHFINDER_DATA"))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--count", type=int, default=40, help="crops per set")
    parser.add_argument("--photos", type=int, default=25, help="screening photos")
    args = parser.parse_args()
    start = time.perf_counter()
    root = check_data_root(load_experiment(args.experiment), args.data)
    frame = measure(args.experiment, root, args.model, count=args.count, photos=args.photos)
    summary = summarise(frame)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_csv(args.out / "patches.csv", frame)
    write_csv(args.out / "summary.csv", summary)
    write_json(args.out / "provenance.json", provenance(
        experiment=args.experiment, model=args.model, count=args.count, photos=args.photos,
        sizes=list(SIZES), contexts=list(CONTEXTS), placements="corners",
        seconds=round(time.perf_counter() - start, 1),
    ))  # fmt: skip


if __name__ == "__main__":
    main()
