"""Experiments: the Activation Atlas article's patch experiments, declared as data (one TOML
file each in `experiments/`) and run by one generic recipe, with no per-experiment code.

    experiment = load_experiment("train-patch")        # experiments/train-patch.toml
    root = check_data_root(experiment, data)           # every dataset it names, or why not
    run = reproduce(model, experiment, root)           # `discover` beside the article's patches
    write_reproduction(folder, run, experiment, model, details={...})

An experiment file (paths under `[data]` are relative to the data root: their first part
names a dataset of `datasets.DATASETS`, so a missing one can be named with its source):

    name = "train-patch"                      # default: the file's stem
    title = "Steam-locomotive patches flip snorkel to scuba diver"
    pair = "snorkel:scuba_diver"

    [data]
    pool = ["imagenet-samples", "nips17-dev"]              # the atlas's images
    images = ["tiny-imagenet-targets", "imagenet-samples"] # src photos (others ignored)
    patches = ["activation-atlas-article/patches/train-*.png"]  # the article's (`given`)
    noise = ["activation-atlas-article/patches/random.png"]     # its noise control

    [evaluation]                              # the harness (`discover.discover`)
    sizes = [0.3, 0.4, 0.5]
    placements = "corners"
    seed = 0
    screening_fraction = 0.5
    max_evaluation = 100                      # optional: a seeded subset bounds the cost

    [discovery]                               # optional; defaults as `discover.discover`
    layer = "block5c"                         # optional: the model's default layer
    top_k = 10
    random_crops = 10
    optimize_steps = 60                       # the optimised patch, which aims the "aimed" crops
    sources = ["attribution", "transfer", "aimed", "samples"]  # candidates' sources (default)
    aimed = 150                               # how many aimed (and samples) crops
    halving = true                            # successive halving (false: screen all alike)
    refine = true                             # rescale and shift the best crops

    [article]                                 # its published figures for this pair
    model = "InceptionV1 (GoogLeNet)"
    data = "1,000 ImageNet training images per class"
    n = 827
    best_rate = 0.850
    fixed_rate = 0.654
    noise_best_rate = 0.139
    noise_fixed_rate = 0.042

A variant names the file it varies and only what it changes; its tables are merged key by
key over that file's (`name` is never inherited):

    extends = "../train-patch.toml"           # relative to this file
    name = "train-patch-block6d"
    [discovery]
    layer = "block6d"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from patchfinder.config import (
    ConfigError,
    check_placements,
    check_sizes,
    check_whole,
    is_number,
    parse_pair,
    unknown_keys,
)
from patchfinder.data import ImageSet, find_images
from patchfinder.datasets import DATASETS
from patchfinder.discover import Discovery, Progress, discover
from patchfinder.labels import imagenet
from patchfinder.model import Classifier
from patchfinder.paste import parse_placements
from patchfinder.proposals import SOURCES, read_patches
from patchfinder.report import percent, write_discovery
from patchfinder.types import ClassPair

#: The experiment files of the checkout this package runs from (an editable install).
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def experiments_dir() -> Path:
    """Where experiments are looked up by name: `./experiments` when it exists (a clone's,
    run from its root: `pip install .` copies the package but not the experiment files),
    else the checkout's `EXPERIMENTS_DIR`."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else EXPERIMENTS_DIR


_TOP_KEYS = ("name", "title", "pair", "data", "evaluation", "discovery", "article")
_DATA_KEYS = ("pool", "images", "patches", "noise")
_EVALUATION_KEYS = ("sizes", "placements", "seed", "screening_fraction", "max_evaluation")
_DISCOVERY_KEYS = (
    "layer", "top_k", "samples_per_image", "grid", "random_crops", "optimize_steps", "sources",
    "aimed", "halving", "refine",
)  # fmt: skip
_ARTICLE_KEYS = (
    "model", "data", "n", "best_rate", "fixed_rate", "noise_best_rate", "noise_fixed_rate",
)  # fmt: skip
_RATES = ("best_rate", "fixed_rate", "noise_best_rate", "noise_fixed_rate")


@dataclass(frozen=True)
class Published:
    """The article's figures for one pair: on its model and data, never ours.

    Rates are fractions; `n` is the number of src images its model got right before patching.
    """

    model: str
    data: str
    n: int
    best_rate: float
    fixed_rate: float
    noise_best_rate: float
    noise_fixed_rate: float


