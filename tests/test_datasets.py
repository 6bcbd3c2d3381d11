"""Tests for patchfinder.datasets: converting raw repository archives into the shared layout,
verifying local copies, and fetching safely (atomic, resumable, no path traversal).

Every archive here is a small fake with the real raw layout, fetched through `file://` URLs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchfinder import datasets
from patchfinder.datasets import (
    ARTICLE_ORIGINALS,
    ARTICLE_PATCHES,
    DATASETS,
    IMAGENET_TERMS,
    DatasetError,
    DownloadError,
    Progress,
    archive_url,
    describe,
    fetch,
    missing,
    verify,
)
from patchfinder.labels import imagenet

TENCH, CRANE_MACHINE, SNORKEL = "n01440764", "n03126707", "n04251144"
FRYING_PAN, WOK, PLATE, GOLDFISH = "n03400231", "n04596742", "n07579787", "n01443537"

# --------------------------------------------------------------------------------------
# Fake raw archives
# --------------------------------------------------------------------------------------


def _image_bytes(
    width: int, height: int, *, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0
) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> str:
    """A .tar.gz holding `members` (name -> bytes) as given; returns its file:// URL."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path.as_uri()


def _github_tar(tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    """An archive laid out as GitHub's: every file under `<repo>-<commit>/`."""
    dataset = DATASETS[name]
    top = f"{dataset.repository.split('/')[1]}-{dataset.commit}"
    return _tar(tmp_path / f"{name}.tar.gz", {f"{top}/{rel}": blob for rel, blob in files.items()})


def _with_counts(name: str, *counts: int) -> dict[str, datasets.Dataset]:
    """The catalogue entry `name` with its parts' expected image counts replaced."""
    dataset = DATASETS[name]
    parts = tuple(
        dataclasses.replace(part, images=n) for part, n in zip(dataset.parts, counts, strict=True)
    )
    return {name: dataclasses.replace(dataset, parts=parts)}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _samples_archive(tmp_path: Path, *, corrupt: bool = False) -> str:
    files = {
        # The repository's spelling of a name need not be ImageNet's canonical one.
        f"{TENCH}_Tinca_tinca.JPEG": _image_bytes(640, 400, seed=1),
        f"{SNORKEL}_snorkel.JPEG": _image_bytes(200, 300, mode="L", seed=2),
        f"{CRANE_MACHINE}_crane.JPEG": _image_bytes(400, 1000, mode="CMYK", seed=3),
        "README.md": b"# ImageNet samples\n",
        "gallery.md": b"![](n01440764_tench.JPEG)\n",
    }
    if corrupt:
        blob = files[f"{SNORKEL}_snorkel.JPEG"]
        files[f"{SNORKEL}_snorkel.JPEG"] = blob[: len(blob) // 3]
    return _github_tar(tmp_path, "imagenet-samples", files)


def _fetch_samples(tmp_path: Path, root: Path, *, url: str | None = None, **kwargs):
    """Fetch the three-photo fake imagenet-samples archive (expected count 3) into `root`."""
    return fetch(
        ["imagenet-samples"],
        root,
        urls={"imagenet-samples": url or _samples_archive(tmp_path)},
        datasets=_with_counts("imagenet-samples", 3),
        **kwargs,
    )


# --------------------------------------------------------------------------------------
# Conversion of each dataset
# --------------------------------------------------------------------------------------


def test_imagenet_samples_become_capped_rgb_jpegs_with_canonical_names(tmp_path, capsys):
    root = tmp_path / "data"
    events: list[Progress] = []
    reports = _fetch_samples(tmp_path, root, progress=events.append)

    folder = root / "imagenet-samples"
    assert [(r.name, r.status, r.images, r.ok) for r in reports] == [
        ("imagenet-samples", "fetched", 3, True)
    ]
    source = "EliSchwartz/imagenet-sample-images@bc69043e"
    assert _rows(folder / "labels.csv") == [
        {"file": f"{TENCH}_tench.jpg", "wnid": TENCH, "name": "tench", "source": source,
         "license": IMAGENET_TERMS},
        {"file": f"{CRANE_MACHINE}_crane.jpg", "wnid": CRANE_MACHINE, "name": "crane",
         "source": source, "license": IMAGENET_TERMS},
        {"file": f"{SNORKEL}_snorkel.jpg", "wnid": SNORKEL, "name": "snorkel", "source": source,
         "license": IMAGENET_TERMS},
    ]  # fmt: skip
    sizes = {}
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as img:
            assert (img.format, img.mode) == ("JPEG", "RGB")
            sizes[path.name] = img.size
    # Shorter side capped at 320 px, aspect kept; a smaller photo keeps its size.
    assert sizes == {
        f"{TENCH}_tench.jpg": (512, 320),
        f"{CRANE_MACHINE}_crane.jpg": (320, 800),
        f"{SNORKEL}_snorkel.jpg": (200, 300),
    }
    # Only the dataset is left in the root: no archive, no temporary folder.
    assert sorted(p.name for p in root.iterdir()) == ["imagenet-samples"]
    stages = [event.stage for event in events]
    assert {"download", "extract", "convert", "verify"} <= set(stages)
    assert stages[-1] == "done"
    assert capsys.readouterr() == ("", "")


def test_nips17_takes_labels_author_and_url_from_images_csv(tmp_path):
    header = (
        "ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,"
        "AuthorProfileURL,,,,\n"
    )
    table = header + (
        "0c7ac4a8c9dfa802,https://c1.staticflickr.com/a_o.jpg,0,0,1,1,1,779,"
        "https://www.flickr.com/photos/gails_pictures/1,https://creativecommons.org/licenses/by/2.0/,"
        "gailhampshire,https://www.flickr.com/people/gails_pictures/,,,,\n"
        "73a52afd2f818ed5,https://c1.staticflickr.com/b_o.jpg,0,0,1,1,1000,696,"
        "https://www.flickr.com/photos/chemiebw/2/,https://creativecommons.org/licenses/by/2.0/,"
        '"Chemie-Verb\\303\\244nde, Baden",https://www.flickr.com/people/chemiebw/,,,, \n'
    )
    files = {
        "dataset/images.csv": table.encode(),
        "dataset/images/0c7ac4a8c9dfa802.png": _image_bytes(32, 32, fmt="PNG", seed=1),
        "dataset/images/73a52afd2f818ed5.png": _image_bytes(32, 32, fmt="PNG", mode="RGBA"),
        # A PNG that images.csv does not list is no part of the set.
        "dataset/images/ffffffffffffffff.png": _image_bytes(32, 32, fmt="PNG", seed=4),
        "dataset/readme.txt": b"not an image\n",
    }
    root = tmp_path / "data"
    fetch(
        ["nips17-dev"],
        root,
        urls={"nips17-dev": _github_tar(tmp_path, "nips17-dev", files)},
        datasets=_with_counts("nips17-dev", 2),
    )

    folder = root / "nips17-dev"
    license_url = "https://creativecommons.org/licenses/by/2.0/"
    assert _rows(folder / "labels.csv") == [
        {"file": "0c7ac4a8c9dfa802.jpg", "wnid": TENCH, "name": "tench",
         "source": "yuyang-long/SSA@c955cf07 dataset/", "license": license_url,
         "author": "gailhampshire", "url": "https://www.flickr.com/photos/gails_pictures/1"},
        # TrueLabel is the ImageNet index plus one: 1000 is the last class.
        {"file": "73a52afd2f818ed5.jpg", "wnid": "n15075141", "name": "toilet_tissue",
         "source": "yuyang-long/SSA@c955cf07 dataset/", "license": license_url,
         "author": "Chemie-Verb\\303\\244nde, Baden",
         "url": "https://www.flickr.com/photos/chemiebw/2/"},
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == [
        "0c7ac4a8c9dfa802.jpg",
        "73a52afd2f818ed5.jpg",
        "labels.csv",
    ]
    reference = Image.open(io.BytesIO(_quality_92_jpeg()))
    with Image.open(folder / "73a52afd2f818ed5.jpg") as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (32, 32))
        assert img.quantization == reference.quantization


def _quality_92_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_tiny_imagenet_keeps_only_the_target_classes(tmp_path):
    base = "tiny-imagenet-200"
    files = {
        f"{base}/wnids.txt": f"{FRYING_PAN}\n{WOK}\n{GOLDFISH}\n".encode(),
        f"{base}/train/{FRYING_PAN}/{FRYING_PAN}_boxes.txt": b"",
        f"{base}/train/{FRYING_PAN}/images/{FRYING_PAN}_0.JPEG": _image_bytes(64, 64, seed=1),
        f"{base}/train/{FRYING_PAN}/images/{FRYING_PAN}_17.JPEG": _image_bytes(
            64, 64, mode="L", seed=2
        ),
        f"{base}/train/{WOK}/images/{WOK}_3.JPEG": _image_bytes(64, 64, seed=3),
        f"{base}/train/{GOLDFISH}/images/{GOLDFISH}_0.JPEG": _image_bytes(64, 64, seed=4),
        f"{base}/val/val_annotations.txt": (
            f"val_0.JPEG\t{FRYING_PAN}\t0\t0\t63\t63\n"
            f"val_1.JPEG\t{GOLDFISH}\t0\t0\t63\t63\n"
            f"val_2.JPEG\t{PLATE}\t1\t2\t60\t61\n"
        ).encode(),
        f"{base}/val/images/val_0.JPEG": _image_bytes(64, 64, seed=5),
        f"{base}/val/images/val_1.JPEG": _image_bytes(64, 64, seed=6),
        f"{base}/val/images/val_2.JPEG": _image_bytes(64, 64, seed=7),
        f"{base}/test/images/test_0.JPEG": _image_bytes(64, 64, seed=8),
    }
    root = tmp_path / "data"
    fetch(
        ["tiny-imagenet-targets"],
        root,
        urls={"tiny-imagenet-targets": _github_tar(tmp_path, "tiny-imagenet-targets", files)},
        datasets=_with_counts("tiny-imagenet-targets", 5),
    )

    rows = _rows(root / "tiny-imagenet-targets" / "labels.csv")
    assert [(r["file"], r["wnid"], r["name"]) for r in rows] == [
        (f"train_{FRYING_PAN}_0.jpg", FRYING_PAN, "frying_pan"),
        (f"train_{FRYING_PAN}_17.jpg", FRYING_PAN, "frying_pan"),
        (f"train_{WOK}_3.jpg", WOK, "wok"),
        ("val_0.jpg", FRYING_PAN, "frying_pan"),
        ("val_2.jpg", PLATE, "plate"),
    ]
    assert {r["source"] for r in rows} == {"rangeetpan/IMagenet@6125d8a1 tiny-imagenet-200"}
    images = sorted((root / "tiny-imagenet-targets").glob("*.jpg"))
    assert [p.name for p in images] == [r["file"] for r in rows]
    for path in images:
        with Image.open(path) as img:
            assert (img.mode, img.size) == ("RGB", (64, 64))


def _article_files() -> dict[str, bytes]:
    images = "public/assets/images"
    files = {
        f"{images}/adversarial/{file}": _image_bytes(12, 10, fmt="PNG", seed=i)
        for i, (file, _) in enumerate(ARTICLE_ORIGINALS)
    }
    files |= {
        f"{images}/patches/{row[0]}": _image_bytes(9, 8, fmt="PNG", mode="RGBA", seed=10 + i)
        for i, row in enumerate(ARTICLE_PATCHES)
    }
    # Files the article repository also has, which are no part of the dataset.
    files[f"{images}/patches/train-11.png"] = _image_bytes(9, 8, fmt="PNG", seed=99)
    files[f"{images}/dog.jpg"] = _image_bytes(9, 8, seed=98)
    files["src/patches.js"] = b"export default []\n"
    return files


def test_article_originals_and_patches_come_with_their_tables(tmp_path):
    files = _article_files()
    root = tmp_path / "data"
    (report,) = fetch(
        ["activation-atlas-article"],
        root,
        urls={"activation-atlas-article": _github_tar(tmp_path, "activation-atlas-article", files)},
    )

    # The real expected counts: 6 originals, 30 patches and the noise control.
    assert (report.images, report.expected, report.ok) == (37, 37, True)
    folder = root / "activation-atlas-article"
    originals = _rows(folder / "originals" / "labels.csv")
    assert [(r["file"], r["wnid"], r["name"]) for r in originals] == [
        ("baseball.png", "n02799071", "baseball"),
        ("carbonara.png", "n07831146", "carbonara"),
        ("frying-pan.png", "n03400231", "frying_pan"),
        ("shark.png", "n01484850", "great_white_shark"),
        ("snorkel.png", "n04251144", "snorkel"),
        ("whale.png", "n02066245", "grey_whale"),
    ]
    patches = _rows(folder / "patches" / "patches.csv")
    assert len(patches) == 31
    assert patches[0] == {
        "file": "train-01.png",
        "source_class": "snorkel",
        "target_class": "scuba_diver",
        "kind": "published",
        "depicts": "steam locomotive",
    }
    assert [(r["file"], r["source_class"], r["target_class"]) for r in patches[10::10]] == [
        ("baseball-01.png", "grey_whale", "great_white_shark"),
        ("noodles-01.png", "frying_pan", "wok"),
        ("random.png", "*", "*"),
    ]
    # Copied as published, byte for byte; files outside the tables are left out.
    patch = "public/assets/images/patches/noodles-07.png"
    assert (folder / "patches" / "noodles-07.png").read_bytes() == files[patch]
    assert not (folder / "patches" / "train-11.png").exists()
    lucid = (folder / "labels-inceptionv1.txt").read_text(encoding="utf-8").splitlines()
    assert (len(lucid), lucid[0], lucid[1]) == (1001, "dummy", "kit fox")


# --------------------------------------------------------------------------------------
# Verification, resuming and refusing
# --------------------------------------------------------------------------------------


def test_wrong_count_fails_leaves_no_copy_and_a_rerun_reuses_the_archive(tmp_path):
    root = tmp_path / "data"
    url = _samples_archive(tmp_path)
    with pytest.raises(DatasetError, match="found 3 images, expected 4") as caught:
        fetch(
            ["imagenet-samples"],
            root,
            urls={"imagenet-samples": url},
            datasets=_with_counts("imagenet-samples", 4),
        )
    assert "imagenet-samples" in str(caught.value)
    assert "downloaded archive stays at" in str(caught.value)
    assert not (root / "imagenet-samples").exists()
    assert not list(root.glob("*.partial"))
    assert missing(["imagenet-samples"], root) == ["imagenet-samples"]

    # The downloaded archive stays for the rerun, which therefore needs no network.
    events: list[Progress] = []
    (report,) = _fetch_samples(tmp_path, root, url=url, progress=events.append)
    assert report.status == "fetched"
    assert "download" not in {event.stage for event in events}


def test_undecodable_raw_image_is_named(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=f"{SNORKEL}_snorkel.JPEG: cannot be decoded"):
        _fetch_samples(tmp_path, root, url=_samples_archive(tmp_path, corrupt=True))
    assert not (root / "imagenet-samples").exists()


def test_second_fetch_skips_a_verified_copy_without_downloading(tmp_path):
    root = tmp_path / "data"
    _fetch_samples(tmp_path, root)
    before = {p.name: p.stat().st_mtime_ns for p in (root / "imagenet-samples").iterdir()}

    gone = (tmp_path / "no-such-archive.tar.gz").as_uri()
    (report,) = _fetch_samples(tmp_path, root, url=gone)

    assert (report.status, report.ok, report.images) == ("skipped", True, 3)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "imagenet-samples").iterdir()}
    assert after == before


