"""Does successive halving find the best candidate there is? Screening against an oracle.

For one experiment (seed and data as `patchfinder reproduce` uses them) this builds the
candidates `discover.propose` would screen (every source, deduplicated), then pastes every
one at size 0.5 at the four corners on *all* screening photos and on the evaluation photos
(the oracle: what a candidate really does on photos nobody chose it on). From those counts
it replays halving's three rounds (`--schedule`, taken from the run's `screening.csv`:
candidates kept after each round on how many photos) under 50 seeded photo orders, and prints
the evaluation rate of what the halving keeps beside the oracle's best.

The pasting is the expensive part (about 30 min on two CPU cores for 240 candidates, 50
screening and 100 evaluation photos); it is cached in `--out`/measured.npz, so a re-run only
replays. Usage:

    python benchmarks/screening_oracle.py train-patch --out results/screening-oracle/train-patch
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from patchfinder import discover
from patchfinder.evaluate import evaluate_patches
from patchfinder.experiments import check_data_root, experiment_inputs, load_experiment
from patchfinder.io import atomic_write, write_csv, write_json
from patchfinder.model import load_model
from patchfinder.paste import parse_placements
from patchfinder.proposals import deduplicate
from patchfinder.provenance import provenance


def measure(name: str, root: Path, model_name: str) -> dict[str, np.ndarray]:
    """Flips (P, L, n) and rises of p(dst) of every candidate on the screening and
    evaluation photos, size 0.5, one row per candidate (P), corner (L) and photo (n)."""
    experiment = load_experiment(name)
    model = load_model(model_name)
    pair, pool, images = experiment_inputs(experiment, root, model)
    seed, settings = experiment.seed, experiment.discovery
    samples, atlas = discover.pair_atlas(model, pool, pair, seed=seed)
    _, screening, evaluation = discover.split_screening(
        model, images, pair, screening_fraction=experiment.screening_fraction,
        max_evaluation=experiment.max_evaluation, seed=seed,
    )  # fmt: skip
    placement = parse_placements(experiment.placements)
    optimized = discover.adversary(
        model, screening, pair, steps=int(settings.get("optimize_steps", 100)),
        sizes=experiment.sizes, seed=seed,
    )  # fmt: skip
    crops = deduplicate([
        crop
        for source in settings.get("sources", discover.DEFAULT_SOURCES)
        for crop in discover._candidates(
            model, atlas, samples, screening, pair, source, adversary=optimized,
            count=int(settings.get("aimed", 150)), sizes=experiment.sizes,
            placement=placement, seed=seed,
        )
    ])  # fmt: skip
    found: dict[str, np.ndarray] = {"sources": np.asarray([c.source for c in crops])}
    for part, photos in (("screening", screening), ("evaluation", evaluation)):
        table = evaluate_patches(
            model, photos, [c.patch for c in crops], pair, sizes=[0.5], placement=placement,
            seed=seed,
        )  # fmt: skip
        found[f"{part}_flips"] = np.asarray(table.flips)[:, 0]
        found[f"{part}_delta"] = np.asarray(table.delta_p)[:, 0]
    return found


def replay(found: dict[str, np.ndarray], schedule: list[tuple[int, int]], orders: int) -> dict:
    """Halving's rounds on the measured counts, ranked as `evaluate._ranked` does (images
    flipped, the best corner's rate, the rise of p(dst)): the evaluation best rate of the kept
    top one, the best and the median of the kept, averaged over `orders` photo orders."""
    flips, delta = found["screening_flips"], found["screening_delta"]
    truth = found["evaluation_flips"].any(axis=1).mean(axis=1)  # (P,)
    kept_stats = []
    for order_seed in range(orders):
        order = np.random.default_rng(order_seed).permutation(flips.shape[-1])
        field = np.arange(len(truth))
        for keep, photos in schedule:
            f, d = flips[field][..., order[:photos]], delta[field][..., order[:photos]]
            best, fixed, lift = f.any(1).mean(1), f.mean(2).max(1), d.mean(2).max(1)
            field = field[np.lexsort((-lift, -fixed, -best))[:keep]]
        rates = truth[field]
        kept_stats.append((rates[0], rates.max(), np.median(rates)))
    top, best, median = np.mean(kept_stats, axis=0)
    oracle = np.sort(truth)[::-1]
    return {
        "candidates": len(truth),
        "screening_photos": flips.shape[-1],
        "evaluation_photos": found["evaluation_flips"].shape[-1],
        "oracle_best": oracle[0],
        "oracle_median_of_top10": float(np.median(oracle[:10])),
        "halving_top1": top,
        "halving_best_of_kept": best,
        "halving_median_of_kept": median,
        **{f"mean_{s}": truth[found["sources"] == s].mean() for s in set(found["sources"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=os.environ.get("PATCHFINDER_DATA"))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--schedule", default="80:6,27:19,10:26",
                        help="keep:photos per round, as the run's screening.csv")  # fmt: skip
    parser.add_argument("--orders", type=int, default=50)
    args = parser.parse_args()
    cached = args.out / "measured.npz"
    start = time.perf_counter()
    if cached.exists():
        found = dict(np.load(cached))
    else:
        root = check_data_root(load_experiment(args.experiment), args.data)
        found = measure(args.experiment, root, args.model)
        with atomic_write(cached) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **found)
    schedule = [tuple(map(int, part.split(":"))) for part in args.schedule.split(",")]
    row = replay(found, schedule, args.orders)  # type: ignore[arg-type]
    frame = pd.DataFrame([row])
    print(frame.T.to_string(header=False, float_format=lambda v: f"{v:.3f}"))
    write_csv(args.out / "summary.csv", frame)
    write_json(args.out / "provenance.json", provenance(
        experiment=args.experiment, model=args.model, schedule=args.schedule,
        orders=args.orders, size=0.5, placements="corners",
        seconds=round(time.perf_counter() - start, 1),
    ))  # fmt: skip


if __name__ == "__main__":
    main()