@dataclass(frozen=True)
class Experiment:
    """One experiment file, checked. Data paths stay relative to the data root (`paths`)."""

    name: str
    title: str
    pair: str
    data: Mapping[str, tuple[str, ...]]
    sizes: tuple[float, ...]
    placements: str
    seed: int
    screening_fraction: float
    max_evaluation: int | None
    discovery: Mapping[str, object]
    article: Published
    file: Path = field(default=Path(), compare=False)

    @property
    def datasets(self) -> list[str]:
        """The datasets the experiment reads (first part of each data path), in order."""
        names = (Path(text).parts[0] for texts in self.data.values() for text in texts)
        return list(dict.fromkeys(names))

    def paths(self, key: str, root: Path) -> list[Path]:
        """The `[data]` entry `key` under `root`, glob patterns expanded (sorted).

        Raises:
            FileNotFoundError: a path or pattern matches nothing under `root`.
        """
        found: list[Path] = []
        for text in self.data.get(key, ()):
            if any(char in text for char in "*?["):
                matches = sorted(root.glob(text))
                if not matches:
                    raise FileNotFoundError(f"{self.name}: nothing matches {root / text}")
                found += matches
            elif (root / text).exists():
                found.append(root / text)
            else:
                raise FileNotFoundError(f"{self.name}: not found: {root / text}")
        return found


def list_experiments(folder: str | Path | None = None) -> list[Experiment]:
    """Every experiment file (`*.toml` with an `[article]` table) in `folder` (default:
    `experiments_dir()`), by name."""
    folder = Path(folder) if folder is not None else experiments_dir()
    files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    found = []
    for file in files:
        if "article" in tomllib.loads(file.read_text(encoding="utf-8")):
            found.append(read_experiment(file))
    return sorted(found, key=lambda experiment: experiment.name)


def load_experiment(name: str | Path, folder: str | Path | None = None) -> Experiment:
    """An experiment by name (`<folder>/<name>.toml`, default `experiments_dir()`) or by the
    path of its TOML file.

    Raises:
        ValueError: an unknown name (listing the known ones); ConfigError: a bad file.
    """
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():
        return read_experiment(path)
    folder = Path(folder) if folder is not None else experiments_dir()
    file = folder / f"{name}.toml"
    if not file.is_file():
        known = ", ".join(e.name for e in list_experiments(folder)) or "none"
        raise ValueError(f"Unknown experiment {str(name)!r}; known in {folder}: {known}")
    return read_experiment(file)


def _read_table(path: Path, chain: tuple[Path, ...]) -> dict:
    """The file's TOML table, merged over the table of the file it `extends` (if any)."""
    if not path.is_file():
        raise ConfigError(path, [f"experiment file not found: {path.resolve()}"])
    if path.resolve() in chain:
        raise ConfigError(path, ["extends: the files extend each other in a cycle"])
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(path, [f"not valid TOML: {error}"]) from None
    base = table.pop("extends", None)
    if base is None:
        return table
    if not isinstance(base, str):
        raise ConfigError(path, [f"extends: expected a file path; Received {base!r}"])
    merged = _read_table(path.parent / base, (*chain, path.resolve()))
    merged.pop("name", None)
    for key, value in table.items():
        both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_tables else value
    return merged


