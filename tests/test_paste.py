"""Placements and pasting: properties on small random images, no model needed."""

from __future__ import annotations

import numpy as np
import pytest

from patchfinder.paste import (
    DEFAULT_SIZES,
    Centre,
    Combined,
    Corners,
    Grid,
    Position,
    RandomPositions,
    Rotated,
    iterate_pasted,
    parse_placements,
    paste_batch,
    patch_side,
    resize_patch,
)
from patchfinder.types import Patch

S = 32


def images(rng: np.random.Generator, n: int = 3, size: int = S) -> np.ndarray:
    return rng.uniform(0, 200, size=(n, size, size, 3)).astype(np.float32)


def asymmetric_patch(rng: np.random.Generator, side: int) -> np.ndarray:
    """A patch no rotation or flip maps onto itself (random values)."""
    return rng.uniform(0, 255, size=(side, side, 3)).astype(np.float32)


def box(position: Position, side: int) -> tuple[slice, slice]:
    return slice(position.y, position.y + side), slice(position.x, position.x + side)


# --- pasting -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_corner_paste_is_the_resized_patch_flush_with_the_edges(rng, name):
    x = images(rng)
    patch = Patch("p", "noise", rng.uniform(0, 255, (12, 9, 3)).astype(np.float32))
    pasted = Corners()(x, patch, rng, size=0.25).numpy()  # (L * B, S, S, 3)
    side = patch_side(0.25, S)
    expected_patch = resize_patch(patch.pixels, side).numpy()
    assert pasted.shape == (4 * len(x), S, S, 3) and expected_patch.shape == (side, side, 3)
    positions = Corners().resolve(S, side, rng)
    index = [p.name for p in positions].index(name)
    position = positions[index]
    rows, cols = box(position, side)
    assert {rows.start, rows.stop} & {0, S} and {cols.start, cols.stop} & {0, S}  # flush
    assert ("bottom" in name) == (rows.stop == S) and ("right" in name) == (cols.stop == S)
    for b in range(len(x)):
        out = pasted[index * len(x) + b]  # position-major, image fastest
        np.testing.assert_array_equal(out[rows, cols], expected_patch)
        outside = np.ones((S, S), bool)
        outside[rows, cols] = False
        np.testing.assert_array_equal(out[outside], x[b][outside])


@pytest.mark.parametrize("image_size", [32, 64, 224])
@pytest.mark.parametrize("size", DEFAULT_SIZES)
def test_sizes_map_to_side_lengths(rng, image_size, size):
    side = patch_side(size, image_size)
    assert side == round(size * image_size) or abs(side - size * image_size) == 0.5
    background = images(rng, n=1, size=image_size)
    plain = np.full((7, 5, 3), 250.0, np.float32)  # a colour the background never has
    out = Centre()(background, plain, rng, size=size).numpy()[0]
    covered = np.all(np.abs(out - 250.0) < 0.01, axis=-1)
    assert covered.sum() == side * side
    rows, cols = np.nonzero(covered)
    assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side


def test_invalid_sizes_are_refused():
    for size in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="Received"):
            patch_side(size, S)


def test_rotation_zero_equals_unrotated(rng):
    x, patch = images(rng), asymmetric_patch(rng, 11)
    plain = Corners()(x, patch, rng, size=0.3).numpy()
    turned = Rotated(Corners(), angles=(0,))(x, patch, rng, size=0.3).numpy()
    np.testing.assert_array_equal(turned, plain)


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_rotation_by_quarters_is_rot90_and_keeps_the_background(rng, quarter):
    x, side = images(rng, n=2), 10
    patch = asymmetric_patch(rng, side)
    position = Position("p", 5, 17, angle=90.0 * quarter)
    out = paste_batch(x, patch[None], [position]).numpy()
    rows, cols = box(position, side)
    for b in range(len(x)):
        np.testing.assert_allclose(out[b][rows, cols], np.rot90(patch, quarter), atol=1e-3)
        outside = np.ones((S, S), bool)
        outside[rows, cols] = False
        np.testing.assert_array_equal(out[b][outside], x[b][outside])


def test_oblique_rotation_keeps_the_background_outside_its_footprint(rng):
    x, side = images(rng, n=1), 12
    patch = np.full((side, side, 3), 250.0, np.float32)
    position = Position("p", 10, 10, angle=30.0)
    out = paste_batch(x, patch[None], [position]).numpy()[0]
    centre = 10 + (side - 1) / 2
    ys, xs = np.mgrid[:S, :S]
    distance = np.hypot(ys - centre, xs - centre)
    far = distance > side / np.sqrt(2) + 1  # beyond the rotated square's corners
    np.testing.assert_array_equal(out[far], x[0][far])
    near = distance < side / 2 - 1  # inside the square whatever its angle
    np.testing.assert_allclose(out[near], 250.0, atol=1e-3)
    # Rotated by 30 degrees, the square covers some pixels outside its unrotated box ...
    outside_box = np.ones((S, S), bool)
    outside_box[10 : 10 + side, 10 : 10 + side] = False
    assert np.any(np.abs(out[outside_box] - x[0][outside_box]) > 1)
    # ... and leaves some corners of that box to the background.
    assert np.any(
        np.all(out[10 : 10 + side, 10 : 10 + side] == x[0][10 : 10 + side, 10 : 10 + side], axis=-1)
    )