def test_verify_names_corrupt_and_missing_files_and_fetch_refuses_to_overwrite(tmp_path):
    root = tmp_path / "data"
    catalogue = _with_counts("imagenet-samples", 3)
    _fetch_samples(tmp_path, root)
    folder = root / "imagenet-samples"
    assert verify("imagenet-samples", root, datasets=catalogue).problems == ()

    tench = folder / f"{TENCH}_tench.jpg"
    tench.write_bytes(tench.read_bytes()[:200])
    (folder / f"{SNORKEL}_snorkel.jpg").unlink()
    report = verify("imagenet-samples", root, datasets=catalogue)

    assert not report.ok
    assert report.images == 2
    text = "\n".join(report.problems)
    assert "found 2 images, expected 3" in text
    assert f"labels.csv lists absent files: {SNORKEL}_snorkel.jpg" in text
    assert re.search(rf"1 cannot be decoded: {TENCH}_tench.jpg: cannot be decoded", text)

    with pytest.raises(DatasetError, match="exists but does not verify"):
        _fetch_samples(tmp_path, root)
    assert len(tench.read_bytes()) == 200  # left untouched


def test_verify_checks_wnids_against_names(tmp_path):
    root = tmp_path / "data"
    catalogue = _with_counts("imagenet-samples", 3)
    _fetch_samples(tmp_path, root)
    table = root / "imagenet-samples" / "labels.csv"
    table.write_text(table.read_text().replace(",tench,", ",goldfish,"))

    (problem,) = verify("imagenet-samples", root, datasets=catalogue).problems
    assert f"{TENCH} is 'tench', not 'goldfish'" in problem


