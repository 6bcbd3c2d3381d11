"""Where patches go and how they are pasted: composable placements, batched pasting in TF ops.

A `Placement` is a small value that says where a patch of a given side goes on an image of a
given side: the article's four flush corners (`Corners`), a `Grid`, `RandomPositions`, the
`Centre`, and `Rotated(placement, angles=...)` on top of any of them. Placements add up:

    placement = Corners() + Centre()                  # 5 positions
    placement = Rotated(Corners(), angles=(0, 90))    # 8 positions
    placement = parse_placements("corners@0,90+centre")

Sizes are fractions of the image side (`DEFAULT_SIZES`); a patch of size f is resized to a
square of side `round(f * S)` pixels (`patch_side`). The aspect ratio is *not* kept: every
patch then covers the same area at the same size, so a patch cannot win by hiding more of
the image, and the article's patches are square crops anyway.

Pasting is alpha compositing of a *layer*: the patch resized, moved (and rotated) onto an
S x S canvas by one projective transform (`tf.raw_ops.ImageProjectiveTransformV3`) of the
patch and a coverage channel, bilinear, transparent outside the patch:

    layer = transform([patch, 1])                # (U, S, S, 4): premultiplied RGB, coverage
    pasted = image * (1 - coverage) + layer_rgb  # one gather + blend per pasted image

An unrotated patch lands on whole pixels, so inside it the result *is* the resized patch and
outside it *is* the image, bit for bit; a rotated one is antialiased at its edge. Rotation is
about the patch centre, counter-clockwise as displayed (90 degrees = `np.rot90`); a patch
rotated by other than a multiple of 90 degrees reaches beyond its unrotated box (cut at the
image edge), and every pixel it does not cover keeps the background.

`iterate_pasted` streams images x patches x sizes x positions in batches of at most
`batch_size` pasted images and never holds more: memory does not grow with the number of
patches or positions. Everything runs as plain TF ops, on the GPU when there is one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, fields

import numpy as np
import tensorflow as tf

from patchfinder.types import Patch

#: Patch sides as fractions of the image side, as in the article's size sweep.
DEFAULT_SIZES: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class Position:
    """Where one patch goes.

    Attributes:
        name: unique within a placement (`top-left`, `grid-0-2`, `random-3`, `centre@90`);
            the `placement` column of the flip tables.
        x, y: the top-left corner of the patch's (unrotated) box, in pixels (x right, y down).
        angle: rotation in degrees, counter-clockwise as displayed, about the patch centre.
    """

    name: str
    x: int
    y: int
    angle: float = 0.0


def patch_side(size: float, image_size: int) -> int:
    """The side in pixels of a patch of `size` (fraction of the image side): round(size * S)."""
    if not 0.0 < size <= 1.0:
        raise ValueError(
            f"A patch size is a fraction of the image side in (0, 1]; Received: {size}"
        )
    return max(1, math.floor(size * image_size + 0.5))


def resize_patch(pixels: np.ndarray | tf.Tensor, side: int) -> tf.Tensor:
    """A patch (h, w, 3) resized to (side, side, 3), aspect ignored (see the module notes).

    Bilinear with antialiasing when shrinking (as `data.load_image` resizes photos); a patch
    already of that size is returned unchanged.
    """
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    if pixels.shape.rank != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"A patch must be (h, w, 3); Received: {pixels.shape}")
    if pixels.shape[0] == side and pixels.shape[1] == side:
        return pixels
    resized = tf.image.resize(pixels, (side, side), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


# --- placements --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where patches go. Subclasses implement `positions` only; this base checks them
    (`resolve`, `layout`), composes placements (`+`), names them (`str` is a spec that
    `parse_placements` reads back) and pastes (`__call__`).
    """

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        """The positions of a patch of side `patch_side` on an image of side `image_size`."""
        raise NotImplementedError

    def resolve(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> tuple[Position, ...]:
        """`positions`, checked: every box inside the image, names unique."""
        if not 1 <= patch_side <= image_size:
            raise ValueError(
                f"The patch side must be in 1..{image_size}; Received: patch_side={patch_side}"
            )
        found = tuple(self.positions(image_size, patch_side, rng))
        last = image_size - patch_side
        outside = [p for p in found if not (0 <= p.x <= last and 0 <= p.y <= last)]
        if outside:
            raise ValueError(
                f"{self} must keep a {patch_side}-pixel patch inside a {image_size}-pixel image; "
                f"Received: {outside[0]}"
            )
        names = [p.name for p in found]
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Position names must be unique in {self}; repeated: {repeated}")
        return found

    def layout(
        self, image_size: int, sizes: Sequence[float], rng: np.random.Generator
    ) -> tuple[tuple[Position, ...], ...]:
        """The positions for each size, in order (Z sizes x L positions, same names each)."""
        layouts = tuple(self.resolve(image_size, patch_side(s, image_size), rng) for s in sizes)
        names = [tuple(p.name for p in positions) for positions in layouts]
        if any(n != names[0] for n in names):
            raise ValueError(f"{self} names its positions differently per size: {names}")
        return layouts

    def parts(self) -> tuple[Placement, ...]:
        """The placements this one is the sum of (itself, unless it is a `Combined`)."""
        return (self,)

    def __add__(self, other: Placement) -> Placement:
        if not isinstance(other, Placement):
            return NotImplemented
        return Combined((*self.parts(), *other.parts()))

    def __str__(self) -> str:
        token = _TOKENS.get(type(self))
        if token is None:  # a placement defined elsewhere: no spec, its repr
            return repr(self)
        values = [str(getattr(self, f.name)) for f in fields(self)]
        return ":".join([token, *values])

    def __call__(
        self,
        images: np.ndarray | tf.Tensor,
        patch: Patch | np.ndarray | tf.Tensor,
        rng: np.random.Generator,
        *,
        size: float,
    ) -> tf.Tensor:
        """Paste `patch` at every position onto every image.

        Args:
            images: float32 (B, S, S, 3) in 0..255.
            patch: a `Patch` or its pixels (h, w, 3).
            rng: draws the positions of random placements.
            size: patch side as a fraction of S.

        Returns:
            float32 (L * B, S, S, 3): position-major, image fastest (row l * B + b).
        """
        images = tf.convert_to_tensor(images, tf.float32)
        image_size = int(images.shape[1])
        side = patch_side(size, image_size)
        pixels = patch.pixels if isinstance(patch, Patch) else patch
        positions = self.resolve(image_size, side, rng)
        return paste_batch(images, resize_patch(pixels, side)[None], positions)


@dataclass(frozen=True, kw_only=True)
class Corners(Placement):
    """The article's four corners, flush with the image edges."""

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        last = image_size - patch_side
        return [
            Position("top-left", 0, 0),
            Position("top-right", last, 0),
            Position("bottom-left", 0, last),
            Position("bottom-right", last, last),
        ]


@dataclass(frozen=True, kw_only=True)
class Centre(Placement):
    """The centre of the image (rounded towards the top-left)."""

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        middle = (image_size - patch_side) // 2
        return [Position("centre", middle, middle)]


@dataclass(frozen=True, kw_only=True)
class Grid(Placement):
    """An n x n grid of evenly spaced boxes, the outer ones flush with the edges.

    Names are `grid-ROW-COL`; n = 1 is the centre.
    """

    n: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.n, (int, np.integer)) or self.n < 1:
            raise ValueError(f"Grid needs n >= 1; Received: n={self.n!r}")

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        last = image_size - patch_side
        if self.n == 1:
            steps = [last // 2]
        else:
            steps = [math.floor(k * last / (self.n - 1) + 0.5) for k in range(self.n)]
        return [
            Position(f"grid-{row}-{col}", x, y)
            for row, y in enumerate(steps)
            for col, x in enumerate(steps)
        ]


@dataclass(frozen=True, kw_only=True)
class RandomPositions(Placement):
    """`count` boxes drawn uniformly inside the image from the `rng` passed in.

    Names are `random-0`, `random-1`, ...; the same rng state gives the same positions.
    """

    count: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.count, (int, np.integer)) or self.count < 1:
            raise ValueError(f"RandomPositions needs count >= 1; Received: count={self.count!r}")

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        corners = rng.integers(0, image_size - patch_side + 1, size=(self.count, 2))
        return [Position(f"random-{k}", int(x), int(y)) for k, (x, y) in enumerate(corners)]


