"""Tests for patchfinder.data: finding image sets and decoding any image robustly."""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchfinder import data
from patchfinder.data import (
    ImageError,
    ImageRecord,
    ImageSet,
    LoadSummary,
    find_images,
    iterate_batches,
    load_image,
    load_images,
)
from patchfinder.labels import UnknownClassError, imagenet

SNORKEL = "n04251144"
WOK = "n04596742"
TENCH = "n01440764"

# --------------------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------------------


def _rgb(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _truncated_jpeg(path: Path) -> Path:
    _save(_rgb(64, 48, seed=7), path, quality=90)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def _mode_image(mode: str) -> Image.Image:
    """A small image in `mode` with some structure."""
    rgb = _rgb(20, 12)
    if mode == "I;16":
        gradient = np.linspace(0, 65535, 20 * 12).reshape(12, 20).astype(np.uint16)
        return Image.fromarray(gradient)  # mode I;16
    if mode == "P-transparency":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.info["transparency"] = 0
        return img
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img = rgb.convert(mode)
    if mode in ("RGBA", "LA"):
        img.putalpha(Image.linear_gradient("L").resize(img.size))  # partly transparent
    return img


# format per mode: each must store the mode natively
_MODE_FILES = {
    "RGB": "x.jpg",
    "L": "x.png",
    "LA": "x.png",
    "RGBA": "x.webp",
    "P": "x.gif",
    "P-transparency": "x.png",
    "CMYK": "x.jpg",
    "I;16": "x.png",
    "1": "x.bmp",
}


# --------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(_MODE_FILES))
def test_every_mode_decodes_to_rgb_float(tmp_path, mode):
    img = _mode_image(mode)
    path = _save(img, tmp_path / _MODE_FILES[mode])
    stored = Image.open(path).mode
    assert stored.split(";")[0] == mode.split("-")[0].split(";")[0], stored
    out = load_image(path, size=10)
    assert out.shape == (10, 10, 3)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert out.std() > 1.0  # not collapsed to one colour


def test_16_bit_gradient_scaled_not_clipped(tmp_path):
    path = _save(_mode_image("I;16"), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    out = load_image(path, size=12, crop_fraction=1.0)
    assert out.max() > 240.0  # the brightest pixels map near 255
    assert 60.0 < out.mean() < 195.0  # a gradient, not a white (clipped) image
    assert np.allclose(out[..., 0], out[..., 2])  # gray


@pytest.mark.parametrize(("dtype", "top"), [(np.int32, 65535), (np.float32, 1.0)], ids=["I", "F"])
def test_32_bit_gray_tiff_scaled(tmp_path, dtype, top):
    gradient = np.linspace(0, top, 12 * 20).reshape(12, 20).astype(dtype)
    path = _save(Image.fromarray(gradient), tmp_path / "deep.tif")
    out = load_image(path, size=12, crop_fraction=1.0)
    assert out.shape == (12, 12, 3) and out.dtype == np.float32
    assert out.max() > 240.0 and 60.0 < out.mean() < 195.0


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200  # red under full transparency on the left half
    rgba[:, 5:, 3] = 255
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png")
    out = load_image(path, size=10, crop_fraction=1.0)
    assert np.allclose(out[:, 0], 255.0)
    assert np.allclose(out[:, -1], [200.0, 0.0, 0.0])

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1
    out = load_image(_save(palette, tmp_path / "pal.png"), size=8)
    assert np.allclose(out, 255.0)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    path = _save(Image.fromarray(pixels), tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_image(path, size=20)
    # Upright, the image is 20 wide x 40 tall with red on top; the centre crop holds
    # red in its top half and blue in its bottom half.
    top, bottom = out[2, 10], out[-3, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_resize_and_centre_crop(tmp_path):
    pixels = np.zeros((30, 90, 3), np.uint8)
    pixels[:, 30:60] = 255  # white centre third, black sides
    path = _save(Image.fromarray(pixels), tmp_path / "wide.png")
    full = load_image(path, size=16)  # the crop is the centre square
    assert np.allclose(full[:, 1:-1], 255.0)
    assert full.min() > 200.0  # the filter reaches just past the crop edge, as resizing would
    cropped = load_image(path, size=16, crop_fraction=0.5)
    assert np.allclose(cropped, 255.0)
    with pytest.raises(ValueError, match="crop_fraction"):
        load_image(path, size=16, crop_fraction=0.0)


def test_truncated_and_corrupt_files_raise_image_error(tmp_path):
    for path in (_truncated_jpeg(tmp_path / "cut.jpg"), _random_bytes(tmp_path / "noise.jpg")):
        with pytest.raises(ImageError, match=path.name) as caught:
            load_image(path, size=8)
        assert caught.value.path == path
        assert caught.value.reason
    with pytest.raises(ImageError, match=r"gone\.png"):
        load_image(tmp_path / "gone.png", size=8)


def test_decompression_bomb_guard(tmp_path):
    path = _save(_rgb(20, 20), tmp_path / "big.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(path, size=8, max_pixels=399)
    assert load_image(path, size=8, max_pixels=400).shape == (8, 8, 3)
    assert data.MAX_PIXELS <= Image.MAX_IMAGE_PIXELS  # PIL would only warn below its limit


def _forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (only the header is ever read)."""
    _save(_rgb(4, 4), path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


def test_decompression_bomb_header_never_decoded(tmp_path):
    path = _forged_png(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(ImageError, match="limit"):
        load_image(path, size=8)  # our guard, from the header alone
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        load_image(path, size=8, max_pixels=None)  # PIL's own error, converted


def test_load_images_skips_bad_files(tmp_path, caplog):
    good = _save(_rgb(), tmp_path / "a.png")
    bad = _random_bytes(tmp_path / "b.jpg")
    with caplog.at_level(logging.WARNING, logger="patchfinder.data"):
        stack, loaded, skipped = load_images(
            [ImageRecord(good), ImageRecord(bad)], size=6, crop_fraction=0.875
        )
    assert stack.shape == (1, 6, 6, 3) and stack.dtype == np.float32
    assert loaded == [ImageRecord(good)]
    assert [p for p, _ in skipped] == [bad]
    assert "b.jpg" in caplog.text
    empty, _, _ = load_images([], size=6)
    assert empty.shape == (0, 6, 6, 3)


# --------------------------------------------------------------------------------------
# iterate_batches
# --------------------------------------------------------------------------------------


def test_iterate_batches_skips_failures_in_order(tmp_path, caplog):
    paths = []
    for i in range(9):
        if i == 2:
            paths.append(_truncated_jpeg(tmp_path / f"{i:02d}.jpg"))
        elif i == 6:
            paths.append(_random_bytes(tmp_path / f"{i:02d}.jpg"))
        else:
            paths.append(_save(_rgb(30, 20, seed=i), tmp_path / f"{i:02d}.png"))
    images = find_images([tmp_path])
    assert images.paths == paths
    good = [p for i, p in enumerate(paths) if i not in (2, 6)]

    summary = LoadSummary()
    with caplog.at_level(logging.WARNING, logger="patchfinder.data"):
        batches = list(iterate_batches(images, size=8, batch_size=3, summary=summary))
    assert [len(b.records) for b in batches] == [3, 3, 1]
    assert [b.images.shape for b in batches] == [(3, 8, 8, 3), (3, 8, 8, 3), (1, 8, 8, 3)]
    assert all(b.images.dtype == np.float32 for b in batches)
    assert [r.path for b in batches for r in b.records] == good
    assert [int(i) for b in batches for i in b.indices] == [0, 1, 3, 4, 5, 7, 8]
    assert summary.loaded == 7
    assert [p for p, _ in summary.skipped] == [paths[2], paths[6]]
    assert "02.jpg" in caplog.text and "06.jpg" in caplog.text
    assert "skipped 2" in str(summary)
    # the pixels are those load_image gives
    expected = load_image(good[-1], size=8)
    np.testing.assert_allclose(batches[-1].images[0], expected)


def test_iterate_batches_all_bad_and_trailing_failures(tmp_path):
    bad = [_random_bytes(tmp_path / f"{i}.jpg") for i in range(3)]
    summary = LoadSummary()
    records = ImageSet([ImageRecord(p) for p in bad], classes=imagenet())
    assert list(iterate_batches(records, size=4, summary=summary)) == []
    assert summary.loaded == 0 and [p for p, _ in summary.skipped] == bad


# --------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------


def _write_csv(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_csv_by_wnid_and_by_name(tmp_path, caplog):
    by_wnid = tmp_path / "wnid"
    _save(_rgb(), by_wnid / "b.jpg")
    _save(_rgb(), by_wnid / "a.png")
    _write_csv(
        by_wnid, f"file,wnid,license\nb.jpg,{WOK},cc\na.png,{SNORKEL},cc\ngone.jpg,{TENCH},x\n"
    )
    by_name = tmp_path / "name"
    _save(_rgb(), by_name / "c.JPEG")
    _save(_rgb(), by_name / "d.jpg")
    _write_csv(by_name, "file,name\nc.JPEG,Scuba diver\nd.jpg,\n")

    with caplog.at_level(logging.WARNING, logger="patchfinder.data"):
        images = find_images([by_wnid, str(by_name)])
    assert [p.name for p in images.paths] == ["a.png", "b.jpg", "c.JPEG", "d.jpg"]
    assert [c and c.name for c in images.labels] == ["snorkel", "wok", "scuba_diver", None]
    assert images.missing == (by_wnid / "gone.jpg",)
    assert "gone.jpg" in caplog.text
    assert images.counts()[None] == 1
    direct = find_images([by_wnid / "labels.csv"])  # a labels file given directly
    assert direct.paths == images.paths[:2]


def test_labels_csv_unknown_name_names_file_row_and_suggestion(tmp_path):
    folder = tmp_path / "set"
    _save(_rgb(), folder / "a.jpg")
    _save(_rgb(), folder / "b.jpg")
    csv_path = _write_csv(folder, "file,name\na.jpg,snorkel\nb.jpg,snorkle\n")
    with pytest.raises(UnknownClassError) as caught:
        find_images([folder])
    message = str(caught.value)
    assert str(csv_path) in message and "line 3" in message and "b.jpg" in message
    assert "snorkel" in message  # the suggestion
    _write_csv(folder, "path,name\na.jpg,snorkel\n")
    with pytest.raises(ValueError, match="file"):
        find_images([folder])


def test_class_subfolders_by_wnid_name_and_nesting(tmp_path):
    root = tmp_path / "train"
    _save(_rgb(), root / SNORKEL / "images" / "s1.JPEG")  # tiny-imagenet nesting
    _save(_rgb(), root / SNORKEL / "images" / "s0.JPEG")
    (root / SNORKEL / f"{SNORKEL}_boxes.txt").write_text("ignored")
    _save(_rgb(), root / "frying_pan" / "f.png")
    _save(_rgb(), root / "Scuba diver" / "d.jpg")
    _save(_rgb(), root / ".cache" / "hidden.jpg")
    images = find_images([root])
    assert [(p.name, c.name) for p, c in zip(images.paths, images.labels, strict=True)] == [
        ("d.jpg", "scuba_diver"),
        ("f.png", "frying_pan"),
        ("s0.JPEG", "snorkel"),
        ("s1.JPEG", "snorkel"),
    ]
    _save(_rgb(), root / "snorkle" / "x.jpg")
    with pytest.raises(UnknownClassError, match="snorkel"):
        find_images([root])


def test_loose_and_explicit_files(tmp_path):
    loose = tmp_path / "photos"
    for name in ("b.PNG", "a.jpeg", "c.TIFF", "d.bmp"):
        _save(_rgb(), loose / name)
    (loose / "notes.txt").write_text("not an image")
    (loose / "._a.jpeg").write_bytes(b"macos junk")
    images = find_images([loose])
    assert [p.name for p in images.paths] == ["a.jpeg", "b.PNG", "c.TIFF", "d.bmp"]
    assert images.labels == [None] * 4

    explicit = find_images([loose / "d.bmp", loose / "a.jpeg"])
    assert [p.name for p in explicit.paths] == ["d.bmp", "a.jpeg"]  # argument order kept
    with pytest.raises(ValueError, match=r"notes\.txt"):
        find_images([loose / "notes.txt"])


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        find_images([empty])
    _save(_rgb(), empty / "albums" / "x.jpg")
    with pytest.raises(ValueError, match="albums"):
        find_images([empty])


def test_filter_by_class(tmp_path):
    root = tmp_path / "set"
    for wnid in (SNORKEL, WOK, TENCH):
        _save(_rgb(), root / wnid / "x.jpg")
    images = find_images([root])
    assert len(images) == 3
    classes = imagenet()
    kept = images.filter(["snorkel", WOK])
    assert isinstance(kept, ImageSet)
    assert [c.name for c in kept.labels] == ["snorkel", "wok"]
    assert images.filter("tench").labels == [classes.get(TENCH)]
    assert images.filter([classes.get("wok")]).labels == [classes.get("wok")]
    assert len(images.filter(["scuba diver"])) == 0
    with pytest.raises(UnknownClassError, match="snorkel"):
        images.filter(["snorkle"])
    assert images[1:].labels == images.labels[1:]


# --------------------------------------------------------------------------------------
# The shared data folder
# --------------------------------------------------------------------------------------


def _shared_data() -> Path:
    root = os.environ.get("PATCHFINDER_DATA")
    if not root:
        pytest.skip("PATCHFINDER_DATA is not set (point it at the shared data folder)")
    if not Path(root).is_dir():
        pytest.skip(f"PATCHFINDER_DATA={root} does not exist")
    return Path(root)


@pytest.mark.slow
def test_shared_data_sets_load(caplog):
    root = _shared_data()
    expected = {
        "imagenet-samples": 1000,
        "tiny-imagenet-targets": 2200,
        "nips17-dev": 1000,
        "activation-atlas-article/originals": 6,
    }
    for name, count in expected.items():
        folder = root / name
        if not folder.is_dir():
            pytest.skip(f"{folder} is missing")
        with caplog.at_level(logging.WARNING, logger="patchfinder.data"):
            images = find_images([folder])
        assert len(images) == count, name
        assert images.missing == (), name
        assert all(label is not None for label in images.labels), name
    tiny = find_images([root / "tiny-imagenet-targets"])
    assert {c.name for c in tiny.labels} == {"frying_pan", "wok", "snorkel", "plate"}
    assert len(tiny.filter(["snorkel"])) == 550

    originals = find_images([root / "activation-atlas-article/originals"])
    stack, _, skipped = load_images(originals, size=224, crop_fraction=0.875)
    assert stack.shape == (6, 224, 224, 3) and not skipped

    samples = find_images([root / "imagenet-samples"])
    pytest.importorskip("tensorflow")  # import before timing
    summary = LoadSummary()
    start = time.perf_counter()
    sizes = [len(b.records) for b in iterate_batches(samples, size=224, summary=summary)]
    elapsed = time.perf_counter() - start
    assert summary.loaded == 1000 and not summary.skipped
    assert sizes == [32] * 31 + [8]
    print(f"iterate_batches: {1000 / elapsed:.0f} images/s at 224 px")
