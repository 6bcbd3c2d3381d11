"""Activation Atlas math: layout, grid cells and the class-pair view (Carter et al., 2019).

Pure numpy plus umap-learn; no TensorFlow. The recipe, as `build_atlas` runs it:

    knn = neighbours(vectors)                  # (N, k) indices, distances: one graph, two views
    xy = layout(vectors, knn=knn)              # (N, 2) in [0, 1]: 2-D UMAP, robustly rescaled
    cells = build_cells(samples, xy, n=20)     # occupied grid cells with >= min_count vectors
    pair_xy = pair_view(samples, knn=knn)      # (N, 2): x = pair attribution, y = 1-D UMAP

Determinism: every random choice is driven by `seed` (UMAP's `random_state` and the
nearest-neighbour search's), never by global state. The output is a function of the data,
`seed` and `n_jobs` (the neighbour search partitions its work by thread count), not of the
machine's core count. UMAP's own optimisation runs single-threaded whenever it is seeded; that
is the price of reproducible atlases, and `benchmarks/atlas_layout.py` measures it.

umap-learn is imported on first use (see `_umap`), so importing this module is cheap.
`save_atlas` / `load_atlas` keep an atlas in one `.npz` beside the run's other outputs.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from patchfinder.io import atomic_write
from patchfinder.labels import ClassList
from patchfinder.types import ActivationSamples, Cell, ClassPair

#: Below this many vectors the neighbour graph is computed exactly (umap-learn's own cut-off).
EXACT_NEIGHBOURS_BELOW = 4096


# ----------------------------------------------------------------------------- umap-learn


def _numba() -> ModuleType:
    """numba, compiling for a generic CPU of this architecture unless `NUMBA_CPU_NAME` says
    otherwise (read once, when numba is first imported).

    numba compiles UMAP and pynndescent for the CPU it runs on by default, and the layout
    amplifies the last-bit differences between instruction sets: the same vectors gave
    another atlas on an AVX-512 machine than with generic code. Generic code takes the
    instruction set out, at some speed; it does not make layouts equal across CPU vendors
    (an AMD EPYC and an Intel Xeon still gave different atlases: other last bits remain).
    """
    os.environ.setdefault("NUMBA_CPU_NAME", "generic")
    import numba

    return numba


@functools.cache
def _umap() -> ModuleType:
    """`umap.umap_`, imported without TensorFlow and with numba's on-disk cache switched on.

    * `umap/__init__` imports `parametric_umap` (and so TensorFlow, ~10 s) only to re-export
      `ParametricUMAP`, which the atlas never uses. A `None` entry in `sys.modules` makes that
      one import fail fast, umap catches the ImportError and defines a stub; the entry is
      removed again, so `import umap.parametric_umap` still works for anyone who wants it.
    * umap-learn and pynndescent compile ~250 numba functions on first use (20-90 s in every
      new process on 2 cores), and most do not ask numba to cache them. Caching them on disk
      makes that a one-off cost per installation. Functions numba cannot cache (closures over
      dynamic globals) just keep compiling per process.
    """
    _numba()  # first: it sets the CPU numba compiles for
    blocking = "umap" not in sys.modules and "umap.parametric_umap" not in sys.modules
    if blocking:
        sys.modules["umap.parametric_umap"] = None  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap's "Tensorflow not installed" ImportWarning
            import umap.umap_ as umap_
    finally:
        if blocking and sys.modules.get("umap.parametric_umap", 0) is None:
            del sys.modules["umap.parametric_umap"]
    _enable_numba_cache(("umap", "pynndescent"))
    return umap_


def _enable_numba_cache(packages: tuple[str, ...]) -> None:
    """Turn on numba's disk cache for every jitted function at module level in `packages`."""
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                try:
                    value.enable_caching()
                except RuntimeError:  # no writable cache location: compile per process
                    return