@dataclass(frozen=True)
class Rotated(Placement):
    """Every position of `placement` at every angle (degrees, counter-clockwise as displayed).

    Names get the angle appended: `top-left@90`.
    """

    placement: Placement
    _: KW_ONLY
    angles: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)

    def __post_init__(self) -> None:
        angles = tuple(float(a) for a in self.angles)
        if not angles or not all(math.isfinite(a) for a in angles):
            raise ValueError(f"Rotated needs finite angles; Received: angles={self.angles!r}")
        object.__setattr__(self, "angles", angles)

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        inner = self.placement.resolve(image_size, patch_side, rng)
        return [
            Position(f"{p.name}@{angle:g}", p.x, p.y, p.angle + angle)
            for p in inner
            for angle in self.angles
        ]

    def __str__(self) -> str:
        angles = ",".join(f"{a:g}" for a in self.angles)
        return "+".join(f"{part}@{angles}" for part in self.placement.parts())


@dataclass(frozen=True)
class Combined(Placement):
    """The positions of several placements, in order (what `a + b` builds)."""

    placements: tuple[Placement, ...]

    def positions(
        self, image_size: int, patch_side: int, rng: np.random.Generator
    ) -> list[Position]:
        return [p for part in self.placements for p in part.resolve(image_size, patch_side, rng)]

    def parts(self) -> tuple[Placement, ...]:
        return self.placements

    def __str__(self) -> str:
        return "+".join(str(p) for p in self.placements)


