"""Atlas images and HTML: natural icons, the grid canvas, the class-pair view, a hover page.

The Activation Atlas article draws each grid cell as a feature visualisation of the cell's
mean activation. Here every cell is drawn as a *natural icon* instead: the crop of a real pool
image under the receptive field of the cell's exemplar (the member closest to the mean), so an
icon shows a patch that actually exists and could be pasted. The four renderers:

    icons = cell_icons(atlas, samples, icon_size=64)           # {(x, y): uint8 (64, 64, 3)}
    grid = render_atlas(atlas, icons)                          # PIL, n*64 x n*64
    view = render_pair_atlas(atlas, samples, icons, classes)   # PIL, ~1600 px wide figure
    page = render_html(atlas, samples, icons, classes, title="...")  # self-contained HTML

Colour code, shared by every view: blue favours the pair's `src` class, orange favours `dst`
(the `pair_attribution` sign: dst minus src), grey is neutral. Strength is the square root of
|attribution| relative to the largest |attribution| in the same view.

Only `render_pair_atlas` needs matplotlib; it is imported there, on the Agg backend through
`Figure` + `FigureCanvasAgg`, so no pyplot global state is touched.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from patchfinder.atlas import Atlas, rank_cells
from patchfinder.data import ImageError, load_image
from patchfinder.io import atomic_write, write_csv, write_json, write_text
from patchfinder.labels import ClassList
from patchfinder.types import ActivationSamples, Cell

logger = logging.getLogger("patchfinder.render")

#: RGB of cells / points that favour the pair's source class.
SRC_COLOUR: tuple[int, int, int] = (33, 102, 172)
#: RGB of cells / points that favour the pair's destination class.
DST_COLOUR: tuple[int, int, int] = (230, 97, 1)
#: RGB of a neutral attribution (zero).
NEUTRAL_COLOUR: tuple[int, int, int] = (189, 189, 189)
#: RGB of empty grid cells in `render_atlas`.
BACKGROUND: tuple[int, int, int] = (242, 242, 242)
#: Grey level of the icon drawn for an image that cannot be decoded (or a cell with no icon).
MISSING_GREY = 128

IconMap = Mapping[tuple[int, int], np.ndarray]


# --- colours -------------------------------------------------------------------------------


def _blend(values: np.ndarray, scale: float) -> np.ndarray:
    """float RGB (N, 3) in 0..255 for attributions (N,): grey at 0, towards orange (> 0, dst)
    or blue (< 0, src) by sqrt(|value| / scale), saturating at |value| >= scale.

    sqrt: weak preferences still show their side; the strongest stay the most saturated.
    Non-finite values, and any value when the scale is not positive and finite, are grey.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
    neutral = np.asarray(NEUTRAL_COLOUR, np.float64)
    if not (np.isfinite(scale) and scale > 0):
        return np.tile(neutral, (len(values), 1))
    finite = np.isfinite(values)
    strength = np.sqrt(np.minimum(np.abs(np.where(finite, values, 0.0)) / scale, 1.0))
    side = np.where((values > 0)[:, None], np.asarray(DST_COLOUR), np.asarray(SRC_COLOUR))
    return neutral + strength[:, None] * (side - neutral)  # (N, 3)


def attribution_colour(value: float, scale: float) -> tuple[int, int, int]:
    """RGB for an attribution: grey at 0, blending to orange (> 0, dst) or blue (< 0, src)
    by sqrt(|value| / scale).

    Args:
        value: a (mean) pair attribution, dst minus src.
        scale: the |attribution| that gets the full colour (the largest in the view);
            non-positive or non-finite scales give grey.
    """
    r, g, b = (round(float(c)) for c in _blend(np.asarray([value]), scale)[0])
    return r, g, b