@functools.cache
def _quiet_filters() -> tuple[tuple[str, type[Warning]], ...]:
    """(message regex, category) of the library warnings `_quietly` hides: all are expected."""
    from numba.core.errors import NumbaWarning

    return (
        # numba cannot disk-cache a few pynndescent functions; it says so on every compile
        # (the message starts with terminal colour codes, hence the leading `.*`).
        (r".*Cannot cache compiled function", NumbaWarning),
        # We pass the neighbour graph without pynndescent's index: we never `transform`.
        (r"precomputed_knn\[2\]", UserWarning),
        # A tiny or clustered graph can have more components than UMAP likes; it copes.
        (r"Graph is not fully connected", UserWarning),
    )


def _quietly(function, *args, **kwargs):
    """Call `function` with the expected library warnings in `_quiet_filters` silenced."""
    with warnings.catch_warnings():
        for message, category in _quiet_filters():
            warnings.filterwarnings("ignore", message=message, category=category)
        return function(*args, **kwargs)


# ----------------------------------------------------------------------------- layout


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    """(N, D) finite float array, N >= 1, or ValueError naming what was received."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0 or vectors.shape[1] == 0:
        raise ValueError(f"Need a non-empty (N, D) array of vectors; Received: {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        bad = int(np.sum(~np.isfinite(vectors)))
        raise ValueError(f"Vectors must be finite; Received: {bad} NaN or infinite values")
    return vectors


def _principal_components(x: np.ndarray, dims: int) -> np.ndarray:
    """(N, D) -> (N, dims) coordinates on the top principal axes, zero-padded if D < dims.

    Eigen-decomposition of the D x D covariance (one GEMM over N) is much cheaper than an SVD
    of the N x D data when N >> D. Each axis's sign is fixed (largest loading positive), so
    axes do not flip between LAPACK builds.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    axes = eigenvectors[:, ::-1][:, :dims]  # (D, <=dims), strongest first
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    projected = centred @ (axes * np.where(signs == 0, 1.0, signs))  # (N, <=dims)
    return np.pad(projected, ((0, 0), (0, dims - projected.shape[1])))


def _search_space(vectors: np.ndarray, metric: str, pca_dims: int) -> tuple[np.ndarray, str]:
    """The float32 space the neighbour search runs in, and its metric.

    Cosine: rows are L2-normalised, so the euclidean distance d between them gives the cosine
    distance exactly as d^2 / 2; PCA on the unit vectors then keeps those distances up to the
    variance it drops. All-zero rows (cosine is undefined for them) stay at the origin.
    Euclidean: PCA directly. Other metrics: the raw vectors, unreduced.
    """
    x = vectors.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)  # unit rows; zero rows stay zero
    elif metric != "euclidean":
        return vectors.astype(np.float32), metric
    if pca_dims and x.shape[1] > pca_dims:
        x = _principal_components(x, pca_dims)  # centring does not change euclidean distances
    return x.astype(np.float32), "euclidean"