@pytest.mark.parametrize(
    "member", ["../evil", "imagenet-sample-images-x/../../evil", "/tmp/evil-absolute"]
)
def test_archive_with_a_member_outside_the_folder_is_refused(tmp_path, member):
    url = _tar(
        tmp_path / "evil.tar.gz",
        {
            "imagenet-sample-images-x/n01440764_tench.JPEG": _image_bytes(8, 8),
            member: b"owned\n",
        },
    )
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=f"Refusing archive .*{re.escape(repr(member))}"):
        fetch(
            ["imagenet-samples"],
            root,
            urls={"imagenet-samples": url},
            datasets=_with_counts("imagenet-samples", 1),
        )
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()
    # Nothing is left: no dataset, no temporary folder, and no archive to reuse.
    assert list(root.iterdir()) == []


def test_unknown_names_are_refused_before_anything_is_downloaded(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet-21k'") as caught:
        fetch(["imagenet-samples", "imagenet-21k"], root)
    for name in DATASETS:
        assert name in str(caught.value)
    assert not root.exists()
    with pytest.raises(ValueError, match="imagenet-21k"):
        verify("imagenet-21k", root)
    with pytest.raises(ValueError, match="imagenet-21k"):
        missing(["imagenet-21k"], root)


def test_download_failure_names_the_url_and_the_offline_way(tmp_path):
    url = (tmp_path / "offline" / "missing.tar.gz").as_uri()
    with pytest.raises(DownloadError) as caught:
        fetch(["nips17-dev"], tmp_path / "data", urls={"nips17-dev": url})
    message = str(caught.value)
    assert url in message
    assert "PATCHFINDER_DATA" in message
    assert "nips17-dev/" in message


def test_missing_lists_absent_datasets_in_order(tmp_path):
    root = tmp_path / "data"
    names = ["tiny-imagenet-targets", "imagenet-samples"]
    assert missing(names, root) == names
    _fetch_samples(tmp_path, root)
    assert missing(names, root) == ["tiny-imagenet-targets"]


def test_catalogue_rows_and_archive_urls():
    rows = describe()
    assert [(r["name"], r["images"]) for r in rows] == [
        ("imagenet-samples", 1000),
        ("nips17-dev", 1000),
        ("tiny-imagenet-targets", 2200),
        ("activation-atlas-article", 37),
    ]
    assert rows[0]["source"] == "EliSchwartz/imagenet-sample-images@bc69043e"
    assert all(r["license"] and r["description"] for r in rows)
    for dataset in DATASETS.values():
        assert re.fullmatch(r"[0-9a-f]{40}", dataset.commit)
        assert archive_url(dataset) == (
            f"https://codeload.github.com/{dataset.repository}/tar.gz/{dataset.commit}"
        )
    assert {p.labels for p in DATASETS["activation-atlas-article"].parts} == {
        "labels.csv",
        "patches.csv",
    }
    # Every class the tables name is an ImageNet class.
    classes = imagenet()
    assert all(wnid in classes for _, wnid in ARTICLE_ORIGINALS)
    assert all(row[1] in classes for row in ARTICLE_PATCHES if row[1] != "*")


# --------------------------------------------------------------------------------------
# The real shared data root
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DATASETS))
def test_shared_data_root_verifies(data_root, name):
    report = verify(name, data_root)
    assert report.problems == ()
    assert report.images == DATASETS[name].images