#: The article's placement: the four corners (a frozen value, safe as a default argument).
DEFAULT_PLACEMENT: Placement = Corners()

_TOKENS: dict[type, str] = {
    Corners: "corners",
    Centre: "centre",
    Grid: "grid",
    RandomPositions: "random",
}

PLACEMENT_FORMS = (
    "corners",
    "centre",
    "grid:N",
    "random:N",
    "A+B (both)",
    "A@DEG,DEG,... (rotated)",
)


def parse_placements(text: str) -> Placement:
    """A placement from its spec, as the CLI takes it (`str(placement)` reads back).

    `corners`, `centre` (or `center`), `grid:N` (`grid` = 3), `random:N` (`random` = 4),
    joined by `+`, each optionally rotated by `@` and comma-separated degrees:
    `corners@0,90+centre`.

    Raises:
        ValueError: for anything else; the message lists the valid forms.
    """
    terms = [term.strip() for term in text.strip().lower().split("+")]
    try:
        placements = [_parse_term(term) for term in terms]
    except ValueError as error:
        raise ValueError(
            f"Unknown placement; valid forms: {', '.join(PLACEMENT_FORMS)}; "
            f"Received: {text!r} ({error})"
        ) from None
    placement = placements[0]
    for other in placements[1:]:
        placement = placement + other
    return placement


def _parse_term(term: str) -> Placement:
    base, *rotations = (part.strip() for part in term.split("@"))
    match = re.fullmatch(r"(corners|centre|center|grid|random)(?::(\d+))?", base)
    if match is None:
        raise ValueError(f"no placement {base!r}")
    name, number = match.groups()
    if name in ("corners", "centre", "center") and number is not None:
        raise ValueError(f"{name} takes no number")
    placement: Placement
    if name == "grid":
        placement = Grid(n=int(number or 3))
    elif name == "random":
        placement = RandomPositions(count=int(number or 4))
    else:
        placement = Corners() if name == "corners" else Centre()
    for rotation in rotations:
        try:
            angles = tuple(float(a) for a in rotation.split(","))
        except ValueError:
            raise ValueError(f"angles must be numbers, got {rotation!r}") from None
        placement = Rotated(placement, angles=angles)
    return placement