def neighbours(
    vectors: np.ndarray,
    *,
    n_neighbors: int = 15,
    metric: str = "cosine",
    pca_dims: int = 50,
    seed: int = 0,
    n_jobs: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """The k-nearest-neighbour graph UMAP builds on, each vector first in its own row.

    Below `EXACT_NEIGHBOURS_BELOW` vectors it is exact (numpy); above, approximate
    (pynndescent, seeded, on `n_jobs` threads). For "cosine" and "euclidean" the search runs
    on the top `pca_dims` principal components (0: no reduction), which makes it ~2x faster
    at D = 192 and changes only near-tied neighbours.

    Args:
        vectors: (N, D) activations.
        n_neighbors: k, capped at N.
        metric: "cosine", "euclidean", or any other metric pynndescent (large N) and
            scikit-learn (small N) both know, which then runs unreduced.
        pca_dims: principal components the search runs on; 0 or >= D: all of D.
        seed: seeds the approximate search.
        n_jobs: threads of the approximate search. Its result depends on this number (work
            is split by thread), so it is fixed, not "all cores".
    Returns:
        (indices, distances): int32 (N, k) and float32 (N, k), nearest first, distances in
        `metric`.
    """
    vectors = _check_vectors(vectors)
    count, k = len(vectors), min(n_neighbors, len(vectors))
    space, space_metric = _search_space(vectors, metric, pca_dims)
    if count < EXACT_NEIGHBOURS_BELOW:
        if space_metric == "euclidean":
            sq = np.einsum("ij,ij->i", space, space, dtype=np.float64)  # (N,) squared norms
            d2 = sq[:, None] + sq[None, :] - 2.0 * (space.astype(np.float64) @ space.T)
            distances = np.sqrt(np.maximum(d2, 0.0))  # (N, N); max() absorbs rounding
        else:
            from sklearn.metrics import pairwise_distances

            distances = pairwise_distances(space, metric=space_metric)  # (N, N)
        np.fill_diagonal(distances, -1.0)  # each vector ranks itself first, even among twins
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]  # (N, k), unordered
        near = np.take_along_axis(distances, nearest, axis=1)
        order = np.lexsort((nearest, near), axis=1)  # by distance, ties by index
        indices = np.take_along_axis(nearest, order, axis=1)
        dist = np.maximum(np.take_along_axis(near, order, axis=1), 0.0)  # self back to 0
    else:
        numba = _numba()
        if not 1 <= n_jobs <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"n_jobs must be 1..{numba.config.NUMBA_NUM_THREADS} (numba's thread limit); "
                f"results depend on it, so pick one and keep it; Received: n_jobs={n_jobs}"
            )
        indices, dist, _ = _quietly(
            _umap().nearest_neighbors,
            space,
            k,
            space_metric,
            {},
            False,  # angular rp-trees: only for angular metrics, and ours is euclidean
            np.random.RandomState(seed),
            low_memory=True,
            n_jobs=n_jobs,
        )
    if metric == "cosine":
        dist = dist**2 / 2.0  # euclidean between unit vectors -> cosine distance
    return indices.astype(np.int32), dist.astype(np.float32)


