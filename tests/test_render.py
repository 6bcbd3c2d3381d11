"""Rendering on a tiny synthetic pool: solid-colour images with known boxes, no model."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchfinder import render
from patchfinder.atlas import Atlas
from patchfinder.labels import ClassList, ImageClass
from patchfinder.types import ActivationSamples, Cell, ClassPair

S = 32  # model input side
N_IMAGES, PER_IMAGE = 4, 10
COLOURS = [(220, 30, 30), (30, 200, 60), (40, 60, 230), (240, 220, 20)]
EVIL = "<script>alert('x')</script>"


def _classes() -> ClassList:
    names = ["snorkel", "scuba_diver", "coral_reef", EVIL, "goldfish"]
    return ClassList([ImageClass(i, "", name) for i, name in enumerate(names)])


def _write(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array.astype(np.uint8), mode="RGB").save(path)
    return str(path)


def _samples(files: list[str], image: np.ndarray, box: np.ndarray, rng) -> ActivationSamples:
    """ActivationSamples for `image` (N,) indices into `files` and `box` (N, 4)."""
    n = len(image)
    return ActivationSamples(
        layer="conv2",
        grid=(8, 8),
        input_size=S,
        files=files,
        vectors=rng.normal(size=(n, 6)).astype(np.float32),
        image=np.asarray(image, np.int64),
        position=rng.integers(0, 8, size=(n, 2)),
        box=np.asarray(box, np.int64),
        label=np.asarray(image, np.int64) % 2,  # images alternate snorkel / scuba_diver
        prediction=np.asarray(image, np.int64) % 2,
        pair_attribution=rng.normal(size=n).astype(np.float32),
        class_ids=np.tile([1, 0, 3], (n, 1)),
        class_attribution=np.abs(rng.normal(size=(n, 3))).astype(np.float32),
    )


def _cell(x: int, y: int, members, attribution: float, exemplar: int) -> Cell:
    members = np.asarray(members, np.int64)
    return Cell(
        x=x,
        y=y,
        members=members,
        mean_activation=np.zeros(6, np.float32),
        attribution=attribution,
        top_classes=((1, 2.5), (3, 1.0), (0, 0.5)),
        exemplar=exemplar,
    )


def _atlas(samples: ActivationSamples, cells: list[Cell], n: int, rng) -> Atlas:
    classes = _classes()
    count = len(samples)
    pair_x = 0.5 + 0.5 * np.tanh(samples.pair_attribution)
    return Atlas(
        pair=ClassPair(classes[0], classes[1]),
        layer=samples.layer,
        xy=rng.uniform(size=(count, 2)),
        n=n,
        cells=cells,
        pair_xy=np.stack([pair_x, rng.uniform(size=count)], axis=1),
    )


@pytest.fixture
def pool(tmp_path: Path, rng):
    """4 solid-colour images, 10 samples each, and an atlas of 6 cells on a 4 x 4 grid.

    Cell k holds samples whose exemplar comes from image k % 4; attributions span both signs
    with +2 and -2 the extremes, and one cell is exactly neutral.
    """
    files = [
        _write(tmp_path / f"img{i}.png", np.full((S, S, 3), colour))
        for i, colour in enumerate(COLOURS)
    ]
    image = np.repeat(np.arange(N_IMAGES), PER_IMAGE)  # (40,)
    x0 = rng.integers(0, S - 8, size=len(image))
    y0 = rng.integers(0, S - 8, size=len(image))
    box = np.stack([x0, y0, x0 + 8, y0 + 8], axis=1)
    samples = _samples(files, image, box, rng)
    layout = [(0, 0, 2.0), (1, 0, -2.0), (3, 1, 0.7), (2, 2, -0.3), (0, 3, 0.0), (3, 3, 1.1)]
    cells = []
    for k, (x, y, attribution) in enumerate(layout):
        members = np.flatnonzero(image == k % N_IMAGES)[k // N_IMAGES :: 2]
        cells.append(_cell(x, y, members, attribution, exemplar=int(members[0])))
    return samples, _atlas(samples, cells, 4, rng)


# --- icons ---------------------------------------------------------------------------------


def test_icon_has_the_colour_of_the_exemplars_image(pool):
    samples, atlas = pool
    icons = render.cell_icons(atlas, samples, icon_size=16)
    assert set(icons) == {(c.x, c.y) for c in atlas.cells}
    for cell in atlas.cells:
        icon = icons[(cell.x, cell.y)]
        assert icon.shape == (16, 16, 3) and icon.dtype == np.uint8
        expected = COLOURS[samples.image[cell.exemplar]]
        assert np.abs(icon.astype(int) - expected).max() <= 1


def test_icon_is_the_crop_inside_the_box(tmp_path, rng):
    two_tone = np.zeros((S, S, 3))
    two_tone[:, : S // 2] = (250, 0, 0)  # left half red
    two_tone[:, S // 2 :] = (0, 0, 250)  # right half blue
    files = [_write(tmp_path / "two.png", two_tone)]
    boxes = [(1, 2, 13, 30), (19, 2, 31, 30), (10, 0, 22, 32)]  # inside left, inside right, both
    samples = _samples(files, np.zeros(3), np.array(boxes), rng)
    cells = [_cell(i, 0, [i], 1.0, exemplar=i) for i in range(3)]
    icons = render.cell_icons(_atlas(samples, cells, 3, rng), samples, icon_size=24)
    assert np.abs(icons[(0, 0)].astype(int) - (250, 0, 0)).max() <= 1
    assert np.abs(icons[(1, 0)].astype(int) - (0, 0, 250)).max() <= 1
    straddle = icons[(2, 0)].astype(int)
    assert straddle[:, 0, 0].min() > 200 and straddle[:, -1, 2].min() > 200  # red left, blue right


def test_each_image_file_is_decoded_once(pool, monkeypatch):
    samples, atlas = pool  # 6 cells over 4 files
    calls: list[str] = []
    real = render.load_image

    def counting(path, *, size):
        calls.append(path)
        return real(path, size=size)

    monkeypatch.setattr(render, "load_image", counting)
    render.cell_icons(atlas, samples, icon_size=8)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == N_IMAGES


def test_undecodable_image_gives_a_grey_icon(pool, tmp_path):
    samples, atlas = pool
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    samples.files = [str(broken), *samples.files[1:]]
    icons = render.cell_icons(atlas, samples, icon_size=8)
    for cell in atlas.cells:
        icon = icons[(cell.x, cell.y)]
        if samples.image[cell.exemplar] == 0:
            assert (icon == render.MISSING_GREY).all()
        else:
            assert np.abs(icon.astype(int) - COLOURS[samples.image[cell.exemplar]]).max() <= 1


def test_icon_size_must_be_positive(pool):
    samples, atlas = pool
    with pytest.raises(ValueError, match="Received"):
        render.cell_icons(atlas, samples, icon_size=0)


# --- grid canvas ---------------------------------------------------------------------------


def test_atlas_places_each_icon_at_its_cell_and_leaves_the_rest_background(pool):
    samples, atlas = pool
    size = 12
    icons = render.cell_icons(atlas, samples, icon_size=size)
    canvas = np.asarray(render.render_atlas(atlas, icons, icon_size=size, frame=0))
    assert canvas.shape == (atlas.n * size, atlas.n * size, 3)
    occupied = {(c.x, c.y) for c in atlas.cells}
    for y in range(atlas.n):
        for x in range(atlas.n):
            block = canvas[y * size : (y + 1) * size, x * size : (x + 1) * size]
            if (x, y) in occupied:
                np.testing.assert_array_equal(block, icons[(x, y)])
            else:
                assert (block == render.BACKGROUND).all()


def test_frame_colour_codes_the_attribution(pool):
    samples, atlas = pool
    size, frame = 16, 2
    icons = render.cell_icons(atlas, samples, icon_size=size)
    canvas = np.asarray(render.render_atlas(atlas, icons, icon_size=size, frame=frame))
    expected = {2.0: render.DST_COLOUR, -2.0: render.SRC_COLOUR, 0.0: render.NEUTRAL_COLOUR}
    for cell in atlas.cells:
        block = canvas[cell.y * size : (cell.y + 1) * size, cell.x * size : (cell.x + 1) * size]
        np.testing.assert_array_equal(
            block[frame:-frame, frame:-frame], icons[(cell.x, cell.y)][frame:-frame, frame:-frame]
        )
        colour = render.attribution_colour(cell.attribution, 2.0)
        for edge in (block[0], block[-1], block[:, 0], block[:, -1]):
            assert (edge == colour).all()
        if cell.attribution in expected:
            assert colour == expected[cell.attribution]


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        (1.0, 1.0, render.DST_COLOUR),
        (-3.0, 1.0, render.SRC_COLOUR),  # beyond the scale saturates
        (0.0, 1.0, render.NEUTRAL_COLOUR),
        (1.0, 0.0, render.NEUTRAL_COLOUR),  # no scale: nothing to compare with
        (float("nan"), 1.0, render.NEUTRAL_COLOUR),
    ],
)
def test_attribution_colour_ends(value, scale, expected):
    assert render.attribution_colour(value, scale) == expected


def test_weaker_attribution_is_closer_to_neutral():
    def distance(value: float) -> float:
        colour = np.asarray(render.attribution_colour(value, 1.0))
        return float(np.abs(colour - render.NEUTRAL_COLOUR).sum())

    assert distance(0.0) < distance(0.2) < distance(0.6) < distance(1.0)
    assert distance(-0.2) < distance(-0.6)


# --- class-pair view -----------------------------------------------------------------------


def test_pair_atlas_renders_with_fewer_cells_than_top(pool):
    samples, atlas = pool  # 6 cells: 4 favour dst, 2 favour src, 1 neutral (shown on no side)
    icons = render.cell_icons(atlas, samples, icon_size=32)
    image = render.render_pair_atlas(atlas, samples, icons, _classes(), top=12)
    assert image.mode == "RGB" and image.width == 1600 and 700 <= image.height <= 1400
    pixels = np.asarray(image)
    # The dst and src colours appear (scatter points, legend), so something was drawn.
    for colour in (render.DST_COLOUR, render.SRC_COLOUR):
        assert (np.abs(pixels.astype(int) - colour).max(axis=2) <= 3).any()


def test_pair_atlas_with_one_side_empty(pool):
    samples, atlas = pool
    atlas.cells = [c for c in atlas.cells if c.attribution > 0]
    icons = render.cell_icons(atlas, samples, icon_size=16)
    image = render.render_pair_atlas(atlas, samples, icons, _classes(), top=2, columns=1)
    assert image.width == 1600 and image.height >= 700


# --- HTML ----------------------------------------------------------------------------------


def test_html_has_one_entry_per_cell_escaped_and_self_contained(pool):
    samples, atlas = pool
    icons = render.cell_icons(atlas, samples, icon_size=16)
    page = render.render_html(atlas, samples, icons, _classes(), title=f"atlas {EVIL}")
    assert page.count('class="cell"') == len(atlas.cells)
    assert EVIL not in page and "&lt;script&gt;alert(" in page
    assert page.count("<script>") == 1  # the page's own script, nothing injected
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(atlas.cells)
    decoded = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert decoded.size == (16, 16)


def test_html_hover_text_names_count_attribution_and_classes(pool):
    samples, atlas = pool
    icons = render.cell_icons(atlas, samples, icon_size=8)
    page = render.render_html(atlas, samples, icons, _classes(), title="t")
    infos = re.findall(r'data-info="([^"]*)"', page)
    assert len(infos) == len(atlas.cells)
    for cell, info in zip(atlas.cells, infos, strict=True):
        assert f"count: {cell.count}" in info
        assert f"{cell.attribution:+.4g}" in info
        assert "scuba_diver (+2.5)" in info


# --- files ---------------------------------------------------------------------------------


def test_save_png_and_text_write_complete_files(tmp_path):
    image = Image.fromarray(np.full((5, 7, 3), 90, np.uint8))
    path = render.save_png(image, tmp_path / "out" / "atlas.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(image))
    text_path = render.save_text("<p>é</p>", tmp_path / "out" / "atlas.html")
    assert text_path.read_text(encoding="utf-8") == "<p>é</p>"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["atlas.html", "atlas.png"]