# --- pasting -----------------------------------------------------------------------------


def _rotation(angle: float) -> tuple[float, float]:
    """cos and sin of `angle` degrees, exact at multiples of 90 (so those stay on the grid)."""
    quarter = angle / 90.0
    if quarter == round(quarter):
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[round(quarter) % 4]
    radians = math.radians(angle)
    return math.cos(radians), math.sin(radians)


def transforms(positions: Sequence[Position], side: int) -> np.ndarray:
    """Projective transforms (L, 8) mapping canvas pixels to patch pixels, one per position.

    For output pixel (x, y) the patch is read at (x', y') = R(angle) (x - x0 - c, y - y0 - c)
    + (c, c), c = (side - 1) / 2 the patch centre: the patch moved to (x0, y0), rotated about
    its centre. Rows are `ImageProjectiveTransformV3`'s [a0, a1, a2, b0, b1, b2, 0, 0].
    """
    rows = np.zeros((len(positions), 8), np.float64)
    c = (side - 1) / 2.0
    for row, p in zip(rows, positions, strict=True):
        cos, sin = _rotation(p.angle)
        cx, cy = p.x + c, p.y + c
        row[:6] = (cos, -sin, c - cos * cx + sin * cy, sin, cos, c - sin * cx - cos * cy)
    return rows.astype(np.float32)


def place(
    patches: tf.Tensor, transforms: tf.Tensor, layer_patch: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Layers (U, S, S, 4): patch `layer_patch[u]` moved by `transforms[u]` onto an S x S canvas.

    Args:
        patches: float32 (P, side, side, 3).
        transforms: float32 (U, 8), see `transforms`.
        layer_patch: int32 (U,) which patch each layer shows.

    Returns:
        float32 (U, S, S, 4): RGB premultiplied by coverage, then coverage in 0..1.
    """
    coverage = tf.ones_like(patches[..., :1])
    source = tf.gather(tf.concat([patches, coverage], axis=-1), layer_patch)  # (U, s, s, 4)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=source,
        transforms=transforms,
        output_shape=tf.stack([image_size, image_size]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def composite(
    images: tf.Tensor, layers: tf.Tensor, image_index: tf.Tensor, layer_index: tf.Tensor
) -> tf.Tensor:
    """Pasted images (b, S, S, 3): `layers[layer_index[j]]` over `images[image_index[j]]`.

    Args:
        images: float32 (N, S, S, 3); layers: float32 (U, S, S, 4) from `place`.
        image_index, layer_index: int32 (b,).
    """
    layer = tf.gather(layers, layer_index)  # (b, S, S, 4)
    return tf.gather(images, image_index) * (1.0 - layer[..., 3:]) + layer[..., :3]


@tf.function(
    autograph=False,  # straight-line ops: nothing to convert
    input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32),  # images (N, S, S, 3)
        tf.TensorSpec([None, None, None, 3], tf.float32),  # patches (P, s, s, 3)
        tf.TensorSpec([None, 8], tf.float32),  # transforms (U, 8)
        tf.TensorSpec([None], tf.int32),  # layer_patch (U,)
        tf.TensorSpec([None], tf.int32),  # image_index (b,)
        tf.TensorSpec([None], tf.int32),  # layer_index (b,)
    ],
)
def _paste(images, patches, transforms, layer_patch, image_index, layer_index):
    layers = place(patches, transforms, layer_patch, tf.shape(images)[1])
    return composite(images, layers, image_index, layer_index)


def paste_batch(
    images: np.ndarray | tf.Tensor,
    patches: np.ndarray | tf.Tensor,
    positions: Sequence[Position],
) -> tf.Tensor:
    """Every patch at every position on every image, in one call of tensor ops.

    Args:
        images: float32 (B, S, S, 3) in 0..255.
        patches: float32 (P, side, side, 3), already resized (`resize_patch`).
        positions: L positions for patches of that side (`Placement.resolve`).

    Returns:
        float32 (P * L * B, S, S, 3), patch-major, then position, image fastest:
        row (p * L + l) * B + b.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    patches = tf.convert_to_tensor(patches, tf.float32)
    if patches.shape.rank != 4 or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"patches must be (P, side, side, 3); Received: {patches.shape}")
    count, side, length = int(images.shape[0]), int(patches.shape[1]), len(positions)
    per_patch = np.tile(transforms(positions, side), (int(patches.shape[0]), 1))  # (P*L, 8)
    layer_patch = np.repeat(np.arange(int(patches.shape[0]), dtype=np.int32), length)
    layer_index = np.repeat(np.arange(len(per_patch), dtype=np.int32), count)
    image_index = np.tile(np.arange(count, dtype=np.int32), len(per_patch))
    return _paste(images, patches, per_patch, layer_patch, image_index, layer_index)