def normalize_layout(
    points: np.ndarray, *, low: float = 1.0, high: float = 99.0, margin: float = 0.1
) -> np.ndarray:
    """(N, d) -> (N, d) float64 in [0, 1] per axis, robust to outliers (Lucid's recipe).

    Each axis is clipped to its [low, high] percentiles widened by `margin` of that range,
    then rescaled to [0, 1], so a few stray points cannot squash the rest into one cell.
    An axis with no spread maps to 0.5.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = np.percentile(points, [low, high], axis=0)  # (d,) each
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)  # keep a rim for the outliers
    clipped = np.clip(points, lo, hi)
    span = clipped.max(axis=0) - clipped.min(axis=0)  # (d,)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (clipped - clipped.min(axis=0)) / span
    return np.where(span > 0, scaled, 0.5)


def layout(
    vectors: np.ndarray,
    *,
    dims: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
    n_epochs: int | None = None,
    pca_dims: int = 50,
    n_jobs: int = 2,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """UMAP of the vectors, normalised to [0, 1] per axis with `normalize_layout`.

    Deterministic for given data, `seed` and `n_jobs`. Fewer than `n_neighbors + 2` vectors
    are too few for a UMAP graph: they are laid out by PCA instead (their top `dims`
    principal components, of unit rows for "cosine"), normalised the same way.

    Args:
        vectors: (N, D) activations, N >= 1.
        dims: output dimensions (2 for the atlas, 1 for the pair view's y axis).
        n_neighbors, min_dist, metric: UMAP's; 15 / 0.1 / "cosine" are umap-learn's
            defaults bar the metric, and cosine is what the article used on activations.
        seed: UMAP's `random_state` and the neighbour search's seed.
        n_epochs: UMAP's optimisation epochs; None: umap-learn's default (200 above 10k
            vectors, 500 below).
        pca_dims, n_jobs: passed to `neighbours` when `knn` is not given.
        knn: a precomputed `neighbours(vectors, ...)` graph with >= n_neighbors columns, to
            share one graph between several layouts.
    Returns:
        float64 (N, dims) in [0, 1].
    Raises:
        ValueError: empty or non-finite vectors, or a `knn` that does not fit them.
    """
    vectors = _check_vectors(vectors)
    if dims < 1:
        raise ValueError(f"dims must be >= 1; Received: dims={dims}")
    count = len(vectors)
    if count < n_neighbors + 2:  # too few for a k-NN graph: PCA keeps tiny inputs working
        space, _ = _search_space(vectors, metric, pca_dims=0)  # unit rows for cosine
        return normalize_layout(_principal_components(space, dims))
    if knn is None:
        knn = neighbours(
            vectors,
            n_neighbors=n_neighbors,
            metric=metric,
            pca_dims=pca_dims,
            seed=seed,
            n_jobs=n_jobs,
        )
    indices, distances = knn
    if indices.shape != distances.shape or indices.shape[0] != count:
        raise ValueError(
            f"knn must be two ({count}, k) arrays; Received: {indices.shape}, {distances.shape}"
        )
    if indices.shape[1] < n_neighbors:
        raise ValueError(
            f"knn has fewer columns than n_neighbors={n_neighbors}; Received: {indices.shape}"
        )
    # UMAP reads `space` only to place disconnected components relative to each other.
    space, space_metric = _search_space(vectors, metric, pca_dims)
    model = _umap().UMAP(
        n_components=dims,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=space_metric,
        n_epochs=n_epochs,
        random_state=seed,
        n_jobs=1,  # seeded UMAP is single-threaded anyway; saying so avoids its warning
        precomputed_knn=(indices[:, :n_neighbors], distances[:, :n_neighbors], None),
    )
    embedding = _quietly(model.fit_transform, space)  # (N, dims)
    return normalize_layout(embedding)


# ----------------------------------------------------------------------------- grid and cells


def grid_cells(xy: np.ndarray, *, n: int) -> np.ndarray:
    """(N, 2) points in [0, 1] -> int64 (N, 2) cell (x, y) in 0..n-1 of an n x n grid.

    Cell i covers [i/n, (i+1)/n); 1.0 falls in the last cell.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if n < 1:
        raise ValueError(f"Grid size must be >= 1; Received: n={n}")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"Need (N, 2) points; Received: {xy.shape}")
    if not np.all((xy >= 0.0) & (xy <= 1.0)):  # also rejects NaN
        raise ValueError(f"Points must lie in [0, 1]; Received: min {xy.min()}, max {xy.max()}")
    return np.minimum(np.floor(xy * n), n - 1).astype(np.int64)  # 1.0 * n -> cell n-1


def _top_classes(
    class_ids: np.ndarray, class_attribution: np.ndarray, *, top: int
) -> tuple[tuple[int, float], ...]:
    """Sum attribution per class id over (M, R) rows; the `top` positive totals, best first."""
    ids, weights = class_ids.ravel(), class_attribution.ravel().astype(np.float64)
    keep = ids >= 0  # -1 pads rows whose image predicted fewer classes
    classes, slot = np.unique(ids[keep], return_inverse=True)
    totals = np.bincount(slot, weights=weights[keep], minlength=len(classes))  # (C,)
    order = np.lexsort((classes, -totals))[:top]  # strongest first, ties by class id
    return tuple((int(classes[i]), float(totals[i])) for i in order if totals[i] > 0)


