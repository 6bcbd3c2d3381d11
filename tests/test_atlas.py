"""Atlas math on synthetic activations: three well-separated clusters, no model, no golden numbers.

Cluster c (100 vectors each, D = 16) lights up its own five channels, favours the pair's dst
(c = 0, 2) or src (c = 1) through its pair attribution, and names class 10 + c as its image's
strongest class. UMAP runs on 300 vectors only, a few times, so the file stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from patchfinder.atlas import (
    Atlas,
    build_atlas,
    build_cells,
    cells_table,
    grid_cells,
    layout,
    load_atlas,
    neighbours,
    normalize_layout,
    pair_view,
    rank_cells,
    save_atlas,
)
from patchfinder.labels import ClassList, ImageClass
from patchfinder.types import ActivationSamples, Cell, ClassPair

PER_CLUSTER, D, R = 100, 16, 3
ATTRIBUTION = (2.0, -1.5, 0.5)  # mean pair attribution per cluster: dst, src, dst
CLASSES = ClassList([ImageClass(i, "", f"class_{i}") for i in range(13)])


def make_samples(rng: np.random.Generator, per_cluster: int = PER_CLUSTER) -> ActivationSamples:
    """Three clusters of `per_cluster` vectors; `cluster_of(samples)` recovers the cluster."""
    cluster = np.repeat(np.arange(3), per_cluster)  # (N,)
    n = len(cluster)
    vectors = 0.3 * np.abs(rng.normal(size=(n, D)))  # non-negative, like ReLU activations
    for c in range(3):
        vectors[cluster == c, 5 * c : 5 * c + 5] += 5.0  # each cluster's own channels
    attribution = np.asarray(ATTRIBUTION)[cluster] + 0.1 * rng.normal(size=n)
    class_ids = np.stack(
        [10 + cluster, rng.integers(0, 5, size=n), rng.integers(5, 10, size=n)], axis=1
    )  # (N, R): the cluster's class first, then two weaker ones
    class_attribution = np.concatenate(
        [1.0 + 0.1 * rng.random((n, 1)), 0.2 * rng.random((n, R - 1))], axis=1
    )
    files = [f"image_{i}.jpg" for i in range(n // 4)]
    return ActivationSamples(
        layer="mixed4d",
        grid=(14, 14),
        input_size=224,
        files=files,
        vectors=vectors.astype(np.float32),
        image=np.arange(n) % len(files),
        position=rng.integers(0, 14, size=(n, 2)),
        box=np.tile([0, 8, 32, 40], (n, 1)) + np.arange(n)[:, None],
        label=cluster.copy(),
        prediction=cluster.copy(),
        pair_attribution=attribution.astype(np.float32),
        class_ids=class_ids.astype(np.int64),
        class_attribution=class_attribution.astype(np.float32),
    )


def cluster_of(samples: ActivationSamples) -> np.ndarray:
    return samples.label  # make_samples stores each vector's cluster as its label


@pytest.fixture(scope="module")
def samples() -> ActivationSamples:
    return make_samples(np.random.default_rng(0))


@pytest.fixture(scope="module")
def xy(samples: ActivationSamples) -> np.ndarray:
    return layout(samples.vectors, seed=0)


def _cell(x: int, y: int, count: int, attribution: float) -> Cell:
    return Cell(
        x=x,
        y=y,
        members=np.arange(count),
        mean_activation=np.zeros(D, np.float32),
        attribution=attribution,
        top_classes=(),
        exemplar=0,
    )


# ----------------------------------------------------------------------------- layout


def test_layout_is_in_unit_square_and_same_seed_repeats(samples, xy):
    assert xy.shape == (len(samples), 2)
    assert xy.min() >= 0.0 and xy.max() <= 1.0
    np.testing.assert_array_equal(xy.min(axis=0), [0, 0])  # each axis spans [0, 1] exactly
    np.testing.assert_array_equal(xy.max(axis=0), [1, 1])
    np.testing.assert_array_equal(layout(samples.vectors, seed=0), xy)
    assert not np.array_equal(layout(samples.vectors, seed=1), xy)


def test_layout_keeps_clusters_apart(samples, xy):
    cluster = cluster_of(samples)
    cells = grid_cells(xy, n=10)
    key = cells[:, 1] * 10 + cells[:, 0]
    for cell in np.unique(key):
        assert len(np.unique(cluster[key == cell])) == 1, f"cell {cell} mixes clusters"
    centres = np.stack([xy[cluster == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(xy[cluster == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 3 * spread


def test_one_dimensional_layout(samples):
    y = layout(samples.vectors, dims=1, seed=0)
    assert y.shape == (len(samples), 1) and y.min() == 0.0 and y.max() == 1.0


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_tiny_inputs_fall_back_to_pca(rng, n):
    vectors = rng.random((n, D)).astype(np.float32)
    xy = layout(vectors, n_neighbors=15)
    assert xy.shape == (n, 2) and np.all((xy >= 0) & (xy <= 1))
    np.testing.assert_array_equal(layout(vectors, n_neighbors=15), xy)


@pytest.mark.parametrize(
    "vectors",
    [np.zeros((0, D)), np.zeros(D), np.zeros((3, 0)), np.array([[0.0, np.nan]] * 20)],
    ids=["empty", "1-D", "no-channels", "nan"],
)
def test_bad_input_raises(vectors):
    with pytest.raises(ValueError, match="Received"):
        layout(vectors)


def test_neighbours_are_exact_cosine_nearest_first(rng):
    vectors = rng.random((200, D)).astype(np.float32)
    indices, distances = neighbours(vectors, n_neighbors=10)
    assert indices.shape == distances.shape == (200, 10)
    np.testing.assert_array_equal(indices[:, 0], np.arange(200))  # each vector first
    assert np.all(np.diff(distances, axis=1) >= 0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = 1.0 - unit @ unit.T  # (200, 200)
    expected = np.sort(cosine, axis=1)[:, 1:10]
    np.testing.assert_allclose(distances[:, 1:], expected, atol=1e-5)


def test_normalize_layout_clips_outliers_and_handles_flat_axes(rng):
    points = np.stack([rng.normal(size=1000), np.full(1000, 3.0)], axis=1)
    points[0, 0] = 1e6  # one stray point must not squash the rest
    scaled = normalize_layout(points)
    assert scaled[0, 0] == 1.0 and np.all(scaled[:, 1] == 0.5)
    assert np.ptp(scaled[1:, 0]) > 0.9


# ----------------------------------------------------------------------------- grid and cells


def test_grid_cells_edges_and_range(rng):
    xy = np.array([[0.0, 1.0], [np.nextafter(1.0, 0.0), 0.5], [0.25, 0.2499999]])
    np.testing.assert_array_equal(grid_cells(xy, n=4), [[0, 3], [3, 2], [1, 0]])
    cells = grid_cells(rng.random((1000, 2)), n=7)
    assert cells.dtype.kind == "i" and cells.min() >= 0 and cells.max() <= 6
    with pytest.raises(ValueError, match="Received"):
        grid_cells(np.array([[0.5, 1.01]]), n=4)


def test_cells_count_every_retained_point_and_drop_sparse_cells(samples, rng):
    xy = rng.random((len(samples), 2))  # uneven occupancy: some cells below min_count
    grid = grid_cells(xy, n=8)
    _, occupancy = np.unique(grid[:, 1] * 8 + grid[:, 0], return_counts=True)
    for min_count in (1, 5, 7):
        cells = build_cells(samples, xy, n=8, min_count=min_count)
        assert len(cells) == np.sum(occupancy >= min_count)
        assert all(cell.count >= min_count for cell in cells)
        assert sum(cell.count for cell in cells) == occupancy[occupancy >= min_count].sum()
        members = np.concatenate([cell.members for cell in cells])
        assert len(np.unique(members)) == len(members)  # no point in two cells
        assert [(c.y, c.x) for c in cells] == sorted((c.y, c.x) for c in cells)
        for cell in cells:
            np.testing.assert_array_equal(grid[cell.members], [[cell.x, cell.y]] * cell.count)


def test_cells_summarise_their_cluster(samples, xy):
    cluster = cluster_of(samples)
    cells = build_cells(samples, xy, n=10, min_count=3)
    assert cells
    for cell in cells:
        c = cluster[cell.members[0]]
        assert np.sign(cell.attribution) == np.sign(ATTRIBUTION[c])
        assert cell.top_classes[0][0] == 10 + c
        assert len(cell.top_classes) <= 5
        assert all(score > 0 for _, score in cell.top_classes)
        scores = [score for _, score in cell.top_classes]
        assert scores == sorted(scores, reverse=True)
        vectors = samples.vectors[cell.members].astype(np.float64)
        np.testing.assert_allclose(cell.mean_activation, vectors.mean(axis=0), rtol=1e-5)
        assert cell.exemplar in cell.members
        mean = vectors.mean(axis=0)
        similarity = vectors @ mean / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(mean))
        assert similarity[list(cell.members).index(cell.exemplar)] == pytest.approx(
            similarity.max()
        )


def test_top_classes_keep_only_positive_totals(samples):
    n = len(samples)
    one_class = ActivationSamples(
        **{
            **vars(samples),
            "class_ids": np.tile([3, 4, -1], (n, 1)),  # -1 pads a missing class
            "class_attribution": np.tile([1.0, -2.0, 5.0], (n, 1)).astype(np.float32),
        }
    )
    cells = build_cells(one_class, np.full((n, 2), 0.5), n=2, min_count=1, top=5)
    assert len(cells) == 1 and cells[0].top_classes == ((3, float(n)),)


def test_rank_cells_puts_most_dst_favouring_first():
    cells = [_cell(0, 0, 4, -1.0), _cell(1, 0, 3, 2.0), _cell(2, 0, 9, 2.0), _cell(3, 0, 5, 0.1)]
    ranked = rank_cells(cells)
    assert [(c.x, c.count) for c in ranked] == [(2, 9), (1, 3), (3, 5), (0, 4)]


# ----------------------------------------------------------------------------- class-pair view


def test_pair_view_x_follows_attribution_sign(samples):
    view = pair_view(samples, seed=0)
    assert view.shape == (len(samples), 2) and np.all((view >= 0) & (view <= 1))
    attribution = samples.pair_attribution
    assert np.all(view[attribution > 0, 0] > 0.5) and np.all(view[attribution < 0, 0] < 0.5)
    assert view[:, 1].min() == 0.0 and view[:, 1].max() == 1.0


def test_pair_view_clips_extremes_and_centres_zero(samples):
    extreme = samples.pair_attribution.copy()
    extreme[0] = 1e6
    view = pair_view(ActivationSamples(**{**vars(samples), "pair_attribution": extreme}))
    assert view[0, 0] == 1.0 and np.ptp(view[1:, 0]) > 0.5  # the rest is not squashed
    flat = ActivationSamples(**{**vars(samples), "pair_attribution": np.zeros(len(samples))})
    assert np.all(pair_view(flat)[:, 0] == 0.5)


# ----------------------------------------------------------------------------- the atlas


def test_build_atlas_and_cells_table(samples, xy):
    pair = ClassPair(CLASSES[11], CLASSES[10])
    atlas = build_atlas(samples, pair, n=10, seed=0)
    assert isinstance(atlas, Atlas) and atlas.pair == pair and atlas.layer == samples.layer
    np.testing.assert_array_equal(atlas.xy, xy)  # the shared graph gives the same layout
    assert atlas.pair_xy.shape == (len(samples), 2) and atlas.n == 10
    assert [(c.y, c.x) for c in atlas.cells] == sorted((c.y, c.x) for c in atlas.cells)

    rows = cells_table(atlas, samples, CLASSES)
    assert len(rows) == len(atlas.cells)
    assert [r["attribution"] for r in rows] == sorted(
        (r["attribution"] for r in rows), reverse=True
    )
    top = rows[0]
    assert top["top_classes"].startswith("class_10 (")  # cluster 0 favours dst the most
    assert all(part.endswith(")") for part in top["top_classes"].split("; "))
    cell = rank_cells(atlas.cells)[0]
    assert (top["cell_x"], top["cell_y"], top["count"]) == (cell.x, cell.y, cell.count)
    assert top["exemplar_file"] == samples.files[samples.image[cell.exemplar]]
    assert top["exemplar_box"] == " ".join(map(str, samples.box[cell.exemplar]))


def test_build_atlas_on_tiny_input(rng):
    samples = make_samples(rng, per_cluster=2)
    atlas = build_atlas(samples, ClassPair(CLASSES[0], CLASSES[1]), n=4, min_count=1)
    assert sum(cell.count for cell in atlas.cells) == len(samples) == 6


def test_saved_atlas_loads_back_equal(samples, xy, tmp_path):
    pair = ClassPair(CLASSES[11], CLASSES[10])
    cells = build_cells(samples, xy, n=10)
    atlas = Atlas(pair=pair, layer="mixed4d", xy=xy, n=10, cells=cells, pair_xy=xy[:, ::-1])
    loaded = load_atlas(save_atlas(atlas, tmp_path / "atlas.npz"), CLASSES)
    assert (loaded.pair, loaded.layer, loaded.n) == (pair, "mixed4d", 10)
    np.testing.assert_array_equal(loaded.xy, xy)
    np.testing.assert_array_equal(loaded.pair_xy, atlas.pair_xy)
    assert len(loaded.cells) == len(cells)
    for got, want in zip(loaded.cells, cells, strict=True):
        assert (got.x, got.y, got.exemplar, got.top_classes) == (
            want.x,
            want.y,
            want.exemplar,
            want.top_classes,
        )
        assert got.attribution == want.attribution
        np.testing.assert_array_equal(got.members, want.members)
        np.testing.assert_array_equal(got.mean_activation, want.mean_activation)

    empty = Atlas(pair=pair, layer="x", xy=xy, n=10, cells=[], pair_xy=xy)
    assert load_atlas(save_atlas(empty, tmp_path / "empty.npz"), CLASSES).cells == []
    renamed = ClassList([ImageClass(i, "", f"other_{i}") for i in range(13)])
    with pytest.raises(ValueError, match="pair"):
        load_atlas(tmp_path / "atlas.npz", renamed)
    np.savez(tmp_path / "foreign.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="not a patchfinder atlas"):
        load_atlas(tmp_path / "foreign.npz", CLASSES)


def test_image_classes_are_the_members_predictions_most_common_first():
    from patchfinder.atlas import image_classes

    samples = _samples_with_predictions([7, 7, 3, 7, 3, 9])
    cell = Cell(
        x=0, y=0, members=np.arange(6), mean_activation=np.zeros(2, np.float32),
        attribution=0.0, top_classes=(), exemplar=0,
    )  # fmt: skip
    assert image_classes(cell, samples) == [(7, 0.5), (3, 2 / 6), (9, 1 / 6)]
    assert image_classes(cell, samples, top=1) == [(7, 0.5)]


def _samples_with_predictions(predictions: list[int]) -> ActivationSamples:
    n = len(predictions)
    return ActivationSamples(
        layer="l", grid=(4, 4), input_size=32, files=["a.png"],
        vectors=np.zeros((n, 2), np.float32), image=np.zeros(n, np.int64),
        position=np.zeros((n, 2), np.int64), box=np.zeros((n, 4), np.int64),
        label=np.full(n, -1), prediction=np.array(predictions),
        pair_attribution=np.zeros(n, np.float32), class_ids=np.zeros((n, 1), np.int64),
        class_attribution=np.zeros((n, 1), np.float32),
    )  # fmt: skip
