"""The public image sets the experiments use: what they are, where they come from, fetching
them into a data root and checking a local copy.

A data root is a folder with one subfolder per dataset, laid out like the shared data folder
(`PATCHFINDER_DATA`): a flat folder of images and a `labels.csv` (`file, wnid, name, source,
license[, author, url]`), rows sorted by file name. Offline, any copy with that layout serves;
online, `fetch` rebuilds it from each dataset's public GitHub repository at a pinned commit:

    fetch(["imagenet-samples", "activation-atlas-article"], root)   # download, convert, verify
    verify("nips17-dev", root).problems                              # () when the copy is sound
    missing(["tiny-imagenet-targets"], root)                         # names still to fetch

Design choices:

* A dataset appears under `root/<name>/` only complete and verified: it is converted in a
  hidden temporary folder beside the target and renamed into place after `verify`'s checks
  pass, so a killed run never leaves a copy that looks finished. A rerun skips datasets that
  are present and verified, and reuses a downloaded archive kept beside the target
  (`.<name>-<url digest>.tar.gz`, removed once its dataset is in place).
* Archives are read as a stream and only the members a converter needs are written; any
  member whose path is absolute or climbs out with `..` makes the whole archive refused, and
  links are never created (no converter needs one).
* JPEG outputs are re-encoded as RGB at quality 92 (transparent pixels composited on white,
  as `data.load_image` does); the article's PNGs are copied byte for byte.
* Facts the raw repositories do not hold (which class pair each article patch was made for,
  the article originals' classes) are small tables in this module. Lucid InceptionV1's label
  order is not in the article's repository; it comes from patchfinder's own resources.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.client import HTTPException
from importlib import resources
from io import StringIO
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from patchfinder import data, labels
from patchfinder.io import atomic_write, cache_dir, write_text

#: JPEG quality of every re-encoded image (the shared copies use it).
JPEG_QUALITY = 92
#: `license` column of the ImageNet-derived sets.
IMAGENET_TERMS = "ImageNet terms of access (non-commercial research)"

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_LFS_POINTER = b"version https://git-lfs"


class DatasetError(RuntimeError):
    """A dataset could not be fetched, converted or verified; the message says why."""


class DownloadError(DatasetError):
    """An archive could not be downloaded (offline, moved, refused)."""


@dataclass(frozen=True)
class Part:
    """One flat image folder of a dataset and what a sound copy of it holds.

    Attributes:
        folder: path relative to the dataset folder (`"."` for the dataset folder itself).
        labels: name of its CSV label file (first column `file`).
        images: number of images a complete copy has.
        short_side_cap: when set, no image's shorter side exceeds it (pixels).
    """

    folder: str
    labels: str
    images: int
    short_side_cap: int | None = None


#: A converter: (raw repository tree, empty output folder, dataset, step(done, total)).
Converter = Callable[[Path, Path, "Dataset", Callable[[int, int], None]], None]


@dataclass(frozen=True)
class Dataset:
    """A public image set: its source at a pinned commit, and how to build the local layout.

    Attributes:
        name: folder name under a data root, e.g. `imagenet-samples`.
        description: one line for `patchfinder data list`.
        repository: GitHub `owner/name` of the source.
        commit: the pinned commit (40 hex digits).
        license: terms of use, as a person should read them.
        parts: the image folders a sound copy has, with their expected counts.
        members: fnmatch patterns (case-sensitive, `*` also matches `/`) of the archive
            members the converter reads, relative to the archive's top folder.
        convert: builds the layout from the extracted members.
        extras: other files a sound copy has, relative to the dataset folder.
    """

    name: str
    description: str
    repository: str
    commit: str
    license: str
    parts: tuple[Part, ...]
    members: tuple[str, ...]
    convert: Converter = field(repr=False, compare=False)
    extras: tuple[str, ...] = ()

    @property
    def images(self) -> int:
        """Images a complete copy has, over all its parts."""
        return sum(part.images for part in self.parts)

    @property
    def short_commit(self) -> str:
        return self.commit[:8]

    @property
    def source(self) -> str:
        """`owner/name@shortcommit`, as the `source` column writes it."""
        return f"{self.repository}@{self.short_commit}"


@dataclass(frozen=True)
class DatasetReport:
    """What `verify` found, or what `fetch` did, for one dataset.

    Attributes:
        name: the dataset.
        path: its folder.
        images: images found there (over all parts).
        expected: images a complete copy has.
        problems: one sentence each; empty when the copy is sound.
        status: `"verified"` (from `verify`), `"fetched"` (downloaded and converted now) or
            `"skipped"` (`fetch` found it present and verified).
    """

    name: str
    path: Path
    images: int
    expected: int
    problems: tuple[str, ...] = ()
    status: str = "verified"

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.name}: {self.images}/{self.expected} images at {self.path}"
        if self.ok:
            return f"{head} ({self.status}, OK)"
        return head + "".join(f"\n  - {problem}" for problem in self.problems)


@dataclass(frozen=True)
class Progress:
    """One progress event of `fetch` or `verify`.

    Attributes:
        name: the dataset.
        stage: `download` (bytes), `extract` (members written), `convert` and `verify`
            (images), `skip` (present and verified) or `done`.
        done: units finished so far.
        total: units in all, when known.
    """

    name: str
    stage: str
    done: int = 0
    total: int | None = None


ProgressCallback = Callable[[Progress], None]


# --------------------------------------------------------------------------------------
# Image and CSV helpers
# --------------------------------------------------------------------------------------


def _decode_error(path: Path, error: BaseException) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_LFS_POINTER))
    except OSError:
        head = b""
    if head == _LFS_POINTER:
        return f"{path.name}: a Git LFS pointer, not an image (the archive lacks LFS content)"
    return f"{path.name}: cannot be decoded ({type(error).__name__}: {error})"


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _flatten(img: Image.Image) -> Image.Image:
    """RGB, with transparent pixels composited on `data.ALPHA_BACKGROUND`."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, data.ALPHA_BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _capped_size(size: tuple[int, int], cap: int) -> tuple[int, int]:
    """`size` scaled so that its shorter side is `cap` (unchanged when already within it)."""
    width, height = size
    short = min(width, height)
    if short <= cap:
        return size
    scale = cap / short
    # The shorter side is set exactly; rounding the product could give 319 or 321.
    if width <= height:
        return cap, max(1, round(height * scale))
    return max(1, round(width * scale)), cap