def read_experiment(path: str | Path) -> Experiment:
    """Read and check one experiment file (format: this module's docstring).

    Raises:
        ConfigError: every problem found, each with its location in the file.
    """
    path = Path(path)
    table = _read_table(path, ())
    problems = unknown_keys(table, _TOP_KEYS, "")
    sections = {}
    for key, allowed in (
        ("data", _DATA_KEYS),
        ("evaluation", _EVALUATION_KEYS),
        ("discovery", _DISCOVERY_KEYS),
        ("article", _ARTICLE_KEYS),
    ):
        section = table.get(key, {})
        if not isinstance(section, dict):
            problems.append(f"{key}: expected a table; Received {section!r}")
            section = {}
        problems += unknown_keys(section, allowed, key)
        sections[key] = section
    name = table.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        problems.append(f"name: expected a non-empty string; Received {name!r}")
    if "pair" not in table:
        problems.append("pair: missing (SRC:DST, e.g. snorkel:scuba_diver)")
    else:
        parse_pair(table["pair"], "pair", imagenet(), problems)
    data = {key: _data_paths(sections["data"], key, problems) for key in _DATA_KEYS}
    for key in ("pool", "images", "patches"):
        if not data[key]:
            problems.append(f"data.{key}: missing (paths under the data root)")
    unknown = [
        f"data: {name!r} is not a known dataset; expected one of {', '.join(DATASETS)}"
        for name in dict.fromkeys(Path(t).parts[0] for texts in data.values() for t in texts)
        if name not in DATASETS
    ]
    evaluation = sections["evaluation"]
    sizes = check_sizes(evaluation.get("sizes", [0.3, 0.4, 0.5]), "evaluation.sizes", problems)
    placements = check_placements(
        evaluation.get("placements", "corners"), "evaluation.placements", problems
    )
    seed = check_whole(evaluation.get("seed", 0), "evaluation.seed", problems)
    fraction = evaluation.get("screening_fraction", 0.5)
    if not is_number(fraction) or not 0 < fraction < 1:
        problems.append(
            f"evaluation.screening_fraction: expected a number in (0, 1); Received {fraction!r}"
        )
    max_evaluation = evaluation.get("max_evaluation")
    if max_evaluation is not None:
        max_evaluation = check_whole(
            max_evaluation, "evaluation.max_evaluation", problems, minimum=1
        )
    discovery = dict(sections["discovery"])
    for key, value in discovery.items():
        if key == "layer":
            if not isinstance(value, str) or not value:
                problems.append(f"discovery.layer: expected a layer name; Received {value!r}")
        elif key == "sources":
            if not (isinstance(value, list) and value and all(v in SOURCES for v in value)):
                problems.append(
                    f"discovery.sources: expected a list of some of {', '.join(SOURCES)}; "
                    f"Received {value!r}"
                )
        elif key in ("halving", "refine"):
            if not isinstance(value, bool):
                problems.append(f"discovery.{key}: expected true or false; Received {value!r}")
        else:
            check_whole(value, f"discovery.{key}", problems, minimum=0)
    article = _published(sections["article"], problems)
    if problems or unknown:
        raise ConfigError(path, [*problems, *unknown])
    return Experiment(
        name=str(name),
        title=str(table.get("title", name)),
        pair=str(table["pair"]),
        data=data,
        sizes=sizes,
        placements=placements,
        seed=seed,
        screening_fraction=float(fraction),
        max_evaluation=max_evaluation,
        discovery=discovery,
        article=article,  # type: ignore[arg-type]
        file=path,
    )


def _data_paths(section: Mapping, key: str, problems: list[str]) -> tuple[str, ...]:
    value = section.get(key, [])
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        problems.append(f"data.{key}: expected a list of paths under the data root")
        return ()
    for text in items:
        if Path(text).is_absolute() or ".." in Path(text).parts:
            problems.append(f"data.{key}: {text!r} must be relative to the data root")
    return tuple(items)


def _published(section: Mapping, problems: list[str]) -> Published | None:
    missing = [key for key in _ARTICLE_KEYS if key not in section]
    if missing:
        problems.append(f"article: missing {', '.join(missing)}")
        return None
    for key in _RATES:
        if not is_number(section[key]) or not 0 <= section[key] <= 1:
            problems.append(f"article.{key}: expected a rate in [0, 1]; Received {section[key]!r}")
    check_whole(section["n"], "article.n", problems, minimum=1)
    return Published(**{key: section[key] for key in _ARTICLE_KEYS})


# --- data -------------------------------------------------------------------------------------


def check_data_root(experiment: Experiment, root: str | Path | None) -> Path:
    """The data root, checked to hold every dataset `experiment` names.

    Raises:
        FileNotFoundError: no root was given, or datasets are missing under it; the message
            names each missing dataset, its public source and licence, and the fetch command.
    """
    # Absolute from here on: a relative root (`--data ../shared/data`) means the current
    # directory, and provenance records where the data really was.
    where = Path(os.path.abspath(Path(root).expanduser())) if root is not None else None
    missing = [name for name in experiment.datasets if where is None or not (where / name).is_dir()]
    if where is not None and not missing:
        return where
    lines = [
        f"  {name}: {DATASETS[name].description}; from github.com/{DATASETS[name].repository}"
        f" @ {DATASETS[name].commit[:8]} ({DATASETS[name].license})"
        for name in missing
    ]
    head = (
        "No data root: pass --data DIR or set PATCHFINDER_DATA."
        if where is None
        else f"The data root {where} lacks datasets."
    )
    raise FileNotFoundError(
        f"{head} Experiment {experiment.name} needs:\n"
        + "\n".join(lines)
        + f"\nFetch them (online) with: patchfinder data fetch {' '.join(missing)} --root DIR"
    )


def data_counts(experiment: Experiment, root: Path) -> dict[str, dict[str, int]]:
    """For provenance: per `[data]` key, each path (relative to the root) and its image count."""
    counts: dict[str, dict[str, int]] = {}
    for key in experiment.data:
        for path in experiment.paths(key, root):
            count = len(find_images([path])) if path.is_dir() else 1
            counts.setdefault(key, {})[str(path.relative_to(root))] = count
    return counts


