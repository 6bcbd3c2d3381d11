"""Image sets and robust decoding: find labelled photos on disk and turn them into model input.

Users point patchfinder at folders of photos, and a long run must never die on one bad file.
`find_images` understands four layouts (a folder with `labels.csv`, ImageNet-style class
subfolders, a folder of loose images, explicit files). `load_image` decodes any common mode
(palette, grayscale, 16-bit, CMYK, alpha, EXIF-rotated) to float32 RGB in 0..255 and turns
every decoding failure into `ImageError`. `iterate_batches` streams a set of any size through
`tf.data`, skipping the files that fail, logging them and recording them in a `LoadSummary`.

Design choices:

* Transparent images (RGBA, LA, PA, P or L/RGB with a `transparency` key) are composited on
  white (`ALPHA_BACKGROUND`) before resizing: the colour under a transparent pixel is
  undefined (often black or junk), and white is how such images are shown on a page.
* Resizing is PIL's bilinear filter, which widens its support when shrinking (antialiased).
  Only the centre crop is resampled (`Image.resize(box=...)`), which equals "resize the
  shorter side to size / crop_fraction, then centre crop size x size" up to rounding.
* 16-bit and 32-bit integer images are scaled by their bit depth (65535 -> 255), never
  clipped; float (`F`) images in 0..1 are scaled by 255. They are resampled in float.
* Images over `MAX_PIXELS` (PIL's own default limit, about 89 megapixels) raise `ImageError`
  from the header alone, before any pixel is decoded, so an image that would only draw PIL's
  `DecompressionBombWarning` is rejected too.
"""

from __future__ import annotations

import collections
import csv
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from patchfinder import labels
from patchfinder.labels import ClassList, ImageClass, UnknownClassError

logger = logging.getLogger("patchfinder.data")

#: File extensions (lower case, with the dot) treated as images when scanning folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
#: Name of the per-folder label file.
LABELS_FILE = "labels.csv"
#: Largest image (width * height) that `load_image` decodes by default: PIL's default
#: `Image.MAX_IMAGE_PIXELS`, above which PIL would only warn (DecompressionBombWarning).
#: The centre crop every stage uses by default: the classic ImageNet evaluation crop
#: (shorter side resized to size / 0.875), the view the zoo's models were evaluated on.
DEFAULT_CROP = 0.875

MAX_PIXELS: int = 89_478_485
#: RGB colour that transparent pixels are composited on.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


# --------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One image file and its class (`None` when the class is not known)."""

    path: Path
    label: ImageClass | None = None


class ImageSet(Sequence[ImageRecord]):
    """An ordered, immutable list of `ImageRecord`s, tied to the `ClassList` of its labels.

    Attributes:
        classes: the class list the labels belong to.
        missing: files that a `labels.csv` listed but that do not exist (already warned).
    """

    def __init__(
        self,
        records: Iterable[ImageRecord],
        *,
        classes: ClassList,
        missing: Iterable[Path] = (),
    ) -> None:
        self._records = tuple(records)
        self.classes = classes
        self.missing: tuple[Path, ...] = tuple(missing)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageSet(self._records[index], classes=self.classes)
        return self._records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self._records)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageSet)
            and self._records == other._records
            and self.classes == other.classes
        )

    def __hash__(self) -> int:
        return hash(self._records)

    def __repr__(self) -> str:
        labelled = sum(r.label is not None for r in self._records)
        return f"ImageSet({len(self)} images, {labelled} labelled)"

    @property
    def records(self) -> tuple[ImageRecord, ...]:
        return self._records

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self._records]

    @property
    def labels(self) -> list[ImageClass | None]:
        return [r.label for r in self._records]

    def counts(self) -> collections.Counter[ImageClass | None]:
        """Number of images per class (`None` counts the unlabelled ones)."""
        return collections.Counter(self.labels)

    def filter(self, classes: Iterable[str | int | ImageClass] | str | ImageClass) -> ImageSet:
        """The images whose label is one of `classes` (names, wnids, indices or `ImageClass`).

        Unlabelled images are dropped. Order is kept.

        Raises:
            UnknownClassError: a class is not in `self.classes` (with suggestions).
        """
        if isinstance(classes, (str, int, ImageClass)):
            classes = [classes]
        wanted = {self._resolve(query) for query in classes}
        return ImageSet(
            (r for r in self._records if r.label in wanted),
            classes=self.classes,
        )

    def _resolve(self, query: str | int | ImageClass) -> ImageClass:
        if isinstance(query, ImageClass):
            if 0 <= query.index < len(self.classes) and self.classes[query.index] == query:
                return query
            return self.classes.get(query.wnid or query.name)
        return self.classes.get(query)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"