def _attribution_scale(cells: Sequence[Cell]) -> float:
    """Largest finite |attribution| among the cells (0.0 when there is none)."""
    values = np.abs([c.attribution for c in cells], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


# --- icons ---------------------------------------------------------------------------------


def _grey_icon(icon_size: int) -> np.ndarray:
    return np.full((icon_size, icon_size, 3), MISSING_GREY, dtype=np.uint8)


def _crop_icon(image: np.ndarray, box: np.ndarray, icon_size: int) -> np.ndarray:
    """The `box` (x0, y0, x1, y1), [start, stop) in pixels, of `image` (S, S, 3) float 0..255,
    resized to uint8 (icon_size, icon_size, 3)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in np.asarray(box).reshape(4))
    # Boxes from `activations.boxes` are clipped and never empty; guard hand-made ones anyway.
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    crop = np.clip(np.rint(image[y0:y1, x0:x1]), 0, 255).astype(np.uint8)
    # Bilinear: PIL widens its support when shrinking (antialiased) and stays smooth when
    # enlarging the small receptive fields of early layers.
    resized = Image.fromarray(crop, mode="RGB").resize(
        (icon_size, icon_size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.uint8)


def cell_icons(
    atlas: Atlas, samples: ActivationSamples, *, icon_size: int = 64
) -> dict[tuple[int, int], np.ndarray]:
    """Natural icons: each cell's exemplar crop from its pool image.

    The image `samples.files[samples.image[e]]` of the cell's exemplar `e` is decoded with
    `data.load_image` at `samples.input_size` (exactly as the model saw it) and cropped to the
    receptive-field box `samples.box[e]`. Each file is decoded once, however many cells use
    it. A file that fails to decode gives a grey icon (logged as a warning), never an error.

    Args:
        atlas: the atlas whose `cells` are drawn.
        samples: the samples the atlas was built from (`cell.exemplar` indexes them).
        icon_size: output side in pixels.

    Returns:
        {(cell.x, cell.y): uint8 (icon_size, icon_size, 3)}, one entry per cell.
    """
    if not isinstance(icon_size, (int, np.integer)) or icon_size <= 0:
        raise ValueError(f"icon_size must be a positive int; Received: icon_size={icon_size!r}")
    icon_size = int(icon_size)
    by_file: dict[int, list[Cell]] = defaultdict(list)
    for cell in atlas.cells:
        by_file[int(samples.image[cell.exemplar])].append(cell)
    icons: dict[tuple[int, int], np.ndarray] = {}
    for file_index in sorted(by_file):
        path = samples.files[file_index]
        try:
            image = load_image(path, size=samples.input_size)  # float32 (S, S, 3)
        except ImageError as error:
            logger.warning("Grey icon for %d cell(s): %s", len(by_file[file_index]), error)
            image = None
        for cell in by_file[file_index]:
            icons[(cell.x, cell.y)] = (
                _grey_icon(icon_size)
                if image is None
                else _crop_icon(image, samples.box[cell.exemplar], icon_size)
            )
    return icons


def _icon_at(icons: IconMap, cell: Cell, icon_size: int) -> np.ndarray:
    """The cell's icon as uint8 (icon_size, icon_size, 3), or (own size) when icon_size is 0;
    grey when missing, resized when it was made at another size."""
    icon = icons.get((cell.x, cell.y))
    if icon is None:
        return _grey_icon(icon_size or 64)
    icon = np.asarray(icon)
    if icon.dtype != np.uint8:
        icon = np.clip(np.rint(icon), 0, 255).astype(np.uint8)
    if icon_size and icon.shape[:2] != (icon_size, icon_size):
        resized = Image.fromarray(icon[..., :3]).resize(
            (icon_size, icon_size), Image.Resampling.BILINEAR
        )
        icon = np.asarray(resized, dtype=np.uint8)
    return icon[..., :3]


# --- grid canvas ---------------------------------------------------------------------------


def render_atlas(
    atlas: Atlas, icons: IconMap, *, icon_size: int = 64, frame: int = 2
) -> Image.Image:
    """The atlas grid: each cell's icon at its (x, y), with a frame coding its attribution.

    The canvas is exactly (n * icon_size) pixels square, no margin: cell (x, y) covers
    columns [x * icon_size, (x + 1) * icon_size) and rows [y * icon_size, (y + 1) * icon_size).
    The outer `frame` pixels of each cell block are painted with `attribution_colour`
    (scaled by the atlas's largest |attribution|); the inner pixels are the icon unchanged.
    Empty cells are `BACKGROUND` (light grey).

    Args:
        atlas: the atlas (`n`, `cells`).
        icons: {(x, y): uint8 (icon, icon, 3)}, as from `cell_icons`; a missing icon is grey
            and one of another size is resized.
        icon_size: side of a cell in pixels.
        frame: frame width in pixels (0 draws none), at most a quarter of icon_size.

    Returns:
        RGB PIL image (n * icon_size, n * icon_size).
    """
    if icon_size <= 0:
        raise ValueError(f"icon_size must be positive; Received: icon_size={icon_size!r}")
    if not 0 <= frame <= icon_size // 4:
        raise ValueError(
            f"frame must be in 0..icon_size // 4 = {icon_size // 4}; Received: frame={frame!r}"
        )
    side = atlas.n * icon_size
    canvas = np.empty((side, side, 3), dtype=np.uint8)  # (H, W, 3)
    canvas[:] = BACKGROUND
    scale = _attribution_scale(atlas.cells)
    for cell in atlas.cells:
        block = _icon_at(icons, cell, icon_size).copy()  # (icon, icon, 3)
        if frame:
            colour = attribution_colour(cell.attribution, scale)
            block[:frame], block[-frame:] = colour, colour
            block[:, :frame], block[:, -frame:] = colour, colour
        top, left = cell.y * icon_size, cell.x * icon_size
        canvas[top : top + icon_size, left : left + icon_size] = block
    return Image.fromarray(canvas, mode="RGB")


# --- class-pair view -----------------------------------------------------------------------


def _class_name(classes: ClassList, index: int) -> str:
    """`classes[index].name`, or `#index` for an index outside the class list."""
    return classes[index].name if 0 <= index < len(classes) else f"#{index}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sides(cells: Sequence[Cell], top: int) -> tuple[list[Cell], list[Cell]]:
    """(src side, dst side): up to `top` cells with attribution < 0, most negative first, and
    up to `top` with attribution > 0, in `rank_cells` order (most dst-favouring first; ties
    by count). Splitting by sign keeps a cell from showing on the wrong side when one side
    has few cells (or none); neutral and non-finite cells show on neither."""
    ranked = rank_cells([c for c in cells if np.isfinite(c.attribution)])
    dst = [c for c in ranked if c.attribution > 0]
    src = sorted((c for c in ranked if c.attribution < 0), key=lambda c: (c.attribution, -c.count))
    return src[:top], dst[:top]


def _point_colours(x: np.ndarray) -> np.ndarray:
    """RGBA (N, 4) in 0..1 for pair-view x positions (N,): 0.5 neutral, > 0.5 dst, < 0.5 src,
    coloured like cells with the offset from 0.5 as attribution and its largest |.| as scale.
    """
    offset = np.nan_to_num(np.asarray(x, dtype=np.float64) - 0.5)  # (N,)
    peak = float(np.abs(offset).max()) if offset.size else 0.0
    rgb = _blend(offset, peak) / 255  # (N, 3)
    return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1)


def render_pair_atlas(
    atlas: Atlas,
    samples: ActivationSamples,
    icons: IconMap,
    classes: ClassList,
    *,
    top: int = 12,
    columns: int = 3,
    width: int = 1600,
    dpi: int = 100,
) -> Image.Image:
    """The article's class-pair view, with the strongest cells of each side as icons.

    Middle: every sample at `atlas.pair_xy` (x = scaled pair attribution, 0.5 neutral, right
    favours dst; y = 1-D layout), coloured by the side it favours. Left: the `top` cells most
    favouring `src` (most negative attribution first); right: the `top` most favouring `dst`.
    Each icon is framed in its attribution colour and labelled with a tag (`S1`, `D1`, ...),
    its count, its mean attribution and its top two supported classes; the same tag marks the
    cell's mean pair-view position in the scatter. Title: "<src> -> <dst> at <layer>".

    Args:
        atlas: the atlas (`pair`, `layer`, `pair_xy`, `cells`).
        samples: the samples the atlas was built from (only their count is checked).
        icons: {(x, y): uint8 (icon, icon, 3)}, as from `cell_icons`.
        classes: names for `cell.top_classes`.
        top: icons per side; fewer are shown when fewer cells favour that side.
        columns: icon columns per side.
        width: figure width in pixels; the height follows from the number of icon rows.
        dpi: figure resolution (font sizes are in points, so this sets their pixel size).

    Returns:
        RGB PIL image (width, height).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if top < 1 or columns < 1:
        raise ValueError(f"top and columns must be >= 1; Received: top={top}, columns={columns}")
    pair_xy = np.asarray(atlas.pair_xy, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    if len(pair_xy) != len(samples):
        raise ValueError(
            f"atlas.pair_xy must have one row per sample ({len(samples)}); "
            f"Received: {len(pair_xy)} rows"
        )
    src_name, dst_name = atlas.pair.src.name, atlas.pair.dst.name
    src_cells, dst_cells = _sides(atlas.cells, top)
    scale = _attribution_scale(atlas.cells)

    # Layout in pixels: title band, then [src icons | scatter | dst icons], legend band.
    rows = -(-top // columns)
    slot_w, slot_h = 150, 175  # one icon with three lines of 8 pt text under it
    head, foot, gap = 80, 100, 70
    panel_w = columns * slot_w
    height = max(700, head + rows * slot_h + foot)
    if width < 2 * panel_w + 3 * gap + 200:
        raise ValueError(
            f"width must leave room for the scatter (>= {2 * panel_w + 3 * gap + 200} px with "
            f"columns={columns}); Received: width={width}"
        )
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)

    def axes_px(left: float, bottom: float, w: float, h: float):  # pixel box -> new axes
        return fig.add_axes((left / width, bottom / height, w / width, h / height))

    fig.text(
        0.5,
        1 - 28 / height,
        f"{src_name} -> {dst_name} at {atlas.layer}",
        ha="center",
        va="center",
        fontsize=20,
        weight="bold",
    )
    fig.text(
        0.5,
        1 - 58 / height,
        f"{len(pair_xy)} samples, {len(atlas.cells)} cells on a {atlas.n}x{atlas.n} grid; "
        f"icons: the {top} cells most favouring each class",
        ha="center",
        va="center",
        fontsize=11,
        color="0.35",
    )

    # Scatter: every sample in the pair view.
    body_h = height - head - foot
    scatter_left = panel_w + 2 * gap
    scatter_w = width - 2 * panel_w - 4 * gap + 40
    ax = axes_px(scatter_left, foot, scatter_w, body_h)
    size = float(np.clip(20000 / max(len(pair_xy), 1), 1.0, 16.0))
    ax.scatter(
        pair_xy[:, 0],
        pair_xy[:, 1],
        s=size,
        c=_point_colours(pair_xy[:, 0]),
        alpha=0.6,
        linewidths=0,
        rasterized=True,
    )
    ax.axvline(0.5, color="0.5", lw=1, ls="--", zorder=0)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_yticks([])
    ax.set_xticks([0.0, 0.5, 1.0], [f"← {src_name}", "neutral", f"{dst_name} →"])
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel("pair attribution (dst − src), scaled", fontsize=10)
    ax.set_ylabel("layout (1-D)", fontsize=10)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    for tag, group in (("S", src_cells), ("D", dst_cells)):
        for rank, cell in enumerate(group, start=1):
            members = np.asarray(cell.members, dtype=np.int64)
            if not members.size:
                continue
            cx, cy = pair_xy[members].mean(axis=0)
            colour = np.asarray(attribution_colour(cell.attribution, scale)) / 255
            ax.plot(cx, cy, "o", ms=7, mfc=colour, mec="black", mew=0.8, zorder=3)
            ax.annotate(
                f"{tag}{rank}",
                (cx, cy),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=8,
                weight="bold",
                zorder=4,
            )
    legend = [
        Patch(color=np.asarray(SRC_COLOUR) / 255, label=f"favours {src_name} (src, left)"),
        Patch(color=np.asarray(NEUTRAL_COLOUR) / 255, label="neutral"),
        Patch(color=np.asarray(DST_COLOUR) / 255, label=f"favours {dst_name} (dst, right)"),
    ]
    fig.legend(
        handles=legend,
        loc="lower center",
        ncol=3,
        fontsize=11,
        frameon=False,
        bbox_to_anchor=(0.5, 2 / height),
    )

    # Side panels of icons.
    for group, left, tag, name, colour in (
        (src_cells, gap / 2, "S", src_name, SRC_COLOUR),
        (dst_cells, width - panel_w - gap / 2, "D", dst_name, DST_COLOUR),
    ):
        arrow = f"← favours {name}" if tag == "S" else f"favours {name} →"
        fig.text(
            (left + panel_w / 2) / width,
            (foot + body_h + 8) / height,
            arrow,
            ha="center",
            va="bottom",
            fontsize=13,
            weight="bold",
            color=np.asarray(colour) / 255,
        )
        if not group:
            fig.text(
                (left + panel_w / 2) / width,
                (foot + body_h / 2) / height,
                f"no cell favours {name}",
                ha="center",
                va="center",
                fontsize=11,
                color="0.4",
            )
        for rank, cell in enumerate(group):
            row, col = divmod(rank, columns)
            icon_side = slot_w - 24
            x = left + col * slot_w + (slot_w - icon_side) / 2
            y = foot + body_h - (row + 1) * slot_h + (slot_h - icon_side) - 4
            icon_ax = axes_px(x, y, icon_side, icon_side)
            icon_ax.imshow(_icon_at(icons, cell, 0), interpolation="bilinear")
            icon_ax.set_xticks([])
            icon_ax.set_yticks([])
            frame_colour = np.asarray(attribution_colour(cell.attribution, scale)) / 255
            for spine in icon_ax.spines.values():
                spine.set_edgecolor(frame_colour)
                spine.set_linewidth(3)
            names = [_short(_class_name(classes, int(i)), 20) for i, _ in cell.top_classes[:2]]
            label = "\n".join([f"{tag}{rank + 1}  n={cell.count}  {cell.attribution:+.3g}", *names])
            fig.text(
                (x + icon_side / 2) / width,
                (y - 3) / height,
                label,
                ha="center",
                va="top",
                fontsize=8,
                linespacing=1.15,
            )

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4)
    return Image.fromarray(rgba[..., :3].copy(), mode="RGB")


# --- HTML ----------------------------------------------------------------------------------


def _png_data_uri(icon: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(icon, mode="RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #555; margin-bottom: 8px; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; color: #fff; }
.controls { margin: 8px 0; }
.wrap { display: flex; gap: 16px; align-items: flex-start; }
.atlas { display: grid; gap: 0; background: #f2f2f2; }
.atlas.sorted { display: flex; flex-wrap: wrap; }
.cell { box-sizing: border-box; border: 3px solid; line-height: 0; cursor: crosshair; }
.cell img { width: 100%; height: 100%; image-rendering: auto; }
.cell:hover { outline: 2px solid #000; z-index: 1; }
#info { white-space: pre-line; min-width: 260px; max-width: 340px; padding: 8px;
        border: 1px solid #ccc; background: #fafafa; position: sticky; top: 16px; }
"""

_JS = """
(function () {
  var info = document.getElementById('info');
  var atlas = document.getElementById('atlas');
  document.querySelectorAll('#atlas .cell').forEach(function (cell) {
    cell.addEventListener('mouseenter', function () { info.textContent = cell.dataset.info; });
  });
  document.getElementById('sort').addEventListener('click', function (event) {
    var sorted = atlas.classList.toggle('sorted');
    event.target.textContent = sorted ? 'Show grid layout' : 'Sort by attribution';
  });
})();
"""


def render_html(
    atlas: Atlas,
    samples: ActivationSamples,
    icons: IconMap,
    classes: ClassList,
    *,
    title: str,
    icon_size: int = 64,
) -> str:
    """A self-contained HTML page of the atlas grid (icons inlined as PNG data URIs).

    One `<div class="cell">` per cell, placed at its (x, y) in a CSS grid and framed in its
    attribution colour. Hovering a cell shows its position, count, mean attribution, share
    of members from the dst / src class images and top classes; a button re-orders the cells
    by attribution (most dst-favouring first). No external resources; all text is escaped.

    Args:
        atlas: the atlas (`pair`, `layer`, `n`, `cells`).
        samples: the samples the atlas was built from (for member labels).
        icons: {(x, y): uint8 (icon, icon, 3)}, as from `cell_icons`.
        classes: names for `cell.top_classes`.
        title: page title (escaped).
        icon_size: displayed cell side in CSS pixels; icons are embedded at their own size.

    Returns:
        The HTML document as a string.
    """
    esc = html.escape
    scale = _attribution_scale(atlas.cells)
    src, dst = atlas.pair.src, atlas.pair.dst
    # Flex `order` for the sorted view: `rank_cells` order, non-finite attributions last.
    finite = [c for c in atlas.cells if np.isfinite(c.attribution)]
    ranked = rank_cells(finite) + [c for c in atlas.cells if not np.isfinite(c.attribution)]
    rank = {id(cell): position for position, cell in enumerate(ranked)}
    labels = np.asarray(samples.label)
    cells_html = []
    for cell in atlas.cells:
        icon = _icon_at(icons, cell, 0)  # embedded at its own size, shown at icon_size
        members = np.asarray(cell.members, dtype=np.int64)
        member_labels = labels[members] if members.size else labels[:0]
        tops = ", ".join(
            f"{_class_name(classes, int(i))} ({value:+.3g})" for i, value in cell.top_classes
        )
        info = (
            f"cell ({cell.x}, {cell.y})\n"
            f"count: {cell.count}\n"
            f"attribution ({dst.name} − {src.name}): {cell.attribution:+.4g}\n"
            f"members from {dst.name} images: {int(np.sum(member_labels == dst.index))}, "
            f"from {src.name} images: {int(np.sum(member_labels == src.index))}\n"
            f"top classes: {tops or 'none'}"
        )
        r, g, b = attribution_colour(cell.attribution, scale)
        style = (
            f"grid-column:{cell.x + 1};grid-row:{cell.y + 1};order:{rank[id(cell)]};"
            f"border-color:rgb({r},{g},{b});width:{icon_size}px;height:{icon_size}px"
        )
        cells_html.append(
            f'<div class="cell" style="{style}" data-attribution="{cell.attribution:.6g}" '
            f'data-info="{esc(info)}" title="{esc(info)}">'
            f'<img src="{_png_data_uri(icon)}" alt="{esc(f"cell ({cell.x}, {cell.y})")}"></div>'
        )
    src_rgb = "rgb({},{},{})".format(*SRC_COLOUR)
    dst_rgb = "rgb({},{},{})".format(*DST_COLOUR)
    grid_style = (
        f"grid-template-columns:repeat({atlas.n},{icon_size}px);"
        f"grid-template-rows:repeat({atlas.n},{icon_size}px);"
        f"width:{atlas.n * icon_size}px"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            f'<div class="meta">{esc(src.name)} -&gt; {esc(dst.name)} at {esc(atlas.layer)}: '
            f"{len(samples)} samples, {len(atlas.cells)} cells on a {atlas.n}x{atlas.n} grid"
            "</div>",
            f'<div class="legend"><span style="background:{src_rgb}">favours '
            f"{esc(src.name)}</span>"
            f'<span style="background:rgb(150,150,150)">neutral</span>'
            f'<span style="background:{dst_rgb}">favours {esc(dst.name)}</span></div>',
            '<div class="controls"><button id="sort" type="button">Sort by attribution'
            "</button></div>",
            '<div class="wrap">',
            f'<div id="atlas" class="atlas" style="{grid_style}">',
            *cells_html,
            "</div>",
            '<div id="info">Hover a cell to see its count, attribution and top classes.</div>',
            "</div>",
            f"<script>{_JS}</script>",
            "</body></html>",
            "",
        ]
    )


# --- files ---------------------------------------------------------------------------------


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG at `path` atomically (no half-written file on failure)."""
    with atomic_write(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_text(text: str, path: str | Path) -> Path:
    """Write `text` (UTF-8) at `path` atomically, e.g. the page from `render_html`."""
    return write_text(path, text)


def write_atlas(
    folder: str | Path,
    samples: ActivationSamples,
    atlas: Atlas,
    classes: ClassList,
    *,
    details: Mapping[str, object],
    icon_size: int = 64,
    icons: str = "natural",
    model: object | None = None,
    featurevis_steps: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Write an atlas run into `folder`; returns {name: path}.

    Files: `activations.npz` (the vectors with their provenance), `atlas.npz` (layout and
    grid, enough to rebuild the cells), `cells.csv` (most dst-favouring first), `atlas.png`,
    `pair_atlas.png`, `atlas.html` and `provenance.json` (`details` plus the environment).
    Each file is written atomically, so an interrupted run never leaves a truncated one.

    Icons are `cell_icons`' natural crops, or with `icons="featurevis"` Lucid-style feature
    visualisations of each cell's mean activation (`featurevis.feature_icons`, `steps` and
    `seed` as given, `progress` called after each step); those need the `model.Classifier`
    the atlas was built with as `model`, and take minutes on a CPU.
    """
    if icons not in ("natural", "featurevis"):
        raise ValueError(f"icons must be 'natural' or 'featurevis'; Received: icons={icons!r}")
    if icons == "featurevis" and model is None:
        raise ValueError("Feature-visualisation icons need the atlas's model; Received: model=None")
    import pandas as pd

    from patchfinder.activations import save_samples
    from patchfinder.atlas import cells_table, save_atlas
    from patchfinder.provenance import provenance

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if icons == "featurevis":
        from patchfinder.featurevis import feature_icons

        directions = np.stack([cell.mean_activation for cell in atlas.cells])  # (C, D)
        drawn = feature_icons(
            model, atlas.layer, directions, icon_size=icon_size, steps=featurevis_steps,
            seed=seed, progress=progress,
        )  # fmt: skip
        icon_map = {(c.x, c.y): icon for c, icon in zip(atlas.cells, drawn, strict=True)}
    else:
        icon_map = cell_icons(atlas, samples, icon_size=icon_size)
    title = f"{atlas.pair.src.name} -> {atlas.pair.dst.name} at {atlas.layer}"
    written = {
        "activations": save_samples(samples, folder / "activations.npz"),
        "atlas": save_atlas(atlas, folder / "atlas.npz"),
        "cells": write_csv(
            folder / "cells.csv", pd.DataFrame(cells_table(atlas, samples, classes))
        ),
        "atlas_png": save_png(
            render_atlas(atlas, icon_map, icon_size=icon_size), folder / "atlas.png"
        ),
        "pair_atlas_png": save_png(
            render_pair_atlas(atlas, samples, icon_map, classes), folder / "pair_atlas.png"
        ),
        "html": save_text(
            render_html(atlas, samples, icon_map, classes, title=title, icon_size=icon_size),
            folder / "atlas.html",
        ),
    }
    written["provenance"] = write_json(folder / "provenance.json", provenance(**details))
    return written