# --- running ----------------------------------------------------------------------------------


def experiment_inputs(
    experiment: Experiment, root: Path, model: Classifier
) -> tuple[ClassPair, ImageSet, ImageSet]:
    """(pair, pool, images): `experiment`'s class pair in `model`'s classes and its atlas pool
    and src photos found under the data root `root`."""
    pair = ClassPair.parse(experiment.pair, model.classes)
    pool = find_images(experiment.paths("pool", root), classes=model.classes)
    images = find_images(experiment.paths("images", root), classes=model.classes)
    return pair, pool, images


def reproduce(
    model: Classifier,
    experiment: Experiment,
    root: Path,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> Discovery:
    """Run one experiment: `discover` for its pair on its data, with the article's patches
    and noise control evaluated beside the discovered ones on the same evaluation images."""
    pair, pool, images = experiment_inputs(experiment, root, model)
    given = read_patches([*experiment.paths("patches", root), *experiment.paths("noise", root)])
    return discover(
        model,
        pool,
        images,
        pair,
        given=given,
        sizes=experiment.sizes,
        placement=parse_placements(experiment.placements),
        screening_fraction=experiment.screening_fraction,
        max_evaluation=experiment.max_evaluation,
        seed=experiment.seed,
        cache=cache,
        progress=progress,
        **experiment.discovery,  # type: ignore[arg-type]
    )


def headline(run: Discovery, experiment: Experiment, model: Classifier) -> pd.DataFrame:
    """The side-by-side table: the article's published rates, then ours per kind of patch.

    For each kind, our row is its top patch by best rate (ties: fixed rate), with n and Wilson
    95 % intervals; the article's rows are its figures as published (no intervals given).
    """
    article = experiment.article
    ours = f"{model.name}, shared data"
    rows = [
        {
            "patches": "article's patches, as published",
            "model and data": f"{article.model}, {article.data}",
            "n": article.n,
            "best": f"{100 * article.best_rate:.1f} %",
            "fixed": f"{100 * article.fixed_rate:.1f} %",
        },
        {
            "patches": "article's noise control, as published",
            "model and data": f"{article.model}, {article.data}",
            "n": article.n,
            "best": f"{100 * article.noise_best_rate:.1f} %",
            "fixed": f"{100 * article.noise_fixed_rate:.1f} %",
        },
    ]
    summary = run.table.summary().sort_values(["best_rate", "fixed_rate"], ascending=False)
    labels = {
        "given": "article's patches (top one)",
        "discovered": "discovered (top one)",
        "random-crop": "random crops (top one)",
        "noise": "noise (top one)",
        "optimized": "optimised, upper bound",
    }
    for kind, label in labels.items():
        group = summary[summary["kind"] == kind]
        if group.empty and kind == "discovered":  # say so rather than drop the row
            rows.append(
                {"patches": f"{label}: none survived", "model and data": ours, "n": 0,
                 "best": "-", "fixed": "-"}
            )  # fmt: skip
        if group.empty:
            continue
        top = group.iloc[0]
        rows.append(
            {
                "patches": f"{label}: {top['patch']}",
                "model and data": ours,
                "n": int(top["n"]),
                "best": percent(top["best_rate"], top["best_low"], top["best_high"]),
                "fixed": percent(top["fixed_rate"], top["fixed_low"], top["fixed_high"]),
            }
        )
    return pd.DataFrame(rows)


def write_reproduction(
    folder: str | Path,
    run: Discovery,
    experiment: Experiment,
    model: Classifier,
    *,
    details: Mapping[str, object],
    table: pd.DataFrame,
) -> dict[str, Path]:
    """Everything `write_discovery` writes, with `table` (`headline`'s side-by-side table)
    at the top of `summary.md` and `report.html`."""
    return write_discovery(
        folder,
        run,
        model,
        details=details,
        placement=parse_placements(experiment.placements),
        headline=table,
        headline_note=(
            "The article's rows are its published figures on another model and other data; "
            "ours are measured here. Compare the pattern (patches vs controls), not the digits."
        ),
    )


def describe(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """One row per experiment, for `patchfinder reproduce --list`."""
    return pd.DataFrame(
        [
            {
                "name": e.name,
                "pair": e.pair.replace(":", " -> "),
                "title": e.title,
                "datasets": ", ".join(e.datasets),
            }
            for e in experiments
        ]
    )