def _closest_to_mean(vectors: np.ndarray, mean: np.ndarray) -> int:
    """Row of (M, D) `vectors` with the highest cosine similarity to (D,) `mean`."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(mean)  # (M,)
    similarity = (vectors @ mean) / np.where(norms > 0, norms, 1.0)  # zero rows score 0
    return int(np.argmax(similarity))  # first of equals: the lowest sample index


def build_cells(
    samples: ActivationSamples, xy: np.ndarray, *, n: int, min_count: int = 3, top: int = 5
) -> list[Cell]:
    """Bin the samples' layout into an n x n grid and summarise each well-occupied cell.

    A cell is kept when it holds >= `min_count` vectors: fewer make a noisy mean, and the
    article dropped such cells too. Per kept cell: its members (ascending sample indices),
    mean activation, mean pair attribution, the `top` classes by summed `class_attribution`
    (positive totals only, strongest first) and the exemplar, the member whose vector is
    closest in cosine to the mean.

    Args:
        samples: N activation samples.
        xy: (N, 2) layout in [0, 1], e.g. from `layout`.
        n: grid side.
    Returns:
        The kept cells, sorted by (y, x).
    """
    xy = np.asarray(xy)
    if len(xy) != len(samples):
        raise ValueError(f"Need one point per sample ({len(samples)}); Received: {xy.shape}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1; Received: min_count={min_count}")
    grid = grid_cells(xy, n=n)  # (N, 2) (x, y)
    key = grid[:, 1] * n + grid[:, 0]  # row-major cell id: sorting it sorts by (y, x)
    order = np.argsort(key, kind="stable")  # members of a cell become contiguous, ascending
    cell_ids, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    cells = []
    for cell_id, start, count in zip(cell_ids, starts, counts, strict=True):
        if count < min_count:
            continue
        members = order[start : start + count]  # (count,)
        vectors = samples.vectors[members].astype(np.float64)  # (count, D)
        mean = vectors.mean(axis=0)  # (D,)
        cells.append(
            Cell(
                x=int(cell_id % n),
                y=int(cell_id // n),
                members=members,
                mean_activation=mean.astype(np.float32),
                attribution=float(np.mean(samples.pair_attribution[members], dtype=np.float64)),
                top_classes=_top_classes(
                    samples.class_ids[members], samples.class_attribution[members], top=top
                ),
                exemplar=int(members[_closest_to_mean(vectors, mean)]),
            )
        )
    return cells


def rank_cells(cells: list[Cell]) -> list[Cell]:
    """The cells most favouring the pair's dst first: by mean attribution, then by count."""
    return sorted(cells, key=lambda cell: (-cell.attribution, -cell.count))


# ----------------------------------------------------------------------------- class-pair view