def _to_jpeg(source: Path, target: Path, *, short_side_cap: int | None = None) -> None:
    """Re-encode any image as an RGB JPEG (`JPEG_QUALITY`), upright, optionally downscaled.

    Raises:
        DatasetError: when `source` cannot be decoded.
    """
    try:
        with Image.open(source) as opened:
            # Re-encoding drops EXIF, so its orientation must be applied to the pixels now.
            img = _flatten(ImageOps.exif_transpose(opened))
    except _DECODE_ERRORS as error:
        raise DatasetError(f"Raw image {_decode_error(source, error)}") from error
    if short_side_cap is not None:
        size = _capped_size(img.size, short_side_cap)
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)
    img.save(target, "JPEG", quality=JPEG_QUALITY)


def _write_rows(
    path: Path,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, str]],
    *,
    by_file: bool = True,
) -> None:
    """Write a label CSV atomically as the shared copies are written (CRLF, minimal quoting),
    rows sorted by `file` unless `by_file` is false."""
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: row["file"]) if by_file else rows)
    write_text(path, buffer.getvalue())


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _some(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------------------
# Converters: raw repository tree -> shared layout
# --------------------------------------------------------------------------------------

_SAMPLE_NAME = re.compile(r"(n\d{8})_.+\.jpe?g", re.IGNORECASE)


def _convert_imagenet_samples(
    raw: Path, out: Path, dataset: Dataset, step: Callable[[int, int], None]
) -> None:
    """`<wnid>_<name>.JPEG` at the root -> `<wnid>_<canonical name>.jpg`, shorter side capped."""
    classes = labels.imagenet()
    sources = [
        (path, match.group(1))
        for path in sorted(raw.iterdir())
        if path.is_file() and (match := _SAMPLE_NAME.fullmatch(path.name))
    ]
    part = dataset.parts[0]
    rows: dict[str, dict[str, str]] = {}
    for done, (source, wnid) in enumerate(sources, 1):
        try:
            item = classes.get(wnid)
        except labels.UnknownClassError:
            raise DatasetError(
                f"Raw image {source.name} names {wnid}, not an ImageNet-1k class"
            ) from None
        # The repository's own spelling of the name may differ; files use the canonical one.
        file = f"{item.wnid}_{item.name}.jpg"
        if file in rows:
            raise DatasetError(f"Two raw images for class {wnid}; Received: {source.name}")
        _to_jpeg(source, out / file, short_side_cap=part.short_side_cap)
        rows[file] = {
            "file": file,
            "wnid": item.wnid,
            "name": item.name,
            "source": dataset.source,
            "license": IMAGENET_TERMS,
        }
        step(done, len(sources))
    _write_rows(out / part.labels, ("file", "wnid", "name", "source", "license"), rows.values())


def _convert_nips17(
    raw: Path, out: Path, dataset: Dataset, step: Callable[[int, int], None]
) -> None:
    """`dataset/images/<ImageId>.png` + `images.csv` -> `<ImageId>.jpg` with author and URL."""
    table = raw / "dataset" / "images.csv"
    if not table.is_file():
        raise DatasetError(f"The archive has no dataset/images.csv ({dataset.source})")
    classes = labels.imagenet()
    entries = [row for row in _read_rows(table) if row.get("ImageId")]
    rows = []
    for done, entry in enumerate(entries, 1):
        image_id = entry["ImageId"]
        source = raw / "dataset" / "images" / f"{image_id}.png"
        if not source.is_file():
            raise DatasetError(f"images.csv lists {image_id}, but dataset/images/ lacks its PNG")
        # TrueLabel counts from 1: index 0 is the background class of the TF-Slim models.
        label = entry.get("TrueLabel", "")
        index = int(label) - 1 if label.isdigit() else -1
        if not 0 <= index < len(classes):
            raise DatasetError(f"{image_id}: TrueLabel {label!r} is not in 1..1000")
        item = classes[index]
        file = f"{image_id}.jpg"
        _to_jpeg(source, out / file)
        # Authors stay as images.csv spells them (some with octal-escaped UTF-8) so that
        # attributions match the source letter for letter.
        rows.append(
            {
                "file": file,
                "wnid": item.wnid,
                "name": item.name,
                "source": f"{dataset.source} dataset/",
                "license": entry.get("License", ""),
                "author": entry.get("Author", ""),
                "url": entry.get("OriginalLandingURL", ""),
            }
        )
        step(done, len(entries))
    columns = ("file", "wnid", "name", "source", "license", "author", "url")
    _write_rows(out / dataset.parts[0].labels, columns, rows)


#: The Tiny-ImageNet classes kept: frying_pan, wok, snorkel, plate.
TINY_WNIDS: tuple[str, ...] = ("n03400231", "n04596742", "n04251144", "n07579787")
_TINY = "tiny-imagenet-200"


def _convert_tiny(raw: Path, out: Path, dataset: Dataset, step: Callable[[int, int], None]) -> None:
    """Train and val images of `TINY_WNIDS` -> `train_<wnid>_<k>.jpg` and `val_<k>.jpg`."""
    base = raw / _TINY
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(f"The archive has no {_TINY}/val/val_annotations.txt")
    jobs: list[tuple[Path, str, str]] = []  # (raw file, output name, wnid)
    for wnid in TINY_WNIDS:
        for source in sorted((base / "train" / wnid / "images").glob("*.JPEG")):
            jobs.append((source, f"train_{source.stem}.jpg", wnid))
    for line in annotations.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in TINY_WNIDS:
            source = base / "val" / "images" / fields[0]
            if not source.is_file():
                raise DatasetError(f"val_annotations.txt lists {fields[0]}, not in val/images/")
            jobs.append((source, f"{source.stem}.jpg", fields[1]))
    classes = labels.imagenet()
    rows = []
    for done, (source, file, wnid) in enumerate(jobs, 1):
        _to_jpeg(source, out / file)
        rows.append(
            {
                "file": file,
                "wnid": wnid,
                "name": classes.get(wnid).name,
                "source": f"{dataset.source} {_TINY}",
                "license": IMAGENET_TERMS,
            }
        )
        step(done, len(jobs))
    _write_rows(out / dataset.parts[0].labels, ("file", "wnid", "name", "source", "license"), rows)


_ARTICLE_IMAGES = "public/assets/images"
_ARTICLE_LICENSE = "article CC-BY-4.0; photo most likely ImageNet terms"

#: The photos the article patched (in `adversarial/`) and their classes: (file, wnid).
ARTICLE_ORIGINALS: tuple[tuple[str, str], ...] = (
    ("baseball.png", "n02799071"),
    ("carbonara.png", "n07831146"),
    ("frying-pan.png", "n03400231"),
    ("shark.png", "n01484850"),
    ("snorkel.png", "n04251144"),
    ("whale.png", "n02066245"),
)

#: The article's published patches (in `patches/`), read off the article's figures:
#: (file, source_class, target_class, kind, depicts). `random.png` is its noise control.
ARTICLE_PATCHES: tuple[tuple[str, str, str, str, str], ...] = (
    *((f"train-{i:02d}.png", "snorkel", "scuba_diver", "published", "steam locomotive")
      for i in range(1, 11)),
    *((f"baseball-{i:02d}.png", "grey_whale", "great_white_shark", "published", "baseball")
      for i in range(1, 11)),
    *((f"noodles-{i:02d}.png", "frying_pan", "wok", "published", "noodles")
      for i in range(1, 11)),
    ("random.png", "*", "*", "noise", "uniform noise control"),
)  # fmt: skip

_LUCID_LABELS = "labels-inceptionv1.txt"


def _copy_named(folder: Path, names: Sequence[str], out: Path) -> None:
    absent = [name for name in names if not (folder / name).is_file()]
    if absent:
        raise DatasetError(f"The archive's {folder.name}/ lacks {_some(absent)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(folder / name, out / name)


def _convert_article(
    raw: Path, out: Path, dataset: Dataset, step: Callable[[int, int], None]
) -> None:
    """The article's originals and patches, copied as published, with the tables above."""
    images = raw / _ARTICLE_IMAGES
    originals, patches = dataset.parts
    total = len(ARTICLE_ORIGINALS) + len(ARTICLE_PATCHES)
    _copy_named(images / "adversarial", [file for file, _ in ARTICLE_ORIGINALS], out / "originals")
    step(len(ARTICLE_ORIGINALS), total)
    _copy_named(images / "patches", [row[0] for row in ARTICLE_PATCHES], out / "patches")
    step(total, total)
    classes = labels.imagenet()
    rows = [
        {
            "file": file,
            "wnid": wnid,
            "name": classes.get(wnid).name,
            "source": f"{dataset.source} {_ARTICLE_IMAGES}/adversarial",
            "license": _ARTICLE_LICENSE,
        }
        for file, wnid in ARTICLE_ORIGINALS
    ]
    columns = ("file", "wnid", "name", "source", "license")
    _write_rows(out / originals.folder / originals.labels, columns, rows)
    columns = ("file", "source_class", "target_class", "kind", "depicts")
    patch_rows = [dict(zip(columns, row, strict=True)) for row in ARTICLE_PATCHES]
    # The table keeps the article's order (by experiment), as the shared copy does.
    _write_rows(out / patches.folder / patches.labels, columns, patch_rows, by_file=False)
    lucid = resources.files("patchfinder") / "resources" / "lucid-inceptionv1-labels.txt"
    (out / _LUCID_LABELS).write_bytes(lucid.read_bytes())


# --------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------

DATASETS: dict[str, Dataset] = {
    ds.name: ds
    for ds in (
        Dataset(
            name="imagenet-samples",
            description="one ImageNet training photo per class, shorter side capped at 320 px",
            repository="EliSchwartz/imagenet-sample-images",
            commit="bc69043e2862758a1906c6a24a792bb28c6bb2ff",
            license="ImageNet terms of access (non-commercial research/education)",
            parts=(Part(".", data.LABELS_FILE, 1000, short_side_cap=320),),
            members=("*.JPEG",),
            convert=_convert_imagenet_samples,
        ),
        Dataset(
            name="nips17-dev",
            description=(
                "NIPS 2017 adversarial competition dev set, 299x299, 430 classes, "
                "with per-image author and Flickr URL"
            ),
            repository="yuyang-long/SSA",
            commit="c955cf07c8372bfc4e9f17e647042e027f9f3b1d",
            license="CC-BY-2.0 (attribute the author named in labels.csv)",
            parts=(Part(".", data.LABELS_FILE, 1000),),
            members=("dataset/images.csv", "dataset/images/*.png"),
            convert=_convert_nips17,
        ),
        Dataset(
            name="tiny-imagenet-targets",
            description=(
                "Tiny-ImageNet 64x64 photos of frying_pan, wok, snorkel, plate "
                "(train 500 + val 50 each)"
            ),
            repository="rangeetpan/IMagenet",
            commit="6125d8a1069df02232eb57678fd46c700411dd45",
            license="ImageNet terms of access (non-commercial research/education)",
            parts=(Part(".", data.LABELS_FILE, 2200),),
            members=(
                *(f"{_TINY}/train/{wnid}/images/*.JPEG" for wnid in TINY_WNIDS),
                f"{_TINY}/val/val_annotations.txt",
                f"{_TINY}/val/images/*.JPEG",
            ),
            convert=_convert_tiny,
        ),
        Dataset(
            name="activation-atlas-article",
            description=(
                "the Activation Atlas article's 6 patched photos, its 30 patches and noise "
                "control (patches.csv names each patch's pair), Lucid InceptionV1 labels"
            ),
            repository="distillpub/post--activation-atlas",
            commit="b54c33de82ba1be5399b165c8c011a4026b4cdaf",
            license="article CC-BY-4.0; photos most likely ImageNet terms",
            parts=(
                Part("originals", data.LABELS_FILE, len(ARTICLE_ORIGINALS)),
                Part("patches", "patches.csv", len(ARTICLE_PATCHES)),
            ),
            members=(
                f"{_ARTICLE_IMAGES}/adversarial/*.png",
                f"{_ARTICLE_IMAGES}/patches/*.png",
            ),
            convert=_convert_article,
            extras=(_LUCID_LABELS,),
        ),
    )
}


def archive_url(dataset: Dataset) -> str:
    """The GitHub tarball of `dataset`'s repository at its pinned commit."""
    return f"https://codeload.github.com/{dataset.repository}/tar.gz/{dataset.commit}"


def describe(*, datasets: Mapping[str, Dataset] | None = None) -> list[dict[str, str | int]]:
    """One row per dataset for `patchfinder data list`.

    Returns:
        rows with keys `name`, `images` (int), `source` (`owner/repo@shortcommit`),
        `license`, `description`, in catalogue order.
    """
    return [
        {
            "name": ds.name,
            "images": ds.images,
            "source": ds.source,
            "license": ds.license,
            "description": ds.description,
        }
        for ds in (DATASETS if datasets is None else datasets).values()
    ]


def default_root() -> Path:
    """Where datasets live by default: `$PATCHFINDER_DATA`, else `<cache>/data`."""
    value = os.environ.get("PATCHFINDER_DATA")
    return Path(os.path.abspath(Path(value).expanduser())) if value else cache_dir("data")


def _resolve(names: Iterable[str] | str, datasets: Mapping[str, Dataset] | None) -> list[Dataset]:
    catalogue = DATASETS if datasets is None else datasets
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in catalogue:
            raise ValueError(
                f"Unknown dataset {name!r}; known datasets: {', '.join(catalogue)}. "
                f"Received: {names}"
            )
    return [catalogue[name] for name in names]


# --------------------------------------------------------------------------------------
# Checking a local copy
# --------------------------------------------------------------------------------------


def _part_problems(part: Part, folder: Path, tick: Callable[[], None]) -> tuple[int, list[str]]:
    """(images found, problems) for one part folder."""
    tag = f"{part.folder}/: " if part.folder != "." else ""
    if not folder.is_dir():
        return 0, [f"{tag}the folder is missing"]
    images = sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix.lower() in data.IMAGE_EXTENSIONS
        and not path.name.startswith(".")
    )
    problems = []
    if len(images) != part.images:
        problems.append(f"{tag}found {len(images)} images, expected {part.images}")
    table = folder / part.labels
    if not table.is_file():
        problems.append(f"{tag}{part.labels} is missing")
    else:
        rows = _read_rows(table)
        listed = [row.get("file", "") for row in rows]
        duplicated = sorted(file for file, n in Counter(listed).items() if n > 1)
        absent = sorted(set(listed) - set(images))
        unlisted = sorted(set(images) - set(listed))
        if duplicated:
            problems.append(f"{tag}{part.labels} lists twice: {_some(duplicated)}")
        if absent:
            problems.append(f"{tag}{part.labels} lists absent files: {_some(absent)}")
        if unlisted:
            problems.append(f"{tag}{part.labels} has no row for: {_some(unlisted)}")
        problems.extend(f"{tag}{part.labels}: {problem}" for problem in _class_problems(rows))
    undecodable, oversized = [], []
    for name in images:
        try:
            with Image.open(folder / name) as img:
                img.load()
                size = img.size
        except _DECODE_ERRORS as error:
            undecodable.append(_decode_error(folder / name, error))
        else:
            if part.short_side_cap is not None and min(size) > part.short_side_cap:
                oversized.append(name)
        tick()
    if undecodable:
        problems.append(f"{tag}{len(undecodable)} cannot be decoded: {_some(undecodable, 3)}")
    if oversized:
        problems.append(
            f"{tag}{len(oversized)} have a shorter side over {part.short_side_cap} px: "
            f"{_some(oversized)}"
        )
    return len(images), problems


def _class_problems(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Rows whose wnid is not ImageNet's, or whose name is not that wnid's canonical name."""
    classes = labels.imagenet()
    wrong = []
    for row in rows:
        if row.get("wnid"):
            try:
                item = classes.get(row["wnid"])
            except labels.UnknownClassError:
                wrong.append(f"{row.get('file')} (unknown wnid {row['wnid']})")
                continue
            if "name" in row and row["name"] != item.name:
                wrong.append(
                    f"{row.get('file')} ({item.wnid} is {item.name!r}, not {row['name']!r})"
                )
        for column in ("source_class", "target_class"):
            value = row.get(column)
            if value and value != "*" and value not in classes:
                wrong.append(f"{row.get('file')} (unknown {column} {value!r})")
    return [f"wrong classes: {_some(wrong)}"] if wrong else []


def _check(dataset: Dataset, folder: Path, progress: ProgressCallback | None) -> DatasetReport:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(Progress(dataset.name, "verify", done, dataset.images))

    found, problems = 0, []
    if not folder.is_dir():
        problems.append(f"{folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    else:
        for part in dataset.parts:
            count, part_problems = _part_problems(part, folder / part.folder, tick)
            found += count
            problems.extend(part_problems)
        problems.extend(
            f"{extra} is missing" for extra in dataset.extras if not (folder / extra).is_file()
        )
    return DatasetReport(dataset.name, folder, found, dataset.images, tuple(problems))


def verify(
    name: str,
    root: str | Path,
    *,
    datasets: Mapping[str, Dataset] | None = None,
    progress: ProgressCallback | None = None,
) -> DatasetReport:
    """Check the local copy `root/name`: counts, label rows against files, classes, decoding.

    Every image is fully decoded, so this takes seconds for a thousand photos.

    Returns:
        a report whose `problems` is empty when the copy is sound (nothing is raised for an
        unsound copy).

    Raises:
        ValueError: `name` is not a known dataset.
    """
    (dataset,) = _resolve([name], datasets)
    return _check(dataset, Path(root) / dataset.name, progress)


def missing(
    names: Iterable[str], root: str | Path, *, datasets: Mapping[str, Dataset] | None = None
) -> list[str]:
    """The named datasets that `root` does not hold (no folder, or a label file absent).

    A cheap test, nothing is decoded: use `verify` to check a copy that is present.

    Raises:
        ValueError: a name is not a known dataset.
    """
    root = Path(root)
    absent = []
    for dataset in _resolve(names, datasets):
        folder = root / dataset.name
        needed = [folder / part.folder / part.labels for part in dataset.parts]
        needed += [folder / extra for extra in dataset.extras]
        if not all(path.is_file() for path in needed):
            absent.append(dataset.name)
    return absent


# --------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------


def _download(name: str, url: str, target: Path, progress: ProgressCallback | None) -> None:
    """Download `url` to `target` atomically (`file://` URLs work too)."""
    try:
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            atomic_write(target) as tmp,
            open(tmp, "wb") as handle,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(Progress(name, "download", done, total))
    except (OSError, HTTPException) as error:  # URLError, HTTPError, timeouts are OSErrors
        reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"Could not download {name} from {url}: {reason}. Offline, any local copy with the "
            f"shared layout serves: set PATCHFINDER_DATA (or pass --data) to a folder that "
            f"holds {name}/."
        ) from error


def _member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(
            f"Refusing archive {archive.name}: member {member.name!r} would be written "
            "outside the extraction folder"
        )
    return path


def _extract(
    archive: Path, dest: Path, patterns: Sequence[str], name: str, progress: ProgressCallback | None
) -> int:
    """Write the regular-file members matching `patterns` under `dest`, without the top folder.

    Every member's path is checked, also of those not written: one that is absolute or
    climbs with `..` makes the whole archive refused.

    Returns:
        the number of files written.

    Raises:
        DatasetError: an unsafe member, members outside one top folder, or not a tar archive.
    """
    written = 0
    top: str | None = None
    try:
        # Stream mode reads the gzip once, front to back.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                path = _member_path(member, archive)
                if not path.parts:
                    continue
                top = top or path.parts[0]
                if path.parts[0] != top:
                    raise DatasetError(
                        f"Archive {archive.name} is not a GitHub archive: members outside "
                        f"one top folder ({top!r}, then {member.name!r})"
                    )
                relative = PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else None
                # Links, devices and folders are not written: converters read regular files.
                if relative is None or not member.isfile():
                    continue
                if not any(fnmatchcase(str(relative), pattern) for pattern in patterns):
                    continue
                target = dest.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                with source, open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle, _CHUNK)
                written += 1
                if progress is not None:
                    progress(Progress(name, "extract", written))
    except tarfile.TarError as error:
        raise DatasetError(f"Archive {archive.name} cannot be read: {error}") from error
    return written


def fetch(
    names: Iterable[str],
    root: str | Path,
    *,
    urls: Mapping[str, str] | None = None,
    datasets: Mapping[str, Dataset] | None = None,
    progress: ProgressCallback | None = None,
) -> list[DatasetReport]:
    """Download, convert and verify each named dataset into `root/<name>/`.

    A dataset already present and verified is skipped. Otherwise its archive
    (`archive_url`, or `urls[name]`; `file://` works) is downloaded beside the target,
    the needed members are extracted and converted in a hidden temporary folder, verified,
    and only then renamed to `root/<name>`. Datasets are done in the order given; on an
    error the ones finished stay, so a rerun resumes.

    Args:
        names: dataset names (keys of `datasets`).
        root: the data root; created when absent.
        urls: per-name archive URLs that replace `archive_url` (mirrors, tests).
        datasets: the catalogue to use instead of `DATASETS`.
        progress: called with each `Progress` event; nothing is printed.

    Returns:
        one report per name, in order, each with status `fetched` or `skipped`.

    Raises:
        ValueError: an unknown name (before anything is downloaded).
        DownloadError: the archive could not be downloaded.
        DatasetError: an unsafe or unreadable archive, a failed conversion or verification,
            or a present copy that does not verify (it is left untouched).
    """
    root = Path(root)
    urls = urls or {}
    reports = []
    for dataset in _resolve(names, datasets):
        target = root / dataset.name
        if target.exists():
            report = _check(dataset, target, progress)
            if not report.ok:
                raise DatasetError(
                    f"{target} exists but does not verify; move it away or delete it, then "
                    f"fetch again.\n{report}"
                )
            reports.append(dataclasses.replace(report, status="skipped"))
            if progress is not None:
                progress(Progress(dataset.name, "skip", dataset.images, dataset.images))
            continue
        root.mkdir(parents=True, exist_ok=True)
        url = urls.get(dataset.name) or archive_url(dataset)
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        archive = root / f".{dataset.name}-{digest}.tar.gz"
        if not archive.is_file():
            _download(dataset.name, url, archive, progress)
        work = Path(tempfile.mkdtemp(prefix=f".{dataset.name}.", suffix=".partial", dir=root))
        try:
            raw, out = work / "raw", work / dataset.name
            raw.mkdir()
            out.mkdir()
            try:
                _extract(archive, raw, dataset.members, dataset.name, progress)
            except DatasetError:
                # A bad archive must be downloaded again, not reused by the next run.
                archive.unlink(missing_ok=True)
                raise

            def step(done: int, total: int, name: str = dataset.name) -> None:
                if progress is not None:
                    progress(Progress(name, "convert", done, total))

            try:
                dataset.convert(raw, out, dataset, step)
                report = _check(dataset, out, progress)
                if not report.ok:
                    problems = "".join(f"\n  - {problem}" for problem in report.problems)
                    raise DatasetError(
                        f"{dataset.name} from {url} did not verify after conversion; nothing "
                        f"was written to {target}:{problems}"
                    )
            except DatasetError as error:
                raise DatasetError(
                    f"{error}\nThe downloaded archive stays at {archive} for the next run; "
                    "delete it to download afresh."
                ) from error
            out.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        archive.unlink(missing_ok=True)
        reports.append(
            DatasetReport(dataset.name, target, report.images, report.expected, (), "fetched")
        )
        if progress is not None:
            progress(Progress(dataset.name, "done", dataset.images, dataset.images))
    return reports
