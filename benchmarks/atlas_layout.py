"""How long does the atlas layout take at the article's scale? 100k vectors, 2 cores, seeded.

Prints, measured in this one run: the one-off start-up (umap import, numba compile or
cache load, on a 5k warm-up), then the neighbour graph and the seeded 2-D UMAP on N
synthetic clustered vectors, their sum against the 2-minute target, and optionally the
1-D pair-view layout on the same graph and a same-seed rerun that must match bit for bit.
The machine's load average is printed too: other jobs on a shared box slow every number.
Usage:

    python benchmarks/atlas_layout.py [--n 100000] [--dims 192] [--pair-view] [--check-determinism]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from patchfinder.atlas import layout, neighbours

TARGET_S = 120.0


def clustered(n: int, dims: int, clusters: int, seed: int) -> np.ndarray:
    """float32 (n, dims) ReLU'd Gaussian clusters: non-negative and clumpy, like activations."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(clusters, dims))  # (clusters, dims)
    members = rng.integers(0, clusters, size=n)  # (n,)
    return np.maximum(centres[members] + rng.normal(size=(n, dims)), 0.0).astype(np.float32)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors")
    parser.add_argument("--dims", type=int, default=192, help="channels per vector")
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=2, help="neighbour-search threads")
    parser.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (default: its)")
    parser.add_argument("--pair-view", action="store_true", help="also time the 1-D layout")
    parser.add_argument("--check-determinism", action="store_true", help="rerun; compare")
    args = parser.parse_args()

    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start")
    vectors = clustered(args.n, args.dims, args.clusters, args.seed)
    warm = clustered(5000, args.dims, args.clusters, args.seed + 1)
    _, startup = timed(layout, warm, seed=args.seed, n_jobs=args.n_jobs)

    options = {"seed": args.seed, "n_jobs": args.n_jobs}
    knn, search = timed(neighbours, vectors, **options)
    xy, umap = timed(layout, vectors, knn=knn, n_epochs=args.n_epochs, **options)
    total = search + umap

    def row(label: str, value: str) -> None:
        print(f"{label + ':':<42}{value}")

    print(f"{args.n} vectors x {args.dims} dims, {args.clusters} clusters, seed {args.seed}")
    row("start-up (import + numba, 5k warm-up)", f"{startup:7.1f} s  (once per process)")
    row(f"neighbour graph (PCA 50, {args.n_jobs} threads)", f"{search:7.1f} s")
    row("2-D UMAP (seeded, single-threaded)", f"{umap:7.1f} s")
    verdict = "meets" if total < TARGET_S else "MISSES"
    row("layout total", f"{total:7.1f} s  {verdict} the 2-minute target")
    if args.pair_view:
        _, one_d = timed(layout, vectors, dims=1, knn=knn, n_epochs=args.n_epochs, **options)
        row("1-D pair-view UMAP (same graph)", f"{one_d:7.1f} s")
    if args.check_determinism:
        again, _ = timed(layout, vectors, n_epochs=args.n_epochs, **options)
        row("same seed, fresh graph: identical", str(np.array_equal(xy, again)))
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