@pytest.mark.slow
def test_article_conversion_reproduces_the_shared_copy(data_root, tmp_path):
    shared = data_root / "activation-atlas-article"
    images = "public/assets/images"
    files = {
        f"{images}/adversarial/{p.name}": p.read_bytes() for p in shared.glob("originals/*.png")
    }
    files |= {f"{images}/patches/{p.name}": p.read_bytes() for p in shared.glob("patches/*.png")}
    dataset = DATASETS["activation-atlas-article"]
    top = f"post--activation-atlas-{dataset.commit}"
    # Uncompressed: the PNGs are already compressed, and gzip would only cost time.
    archive = tmp_path / "article.tar"
    with tarfile.open(archive, "w") as tar:
        for rel, blob in files.items():
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

    root = tmp_path / "data"
    fetch(["activation-atlas-article"], root, urls={"activation-atlas-article": archive.as_uri()})

    fetched = root / "activation-atlas-article"
    for rel in ("patches/patches.csv", "labels-inceptionv1.txt"):
        assert (fetched / rel).read_bytes() == (shared / rel).read_bytes(), rel

    # The originals' table matches but for where in the repository the photos lie.
    def without_source(table: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "source"} for row in _rows(table)]

    assert without_source(fetched / "originals" / "labels.csv") == without_source(
        shared / "originals" / "labels.csv"
    )


def test_the_fetch_command_fills_a_data_root_from_a_local_archive(tmp_path):
    from conftest import run_cli

    url = _github_tar(tmp_path, "activation-atlas-article", _article_files())
    root = tmp_path / "data"
    args = ["data", "fetch", "activation-atlas-article", "--root", str(root)]
    result = run_cli(*args, "--url", f"activation-atlas-article={url}")
    assert result.exit_code == 0, result.output
    assert "37/37 images" in result.output and "fetched" in result.output
    assert len(_rows(root / "activation-atlas-article" / "patches" / "patches.csv")) == 31
    result = run_cli(*args)  # present and sound: skipped, nothing downloaded
    assert result.exit_code == 0 and "skipped" in result.output
    gone = (tmp_path / "nothing.tar.gz").as_uri()
    result = run_cli(
        "data", "fetch", "nips17-dev", "--root", str(root), "--url", f"nips17-dev={gone}"
    )
    assert result.exit_code == 2 and "nothing.tar.gz" in result.output