def test_paste_batch_order_is_patch_position_image(rng):
    x = images(rng, n=3)
    patches = np.stack([asymmetric_patch(rng, 8) for _ in range(2)])
    positions = Corners().resolve(S, 8, rng)
    out = paste_batch(x, patches, positions).numpy()
    assert out.shape == (2 * 4 * 3, S, S, 3)
    for p in range(2):
        for ell, position in enumerate(positions):
            for b in range(3):
                rows, cols = box(position, 8)
                np.testing.assert_array_equal(out[(p * 4 + ell) * 3 + b][rows, cols], patches[p])


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_streaming_equals_one_batch_and_never_exceeds_batch_size(rng, batch_size):
    x = images(rng, n=3)
    pixels = [asymmetric_patch(rng, 9), rng.uniform(0, 255, (6, 14, 3)).astype(np.float32)]
    sizes = (0.25, 0.5)
    layouts = (Corners() + Centre()).layout(S, sizes, rng)
    expected = [
        paste_batch(x, resize_patch(p, patch_side(s, S))[None], layout).numpy()
        for p in pixels
        for s, layout in zip(sizes, layouts, strict=True)
    ]
    batches = list(iterate_pasted(x, pixels, layouts=layouts, sizes=sizes, batch_size=batch_size))
    assert all(len(batch.images) <= batch_size for batch in batches)
    assert [batch.start for batch in batches] == list(range(0, 2 * 2 * 5 * 3, batch_size))
    streamed = np.concatenate([batch.images.numpy() for batch in batches])
    np.testing.assert_array_equal(streamed, np.concatenate(expected))
    indices = np.concatenate([batch.image_index for batch in batches])
    np.testing.assert_array_equal(indices, np.tile(np.arange(3), 2 * 2 * 5))


# --- placements --------------------------------------------------------------------------


@pytest.mark.parametrize("placement", [Grid(n=1), Grid(n=3), Grid(n=5), RandomPositions(count=50)])
@pytest.mark.parametrize("side", [1, 7, 16, 32])
def test_positions_lie_inside_the_image(placement, side):
    positions = placement.positions(S, side, np.random.default_rng(3))
    assert positions
    assert all(0 <= p.x <= S - side and 0 <= p.y <= S - side for p in positions)
    assert len({p.name for p in positions}) == len(positions)


def test_grid_spans_the_image_evenly():
    positions = Grid(n=3).resolve(S, 8, np.random.default_rng(0))
    assert len(positions) == 9
    assert sorted({p.x for p in positions}) == [0, 12, 24]
    assert positions[0] == Position("grid-0-0", 0, 0) and positions[-1].name == "grid-2-2"


def test_random_positions_follow_the_rng_seed():
    placement = RandomPositions(count=6)
    first = placement.resolve(S, 8, np.random.default_rng(7))
    assert first == placement.resolve(S, 8, np.random.default_rng(7))
    assert first != placement.resolve(S, 8, np.random.default_rng(8))


def test_composition_concatenates_and_flattens():
    rng = np.random.default_rng(0)
    combined = Corners() + Centre() + Grid(n=2)
    assert combined == Combined((Corners(), Centre(), Grid(n=2)))
    expected = [*Corners().positions(S, 8, rng), *Centre().positions(S, 8, rng)]
    expected += Grid(n=2).positions(S, 8, rng)
    assert list(combined.resolve(S, 8, rng)) == expected
    with pytest.raises(ValueError, match="unique"):
        (Corners() + Corners()).resolve(S, 8, rng)


def test_rotated_adds_angles_to_every_position():
    positions = Rotated(Centre() + Corners(), angles=(0, 90)).resolve(
        S, 8, np.random.default_rng(0)
    )
    assert len(positions) == 10
    assert positions[0] == Position("centre@0", 12, 12, 0.0)
    assert positions[1] == Position("centre@90", 12, 12, 90.0)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        Grid(3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Rotated(Corners(), (0, 90))  # type: ignore[misc]
    with pytest.raises(ValueError, match="n >= 1"):
        Grid(n=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("corners", Corners()),
        ("centre", Centre()),
        ("Center", Centre()),
        ("grid", Grid(n=3)),
        ("grid:4", Grid(n=4)),
        ("random:8", RandomPositions(count=8)),
        ("corners+centre", Corners() + Centre()),
        ("corners@0,90", Rotated(Corners(), angles=(0, 90))),
        ("corners@45 + grid:2", Rotated(Corners(), angles=(45,)) + Grid(n=2)),
    ],
)
def test_parse_placements(text, expected):
    placement = parse_placements(text)
    assert placement == expected
    assert parse_placements(str(placement)) == placement  # str is a spec that reads back


@pytest.mark.parametrize("text", ["", "corner", "grid:x", "corners:4", "corners@", "centre@a"])
def test_parse_placements_errors_list_the_valid_forms(text):
    with pytest.raises(ValueError, match=r"valid forms: corners, centre, grid:N, random:N"):
        parse_placements(text)