def pair_view(
    samples: ActivationSamples,
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    percentile: float = 99.0,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The article's class-pair view: x = pair attribution, y = a 1-D layout of the vectors.

    x = pair attribution (dst minus src) divided by the `percentile` of |attribution| and
    clipped to [-1, 1], then mapped to [0, 1] as (x + 1) / 2: 0.5 is neutral, right favours
    dst. A percentile, not the maximum, so one extreme vector does not flatten the rest.
    y = `layout(vectors, dims=1, ...)`, so similar vectors sit at similar heights.

    Args:
        samples: N activation samples.
        seed, n_neighbors, min_dist, knn: passed to `layout` (cosine metric).
        percentile: the percentile of |attribution| that maps to the edges.
    Returns:
        float64 (N, 2) in [0, 1].
    """
    attribution = np.asarray(samples.pair_attribution, dtype=np.float64)  # (N,)
    scale = np.percentile(np.abs(attribution), percentile) if len(attribution) else 0.0
    # All-zero attribution favours neither class: everything sits at the neutral 0.5.
    x = np.clip(attribution / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(attribution)
    y = layout(
        samples.vectors,
        dims=1,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        seed=seed,
        knn=knn,
    )[:, 0]
    return np.stack([(x + 1.0) / 2.0, y], axis=1)


# ----------------------------------------------------------------------------- the atlas


@dataclass
class Atlas:
    """A class-pair activation atlas at one layer.

    Attributes:
        pair: the class pair; attributions are dst minus src.
        layer: the layer the vectors come from.
        xy: float (N, 2) 2-D layout of the samples in [0, 1].
        n: grid side; `cells` index an n x n grid over `xy`.
        cells: the kept cells, sorted by (y, x) (`rank_cells` orders them by attribution).
        pair_xy: float (N, 2) class-pair view in [0, 1] (see `pair_view`).
    """

    pair: ClassPair
    layer: str
    xy: np.ndarray
    n: int
    cells: list[Cell]
    pair_xy: np.ndarray


def build_atlas(
    samples: ActivationSamples,
    pair: ClassPair,
    *,
    n: int = 20,
    min_count: int = 3,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> Atlas:
    """Lay out the samples, bin them into cells, and add the class-pair view.

    Defaults: a 20 x 20 grid, the coarse end of the article's 20..40, since a class-pair
    pool (~100k vectors) is smaller than the article's 1M; that leaves a few hundred vectors
    per occupied cell, and cells with fewer than 3 are dropped as noise. UMAP keeps its
    default n_neighbors=15 and min_dist=0.1 with the cosine metric.
    """
    if len(samples) == 0:
        raise ValueError("Cannot build an atlas from no samples; Received: 0 vectors")
    # One neighbour graph serves both layouts: the search is the costly part of each.
    knn = neighbours(samples.vectors, n_neighbors=n_neighbors, seed=seed)
    xy = layout(samples.vectors, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed, knn=knn)
    cells = build_cells(samples, xy, n=n, min_count=min_count)
    pair_xy = pair_view(samples, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, knn=knn)
    return Atlas(pair=pair, layer=samples.layer, xy=xy, n=n, cells=cells, pair_xy=pair_xy)


def image_classes(
    cell: Cell, samples: ActivationSamples, *, top: int = 3
) -> list[tuple[int, float]]:
    """The model's top-1 classes of the images a cell's vectors come from, with their share
    of the members, most common first. Unlike `Cell.top_classes` (what the vectors
    themselves support) this is context: a cell of background texture that supports none of
    its images' classes still says which images it was found in."""
    values, counts = np.unique(samples.prediction[cell.members], return_counts=True)
    order = np.lexsort((values, -counts))[:top]  # most common first, ties by class id
    return [(int(values[i]), float(counts[i] / cell.count)) for i in order]


def cells_table(atlas: Atlas, samples: ActivationSamples, classes: ClassList) -> list[dict]:
    """Rows for `cells.csv`, the most dst-favouring cell first.

    Columns: rank (1 = most dst-favouring), cell_x, cell_y, count, attribution (mean, dst
    minus src), top_classes ("name (score); name (score)"), image_classes (the member
    images' predictions, "name (share)"), exemplar (sample index),
    exemplar_file, exemplar_box ("x0 y0 x1 y1" in model-input pixels).

    Args:
        atlas: the atlas.
        samples: the samples it was built from (for the exemplars' files and boxes).
        classes: names for the class ids.
    """
    if len(atlas.xy) != len(samples):
        raise ValueError(
            f"samples must be the atlas's own ({len(atlas.xy)} vectors); "
            f"Received: {len(samples)} samples"
        )
    rows = []
    for rank, cell in enumerate(rank_cells(atlas.cells), start=1):
        exemplar = cell.exemplar
        rows.append(
            {
                "rank": rank,
                "cell_x": cell.x,
                "cell_y": cell.y,
                "count": cell.count,
                "attribution": cell.attribution,
                "top_classes": "; ".join(
                    f"{classes[index].name} ({score:.3g})" for index, score in cell.top_classes
                ),
                "image_classes": "; ".join(
                    f"{classes[index].name} ({share:.0%})"
                    for index, share in image_classes(cell, samples)
                ),
                "exemplar": exemplar,
                "exemplar_file": samples.files[int(samples.image[exemplar])],
                "exemplar_box": " ".join(str(int(v)) for v in samples.box[exemplar]),
            }
        )
    return rows


# ----------------------------------------------------------------------------- atlas files


def save_atlas(atlas: Atlas, path: str | Path) -> Path:
    """Write the atlas (pair, layout, grid and its cells) to one `.npz`, atomically.

    Cells are stored flat: members concatenated in cell order, split again by `cell_count`;
    `top_classes` padded to (C, T, 2) with class id -1.
    """
    cells = atlas.cells
    top = max((len(cell.top_classes) for cell in cells), default=0)
    top_classes = np.full((len(cells), top, 2), -1.0)  # (C, T, [class id, score])
    for row, cell in enumerate(cells):
        top_classes[row, : len(cell.top_classes)] = np.reshape(cell.top_classes, (-1, 2))
    dims = len(cells[0].mean_activation) if cells else 0
    members = [cell.members for cell in cells]
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            pair=np.array([atlas.pair.src.index, atlas.pair.dst.index], np.int64),
            pair_names=np.array([atlas.pair.src.name, atlas.pair.dst.name], dtype=str),
            layer=np.array(atlas.layer),
            n=np.array(atlas.n, np.int64),
            xy=np.asarray(atlas.xy, np.float64),
            pair_xy=np.asarray(atlas.pair_xy, np.float64),
            cell_xy=np.array([(c.x, c.y) for c in cells], np.int64).reshape(-1, 2),
            cell_count=np.array([c.count for c in cells], np.int64),
            members=np.concatenate(members).astype(np.int64) if cells else np.zeros(0, np.int64),
            mean_activation=np.array([c.mean_activation for c in cells], np.float32).reshape(
                len(cells), dims
            ),
            attribution=np.array([c.attribution for c in cells], np.float64),
            top_classes=top_classes,
            exemplar=np.array([c.exemplar for c in cells], np.int64),
        )
    return Path(path)