def _image_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Sorted image files in `folder` (skipping hidden files and folders)."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_file(p))
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _is_hidden(Path(d))]
        found.extend(Path(root) / f for f in files if _is_image_file(Path(f)))
    return sorted(p for p in found if p.is_file())


def _resolve_label(classes: ClassList, text: str) -> ImageClass:
    """A class from a wnid or name; plain numbers are not accepted as labels."""
    if text.strip().isdigit():
        raise UnknownClassError(text, ["a wnid such as n04251144 or a class name"])
    return classes.get(text)


def _with_context(error: UnknownClassError, context: str) -> UnknownClassError:
    error.message = f"{context}: {error.message}"
    error.args = (error.message,)
    return error


def _read_labels_csv(csv_path: Path, classes: ClassList) -> tuple[list[ImageRecord], list[Path]]:
    """Records listed in a labels file, and the listed files that do not exist."""
    folder = csv_path.parent
    records: list[ImageRecord] = []
    missing: list[Path] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [(h or "").strip().lower() for h in reader.fieldnames or []]
        if "file" not in header or not ({"wnid", "name"} & set(header)):
            raise ValueError(
                f"{csv_path} must have a `file` column and a `wnid` or `name` column; "
                f"Received columns: {reader.fieldnames}"
            )
        reader.fieldnames = header
        use_wnid = "wnid" in header and any(c.wnid for c in classes)
        for row in reader:
            name = (row.get("file") or "").strip()
            if not name:
                continue
            path = folder / name
            if not path.is_file():
                if len(missing) < 5:
                    logger.warning(
                        "%s line %d: file %s does not exist", csv_path, reader.line_num, path
                    )
                missing.append(path)
                continue
            wnid = (row.get("wnid") or "").strip() if use_wnid else ""
            text = wnid or (row.get("name") or "").strip()
            label = None
            if text:
                try:
                    label = _resolve_label(classes, text)
                except UnknownClassError as error:
                    context = f"{csv_path}, line {reader.line_num} (file {name!r})"
                    raise _with_context(error, context) from None
            records.append(ImageRecord(path, label))
    if missing:
        logger.warning("%s: %d listed files do not exist", csv_path, len(missing))
    records.sort(key=lambda r: r.path)
    return records, missing


def _scan_folder(folder: Path, classes: ClassList) -> list[ImageRecord]:
    """Records for a folder without a labels file: class subfolders, else loose images."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))
    class_folders: list[tuple[Path, ImageClass]] = []
    unknown: list[tuple[Path, UnknownClassError]] = []
    for sub in subfolders:
        try:
            class_folders.append((sub, _resolve_label(classes, sub.name)))
        except UnknownClassError as error:
            unknown.append((sub, error))
    loose = _image_files(folder, recursive=False)
    if class_folders:
        for sub, error in unknown:
            if _image_files(sub, recursive=True):
                raise _with_context(error, f"Class folder {sub}")
        records = [
            ImageRecord(path, label)
            for sub, label in class_folders
            for path in _image_files(sub, recursive=True)
        ]
        if loose:
            logger.warning(
                "%s: %d images outside the class folders are unlabelled", folder, len(loose)
            )
            records += [ImageRecord(path, None) for path in loose]
        records.sort(key=lambda r: r.path)
        return records
    if not loose and unknown:
        with_images = [sub for sub, _ in unknown if _image_files(sub, recursive=True)]
        if with_images:
            raise ValueError(
                f"No images directly in {folder}, and none of its subfolders is named after a "
                f"class (wnid or name), e.g. {with_images[0].name!r}: {unknown[0][1]}"
            )
    return [ImageRecord(path, None) for path in loose]


def find_images(
    paths: Sequence[str | Path] | str | Path, *, classes: ClassList | None = None
) -> ImageSet:
    """Collect images and their labels from folders and files.

    Each path may be:

    1. a folder with `labels.csv` (column `file`, plus `wnid` or `name`; the wnid wins when
       both are there; other columns are ignored; an empty label means unlabelled). A `.csv`
       file given directly is read the same way, relative to its folder;
    2. a folder of class subfolders named by wnid (`n04251144/`) or class name (`snorkel/`),
       searched recursively (so tiny-imagenet's `train/<wnid>/images/` works);
    3. a folder of loose images (unlabelled; subfolders are not searched);
    4. an image file (unlabelled).

    Images are sorted by path within each argument, arguments are kept in order. Hidden files
    and folders are skipped.

    Args:
        paths: folders and files.
        classes: the class list labels are resolved in; defaults to `labels.imagenet()`.

    Returns:
        The records, with `missing` listing csv rows whose file does not exist.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a folder holds no images, a file is not an image, or a labels file
            lacks its columns.
        UnknownClassError: a label or class folder is not in `classes` (with suggestions).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("find_images needs at least one folder or image file")
    classes = labels.imagenet() if classes is None else classes
    records: list[ImageRecord] = []
    missing: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"Image folder or file not found: {path}")
        if path.is_file() and path.suffix.lower() == ".csv":
            found, gone = _read_labels_csv(path, classes)
            missing += gone
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(
                    f"{path} is not an image; expected one of {sorted(IMAGE_EXTENSIONS)} "
                    f"(any case), a labels .csv or a folder"
                )
            found = [ImageRecord(path, None)]
        elif (path / LABELS_FILE).is_file():
            found, gone = _read_labels_csv(path / LABELS_FILE, classes)
            missing += gone
        else:
            found = _scan_folder(path, classes)
        if not found:
            raise ValueError(
                f"No images found in {path} (extensions {sorted(IMAGE_EXTENSIONS)}, any case)"
            )
        records += found
    return ImageSet(records, classes=classes, missing=missing)


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


class ImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, too large, odd mode)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot load image {self.path}: {reason}")


def _high_depth_to_float(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image as mode `F` scaled to 0..255."""
    values = np.asarray(img, dtype=np.float32)
    if img.mode in _INT16_MODES:
        scale = 255.0 / 65535.0
    elif img.mode == "F":
        peak = float(np.nanmax(values)) if values.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0 if peak <= 255.0 else 255.0 / peak
    else:  # "I": 32-bit ints, usually 16-bit data (PNG, TIFF); scale by the range in use.
        peak = float(values.max()) if values.size else 0.0
        scale = 1.0 if peak <= 255 else 255.0 / 65535.0 if peak <= 65535 else 255.0 / peak
    values = np.clip(np.nan_to_num(values) * scale, 0.0, 255.0)
    return Image.fromarray(values.astype(np.float32), mode="F")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded image as `RGB` (or `F` for high bit-depth grayscale)."""
    if img.mode in _INT16_MODES or img.mode in ("I", "F"):
        return _high_depth_to_float(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(
    path: str | Path,
    *,
    size: int,
    crop_fraction: float = DEFAULT_CROP,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Decode an image file into a square RGB array.

    The image is turned upright (EXIF orientation), converted to RGB (see the module notes
    for alpha and 16-bit images), resized with PIL's antialiased bilinear filter so that its
    shorter side is `size / crop_fraction`, and centre-cropped to `size` x `size`.

    Args:
        path: the image file.
        size: output height and width in pixels.
        crop_fraction: the fraction of the shorter side kept, in (0, 1]; 0.875 is the
            classic ImageNet evaluation crop.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard);
            `None` leaves only PIL's own `Image.MAX_IMAGE_PIXELS` check.

    Returns:
        float32 array (size, size, 3), RGB, values in 0..255.

    Raises:
        ImageError: the file is missing, unreadable, truncated, corrupt, too large or in a
            mode that cannot be converted to RGB; the message names the file and reason.
    """
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int; Received: {size!r}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1]; Received: {crop_fraction!r}")
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(path, f"empty image ({width}x{height})")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(
                    path,
                    f"{width}x{height} = {width * height} pixels is over the limit of "
                    f"{max_pixels} (decompression-bomb guard; raise max_pixels to allow it)",
                )
            img.load()
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception as error:
                logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, error)
            rgb = _to_rgb(img)
            short = min(rgb.size)
            side = short * crop_fraction
            left = (rgb.width - side) / 2.0
            top = (rgb.height - side) / 2.0
            out = rgb.resize(
                (int(size), int(size)),
                Image.Resampling.BILINEAR,
                box=(left, top, left + side, top + side),
            )
            array = np.asarray(out, dtype=np.float32)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(path, f"too large for PIL's Image.MAX_IMAGE_PIXELS ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format (corrupt or not an image)") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        reason = str(error) or type(error).__name__
        raise ImageError(path, f"{type(error).__name__}: {reason}") from None
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array, dtype=np.float32)


def load_images(
    records: Iterable[ImageRecord],
    *,
    size: int,
    crop_fraction: float = DEFAULT_CROP,
) -> tuple[np.ndarray, list[ImageRecord], list[tuple[Path, str]]]:
    """Decode a small set of images into one array, skipping the ones that fail.

    Everything is held in memory at once; use `iterate_batches` for large sets.

    Returns:
        (images, loaded, skipped): float32 (N, size, size, 3) in 0..255 for the N images that
        decoded, their records in the same order, and (path, reason) for each failure.
    """
    arrays: list[np.ndarray] = []
    loaded: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for record in records:
        try:
            arrays.append(load_image(record.path, size=size, crop_fraction=crop_fraction))
        except ImageError as error:
            logger.warning("Skipping %s", error)
            skipped.append((record.path, error.reason))
            continue
        loaded.append(record)
    empty = np.zeros((0, size, size, 3), dtype=np.float32)
    stack = np.stack(arrays) if arrays else empty
    return stack, loaded, skipped


# --------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------


@dataclass
class LoadSummary:
    """What a streaming pass decoded: the count loaded, and each skipped file with why."""

    loaded: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"Loaded {self.loaded} images, skipped {len(self.skipped)}"
        return text + "".join(f"\n  {path}: {reason}" for path, reason in self.skipped)


@dataclass
class Batch:
    """A batch of decoded images.

    Attributes:
        images: float32 (B, size, size, 3), RGB in 0..255.
        records: the B records, in the same order.
        indices: int64 (B,) positions of the records in the `ImageSet`.
    """

    images: np.ndarray
    records: list[ImageRecord]
    indices: np.ndarray


def iterate_batches(
    images: Sequence[ImageRecord],
    *,
    size: int,
    batch_size: int = 32,
    crop_fraction: float = DEFAULT_CROP,
    summary: LoadSummary | None = None,
) -> Iterator[Batch]:
    """Stream decoded batches through `tf.data`, skipping files that fail to decode.

    Decoding runs in parallel (`tf.data.AUTOTUNE`) with deterministic order, so batches
    follow the order of `images`; failed files are filtered out before batching, so every
    batch but the last has `batch_size` images. Memory stays bounded by the prefetch buffers
    whatever the number of images. Each skipped file is logged as a warning and appended to
    `summary.skipped` (in set order) as the stream reaches it; `summary.loaded` counts the
    yielded images.

    Args:
        images: the records (usually an `ImageSet`).
        size: output height and width.
        batch_size: images per batch (the last one may be smaller).
        crop_fraction: see `load_image`.
        summary: filled in while iterating; pass one to learn what was skipped.

    Yields:
        `Batch` with images float32 (B, size, size, 3).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive; Received: {batch_size!r}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1]; Received: {crop_fraction!r}")
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int; Received: {size!r}")
    import tensorflow as tf

    summary = LoadSummary() if summary is None else summary
    count = len(images)
    paths = [str(record.path) for record in images]
    failures: dict[int, str] = {}  # filled by decoder threads, drained in order below

    def decode(index: np.ndarray) -> tuple[np.ndarray, np.bool_]:
        position = int(index)
        try:
            array = load_image(paths[position], size=size, crop_fraction=crop_fraction)
            return array, np.bool_(True)
        except ImageError as error:
            failures[position] = error.reason
        except Exception as error:  # never let one file end the stream
            failures[position] = f"{type(error).__name__}: {error}"
        return np.zeros((size, size, 3), np.float32), np.bool_(False)

    def decode_op(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        array, ok = tf.numpy_function(decode, [index], [tf.float32, tf.bool])
        array.set_shape((size, size, 3))
        ok.set_shape(())
        return index, array, ok

    dataset = (
        tf.data.Dataset.range(count)
        .map(decode_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .filter(lambda index, array, ok: ok)
        .map(lambda index, array, ok: (index, array))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    next_position = 0

    def record_skips(until: int) -> None:
        nonlocal next_position
        for position in range(next_position, until):
            reason = failures.pop(position, "decode failed")
            logger.warning("Skipping image %s: %s", paths[position], reason)
            summary.skipped.append((Path(paths[position]), reason))
        next_position = until

    for indices, arrays in dataset.as_numpy_iterator():
        record_skips(int(indices[0]))
        gaps = np.flatnonzero(np.diff(indices) != 1)
        for gap in gaps:
            next_position = int(indices[gap]) + 1
            record_skips(int(indices[gap + 1]))
        next_position = int(indices[-1]) + 1
        summary.loaded += len(indices)
        yield Batch(
            images=arrays,
            records=[images[int(i)] for i in indices],
            indices=indices.astype(np.int64),
        )
    record_skips(count)