@dataclass(frozen=True)
class PastedBatch:
    """One batch of pasted images from `iterate_pasted`.

    Attributes:
        images: float32 (b, S, S, 3), b <= batch_size.
        start: the flat index of the first one (see `iterate_pasted` for the order).
        image_index: int (b,) the source image of each.
    """

    images: tf.Tensor
    start: int
    image_index: np.ndarray


def to_device(images: np.ndarray | tf.Tensor) -> tf.Tensor:
    """float32 images as a tensor on the default device (the GPU when there is one), once."""
    return tf.identity(tf.convert_to_tensor(images, tf.float32))


def iterate_pasted(
    images: np.ndarray | tf.Tensor,
    patches: Sequence[np.ndarray | tf.Tensor],
    *,
    layouts: Sequence[Sequence[Position]],
    sizes: Sequence[float],
    batch_size: int,
) -> Iterator[PastedBatch]:
    """Stream every patch x size x position x image, `batch_size` pasted images at a time.

    The flat order is patch-major, then size, then position, image fastest: item
    ((p * Z + z) * L + l) * N + n. Batches are full except the last, and may span several
    (patch, size) settings; only one batch of pasted images (and its layers) exists at once.

    Args:
        images: float32 (N, S, S, 3) in 0..255 (put them on the device with `to_device`).
        patches: P arrays (h, w, 3) in 0..255, any size.
        layouts: for each of the Z sizes, its L positions (`Placement.layout`).
        sizes: Z patch sizes, fractions of S.
        batch_size: the most pasted images per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; Received: {batch_size!r}")
    if len(layouts) != len(sizes):
        raise ValueError(f"Need one layout per size; Received {len(layouts)} for {len(sizes)}")
    images = tf.convert_to_tensor(images, tf.float32)
    count, image_size = int(images.shape[0]), int(images.shape[1])
    length = len(layouts[0]) if layouts else 0
    if any(len(layout) != length for layout in layouts):
        lengths = [len(layout) for layout in layouts]
        raise ValueError(f"Every size needs the same number of positions; Received: {lengths}")
    sides = [patch_side(s, image_size) for s in sizes]
    per_size = [transforms(layout, side) for layout, side in zip(layouts, sides, strict=True)]
    total = len(patches) * len(sizes) * length * count
    resized: dict[int, tf.Tensor] = {}  # the current setting's patch, (1, side, side, 3)
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))
        image_index = (flat % count).astype(np.int32)
        position = (flat // count) % length
        setting = flat // (count * length)  # p * Z + z
        parts = []
        for key in np.unique(setting):
            here = setting == key
            patch, size = divmod(int(key), len(sizes))
            if key not in resized:
                resized = {key: resize_patch(patches[patch], sides[size])[None]}
            used, layer_index = np.unique(position[here], return_inverse=True)
            pasted = _paste(
                images,
                resized[key],
                per_size[size][used],
                np.zeros(len(used), np.int32),
                image_index[here],
                layer_index.astype(np.int32),
            )
            parts.append(pasted)
        batch = parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)
        yield PastedBatch(batch, start, image_index)