_ATLAS_FIELDS = (
    "pair", "pair_names", "layer", "n", "xy", "pair_xy", "cell_xy", "cell_count", "members",
    "mean_activation", "attribution", "top_classes", "exemplar",
)  # fmt: skip


def load_atlas(path: str | Path, classes: ClassList) -> Atlas:
    """Read an atlas written by `save_atlas`; its pair is resolved in `classes`.

    Raises:
        FileNotFoundError; ValueError for a foreign file or classes that name the pair
        differently; UnknownClassError when `classes` is too short for the pair.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Atlas file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in _ATLAS_FIELDS}
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a patchfinder atlas file: {error}") from None
    src, dst = (classes.get(int(index)) for index in stored["pair"])
    names = [str(name) for name in stored["pair_names"]]
    if [src.name, dst.name] != names:
        raise ValueError(
            f"{path} was built for the pair {names}, which these classes name "
            f"{[src.name, dst.name]}; Received: {classes!r}"
        )
    counts = stored["cell_count"]
    members = np.split(stored["members"], np.cumsum(counts)[:-1]) if len(counts) else []
    cells = [
        Cell(
            x=int(x),
            y=int(y),
            members=cell_members,
            mean_activation=mean,
            attribution=float(attribution),
            top_classes=tuple((int(c), float(s)) for c, s in top if c >= 0),  # drop the padding
            exemplar=int(exemplar),
        )
        for (x, y), cell_members, mean, attribution, top, exemplar in zip(
            stored["cell_xy"],
            members,
            stored["mean_activation"],
            stored["attribution"],
            stored["top_classes"],
            stored["exemplar"],
            strict=True,
        )
    ]
    return Atlas(
        pair=ClassPair(src, dst),
        layer=str(stored["layer"]),
        xy=stored["xy"],
        n=int(stored["n"]),
        cells=cells,
        pair_xy=stored["pair_xy"],
    )
