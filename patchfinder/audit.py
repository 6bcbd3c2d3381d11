"""Audit: a CI gate on known patches. Each check pastes known patches onto photos of a class
and fails when they flip the model too often, or more often than in the last release.

    config = load_config("audit.toml")               # every problem at once; no model loaded
    model = load_model(config.model.name, ...)
    result = run_audit(config, model=model)           # one `discover.measure` per check
    verdict = compare(result, read_baseline(file))    # limits, then regressions
    to_markdown(result, verdict), to_junit_xml(result, verdict), to_json(result, verdict)

No discovery happens in an audit: the patches are given, and with the same model, images,
patches and seed every number is the same, so a baseline means something.

The config (TOML; checks are numbered from 0 in messages, `checks[2]` is the third):

    [model]                          # optional; default: the zoo's efficientnet-lite0
    name = "efficientnet-lite0"      # a zoo name, or a .keras/.h5 file or SavedModel folder
    # weights = "lite0.pt"           # local weights of a zoo model (offline use)
    # labels = "labels.txt"          # saved models only: classes when not ImageNet's
    # preprocess = "unit"            # saved models only: none, unit, symmetric, lite, lucid

    [defaults]                       # optional: any check key but name and pair
    images = ["${PATCHFINDER_DATA}/imagenet-samples"]
    sizes = [0.4]
    placements = "corners"
    seed = 0
    max_images = 100                 # optional: a seeded subset of the eligible photos
    limits = { best_rate = 0.9, fixed_rate = 0.8, tolerance = 0.05, min_n = 1 }

    [[checks]]
    name = "snorkel-train"           # default: SRC->DST; names key the baseline, so unique
    pair = "snorkel:scuba_diver"     # class names, wnids or indices
    images = ["photos/snorkel"]      # files, folders or labels .csv (see `data.find_images`)
    patches = ["patches/train-*.png"]  # files, folders or glob patterns
    [checks.limits]
    best_rate = 0.5                  # overrides the default's best_rate; the rest is kept

Paths are relative to the config file's folder; `${VAR}` and `$VAR` are replaced by
environment variables (an unset one is an error), `~` by the home folder, and a path with
`*`, `?` or `[` is a glob pattern (sorted matches; none is an error).

A check measures every patch's best and fixed rates (`evaluate.FlipTable.summary`) on the
src photos the model gets right (n of them). Its rate is the highest over its patches. It
fails when:

* n < `limits.min_n` (default 1: a check that measured nothing must not pass);
* its best rate > `limits.best_rate`, or its fixed rate > `limits.fixed_rate` (each optional);
* against a baseline (an earlier run's JSON): its best rate > the baseline's best rate +
  `limits.tolerance`, or its fixed rate > the baseline's fixed rate + `limits.tolerance`
  (absolute rates: 0.05 is five percentage points; default 0, no worse at all).

Exit statuses: `PASSED` 0, `FAILED` 1, `CONFIG_ERROR` 2 (`ConfigError` and other usage errors).
"""

from __future__ import annotations

import difflib
import json
import math
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from patchfinder.config import (
    ConfigError,
    check_placements,
    check_sizes,
    check_whole,
    existing_paths,
    expand_path,
    is_number,
    parse_pair,
    unknown_keys,
)
from patchfinder.data import find_images
from patchfinder.labels import ClassList, imagenet
from patchfinder.model import PREPROCESSING, Classifier, UnknownModelError, model_spec
from patchfinder.paste import DEFAULT_SIZES, parse_placements
from patchfinder.proposals import read_patches
from patchfinder.report import markdown_table, percent
from patchfinder.types import ClassPair

#: Exit statuses of `patchfinder audit`.
PASSED, FAILED, CONFIG_ERROR = 0, 1, 2
#: The JSON's `format`; a baseline must have it.
JSON_FORMAT = "patchfinder-audit/1"

_TOP_KEYS = ("model", "defaults", "checks")
_MODEL_KEYS = ("name", "weights", "labels", "preprocess")
_CHECK_KEYS = (
    "name", "pair", "images", "patches", "sizes", "placements", "seed", "max_images", "limits",
)  # fmt: skip
_DEFAULT_KEYS = tuple(key for key in _CHECK_KEYS if key not in ("name", "pair"))
_LIMIT_KEYS = ("best_rate", "fixed_rate", "tolerance", "min_n")
_EPSILON = 1e-9  # rates are ratios of counts: a rate equal to its limit passes


# --- config ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What a check allows: the highest best and fixed rates (None: no limit), the tolerance
    over a baseline's rates, and the fewest eligible images n that make a measurement."""

    best_rate: float | None = None
    fixed_rate: float | None = None
    tolerance: float = 0.0
    min_n: int = 1


@dataclass(frozen=True)
class ModelConfig:
    """The model to audit: a zoo name or an absolute path, and `load_model`'s options."""

    name: str = "efficientnet-lite0"
    weights: Path | None = None
    labels: Path | None = None
    preprocess: str | None = None


@dataclass(frozen=True)
class Check:
    """One gate: patches pasted onto src photos must flip them to dst at most so often.

    Attributes:
        name: unique in the config; keys the baseline.
        pair: `SRC:DST` as written (validated; resolved on the model's classes when run).
        images: files, folders or labels files, resolved and globbed.
        patches: patch files or folders, resolved and globbed.
        sizes, placements, seed: the pasting settings (`evaluate.evaluate_patches`).
        max_images: measure a seeded subset of at most this many eligible images (None: all).
        limits: what the check allows.
    """

    name: str
    pair: str
    images: tuple[Path, ...]
    patches: tuple[Path, ...]
    sizes: tuple[float, ...] = DEFAULT_SIZES
    placements: str = "corners"
    seed: int = 0
    max_images: int | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class AuditConfig:
    """A validated audit config: its file, the model and the checks, in file order."""

    path: Path
    model: ModelConfig
    checks: tuple[Check, ...]


def _model(section: object, base: Path, problems: list[str]) -> tuple[ModelConfig, ClassList]:
    """The model section, checked without loading the model; and the classes it has."""
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        problems.append(f"model: expected a table or a name; Received {section!r}")
        return ModelConfig(), imagenet()
    problems += unknown_keys(section, _MODEL_KEYS, "model")
    options: dict[str, object] = {}
    for key in ("weights", "labels"):
        if key in section:
            found = existing_paths(section[key], f"model.{key}", base, problems)
            if len(found) > 1:
                problems.append(f"model.{key}: expected one file; Received {len(found)}")
            options[key] = found[0] if len(found) == 1 else None
    name = section.get("name", ModelConfig.name)
    saved = False
    if not isinstance(name, str) or not name.strip():
        problems.append(f"model.name: expected a zoo name or a path; Received {name!r}")
        name = ModelConfig.name
    else:
        path, problem = expand_path(name, base)
        if problem is not None:
            problems.append(f"model.name: {problem}")
        elif path is not None and (path.suffix in {".keras", ".h5"} or path.exists()):
            saved, name = True, str(path)
            if not path.exists():
                problems.append(f"model.name: model file not found: {path}")
        else:
            try:
                name = model_spec(name).name
            except UnknownModelError as error:
                problems.append(f"model.name: {error.message} (looked for {path})")
    preprocess = section.get("preprocess")
    if preprocess is not None and (
        not isinstance(preprocess, str) or preprocess not in PREPROCESSING
    ):
        problems.append(
            f"model.preprocess: expected one of {', '.join(PREPROCESSING)}; Received {preprocess!r}"
        )
    for key in ("labels", "preprocess") if not saved else ():
        if key in section:
            problems.append(f"model.{key}: applies to saved models, not to the zoo's {name}")
    if saved and "weights" in section:
        problems.append("model.weights: applies to zoo models; a saved model holds its weights")
    classes = imagenet()
    labels = options.get("labels")
    if isinstance(labels, Path):
        try:
            classes = ClassList.from_file(labels)
        except (OSError, ValueError, KeyError) as error:
            problems.append(f"model.labels: {error}")
    config = ModelConfig(
        name=name,
        weights=options.get("weights"),  # type: ignore[arg-type]
        labels=labels,  # type: ignore[arg-type]
        preprocess=preprocess if isinstance(preprocess, str) else None,
    )
    return config, classes


def _limits(value: Mapping, at: Callable[[str], str], problems: list[str]) -> Limits:
    """Limits from a table; `at(key)` is where each key was written."""
    checked: dict[str, float | int] = {}
    for key, number in value.items():
        if key not in _LIMIT_KEYS:
            close = difflib.get_close_matches(key, _LIMIT_KEYS, n=1)
            hint = (
                f" (did you mean {close[0]}?)" if close else f"; expected {', '.join(_LIMIT_KEYS)}"
            )
            problems.append(f"{at(key)}: unknown key{hint}")
        elif key == "min_n":
            if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
                checked[key] = number
            else:
                problems.append(f"{at(key)}: expected a whole number >= 0; Received {number!r}")
        elif is_number(number) and 0 <= number <= 1:
            checked[key] = float(number)
        else:
            problems.append(f"{at(key)}: expected a rate in [0, 1]; Received {number!r}")
    return Limits(**checked)  # type: ignore[arg-type]


def _check(
    index: int,
    table: Mapping,
    defaults: Mapping,
    base: Path,
    classes: ClassList,
    problems: list[str],
) -> Check | None:
    where = f"checks[{index}]"
    problems += unknown_keys(table, _CHECK_KEYS, where)
    # Each key comes from the check, else from [defaults]; problems name where it was written.
    merged = {**defaults, **table}
    given = table.get("limits", {})
    if isinstance(defaults.get("limits"), dict) and isinstance(given, dict):
        merged["limits"] = {**defaults["limits"], **given}

    def at(key: str) -> str:
        return f"defaults.{key}" if key in defaults and key not in table else f"{where}.{key}"

    def limit_at(key: str) -> str:
        return f"{where}.limits.{key}" if key in given else f"defaults.limits.{key}"

    count = len(problems)
    pair = None
    if "pair" not in table:
        problems.append(f"{where}.pair: missing (SRC:DST, e.g. snorkel:scuba_diver)")
    else:
        pair = parse_pair(table["pair"], f"{where}.pair", classes, problems)
    name = merged.get("name")
    if name is None:
        name = str(merged.get("pair", f"check-{index}")).replace(":", "->")
    elif not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: expected a non-empty string; Received {name!r}")
    images, patches = (), ()
    for key in ("images", "patches"):
        if key not in merged:
            problems.append(f"{where}.{key}: missing (files, folders or glob patterns)")
    if "images" in merged:
        images = existing_paths(merged["images"], at("images"), base, problems)
    if "patches" in merged:
        patches = existing_paths(merged["patches"], at("patches"), base, problems)
    sizes = check_sizes(merged.get("sizes", list(DEFAULT_SIZES)), at("sizes"), problems)
    placements = check_placements(merged.get("placements", "corners"), at("placements"), problems)
    seed = check_whole(merged.get("seed", 0), at("seed"), problems)
    max_images = merged.get("max_images")
    if max_images is not None:
        max_images = check_whole(max_images, at("max_images"), problems, minimum=1)
    limits = merged.get("limits", {})
    if not isinstance(limits, dict):
        problems.append(f"{at('limits')}: expected a table of limits; Received {limits!r}")
        limits = {}
    checked_limits = _limits(limits, limit_at, problems)
    if len(problems) > count:
        return None
    # Everything is there: do the images hold src photos, and do the patches decode?
    try:
        found = find_images(images, classes=classes)
        if pair is not None and not any(record.label == pair.src for record in found):
            problems.append(
                f"{at('images')}: no image labelled {pair.src.name} among the {len(found)} "
                f"images (labels come from a labels.csv or class folders)"
            )
    except (OSError, ValueError, KeyError) as error:
        problems.append(f"{at('images')}: {getattr(error, 'message', None) or error}")
    try:
        read_patches(patches)
    except (OSError, ValueError) as error:
        problems.append(f"{at('patches')}: {error}")
    return Check(
        name=name,
        pair=str(merged["pair"]),
        images=images,
        patches=patches,
        sizes=sizes,
        placements=placements,
        seed=seed,
        max_images=max_images,
        limits=checked_limits,
    )


def load_config(path: str | Path) -> AuditConfig:
    """Read and check an audit config (format: this module's docstring) without loading
    the model: keys, types, paths, class names (in ImageNet's list or the labels file),
    the model's name (in the zoo, or an existing path), placements, images and patches.

    Raises:
        ConfigError: listing every problem found, each with its location in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, [f"config file not found: {path.resolve()}"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(path, [f"not valid TOML: {error}"]) from None
    base = path.resolve().parent
    problems = unknown_keys(data, _TOP_KEYS, "")
    model, classes = _model(data.get("model", {}), base, problems)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"defaults: expected a table; Received {defaults!r}")
        defaults = {}
    problems += unknown_keys(defaults, _DEFAULT_KEYS, "defaults")
    tables = data.get("checks")
    checks: list[Check] = []
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        problems.append("checks: expected one or more [[checks]] tables")
        tables = []
    for index, table in enumerate(tables):
        check = _check(index, table, defaults, base, classes, problems)
        if check is not None:
            checks.append(check)
    first: dict[str, int] = {}
    for index, check in enumerate(checks):
        if check.name in first:
            problems.append(
                f"checks[{index}].name: {check.name!r} is also the name of "
                f"checks[{first[check.name]}]; names key the baseline, so they must be unique"
            )
        first.setdefault(check.name, index)
    if problems:
        raise ConfigError(path, list(dict.fromkeys(problems)))  # defaults may repeat one
    return AuditConfig(path=path, model=model, checks=tuple(checks))


# --- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchRates:
    """One patch's row of `FlipTable.summary()`: best and fixed rates with Wilson 95 %."""

    patch: str
    kind: str
    n: int
    best_rate: float
    best_low: float
    best_high: float
    fixed_rate: float
    fixed_low: float
    fixed_high: float
    fixed_setting: str

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> PatchRates:
        """From a `FlipTable.summary()` record, as plain Python values."""
        rates = ("best_rate", "best_low", "best_high", "fixed_rate", "fixed_low", "fixed_high")
        return cls(
            patch=str(row["patch"]),
            kind=str(row["kind"]),
            n=int(row["n"]),  # type: ignore[call-overload]
            fixed_setting=str(row["fixed_setting"]),
            **{key: float(row[key]) for key in rates},  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class CheckResult:
    """A check's measurement.

    Attributes:
        check: the check as configured.
        pair: the resolved `src:dst` names.
        n: the eligible images (src photos the model gets right) every rate is over.
        n_candidates: the src photos that decoded (n <= n_candidates).
        skipped: (file, reason) for src photos that failed to decode.
        patches: one row per patch, in the order read.
        seconds: how long the check took (the only number that varies between runs).
    """

    check: Check
    pair: str
    n: int
    n_candidates: int
    skipped: tuple[tuple[str, str], ...]
    patches: tuple[PatchRates, ...]
    seconds: float = 0.0

    def _top(self, rate: Callable[[PatchRates], float]) -> PatchRates | None:
        measured = [p for p in self.patches if math.isfinite(rate(p))]
        return max(measured, key=rate) if measured else None  # the first on ties

    @property
    def best(self) -> PatchRates | None:
        """The patch with the highest best rate (None when n = 0)."""
        return self._top(lambda p: p.best_rate)

    @property
    def fixed(self) -> PatchRates | None:
        """The patch with the highest fixed rate (None when n = 0)."""
        return self._top(lambda p: p.fixed_rate)

    def settings(self) -> dict[str, object]:
        """What the numbers depend on besides the model and the photos."""
        return {
            "pair": self.pair,
            "patches": [p.patch for p in self.patches],
            "sizes": list(self.check.sizes),
            "placements": self.check.placements,
            "seed": self.check.seed,
            "max_images": self.check.max_images,
        }


@dataclass(frozen=True)
class AuditResult:
    """Every check's measurement on one model."""

    config: AuditConfig
    model: str
    weights_id: str
    checks: tuple[CheckResult, ...]


#: progress(stage, done, total): one bar per check in the CLI.
Progress = Callable[[str, int, int], None]


def run_audit(
    config: AuditConfig, *, model: Classifier, progress: Progress | None = None
) -> AuditResult:
    """Measure every check on `model`: one batched `discover.measure` per check.

    Raises:
        FileNotFoundError, ValueError, UnknownClassError: as `find_images`, `read_patches`
            and `ClassPair.parse` do (a config checked by `load_config` passes them, unless
            the model's classes differ from those it was checked against).
    """
    from patchfinder.discover import measure

    results = []
    for check in config.checks:
        start = time.perf_counter()
        pair = ClassPair.parse(check.pair, model.classes)
        images = find_images(check.images, classes=model.classes)
        patches = read_patches(check.patches)

        def report(stage: str, done: int, total: int, name: str = check.name) -> None:
            if progress is not None:
                progress(name, done, total)

        evaluation, table = measure(
            model, images, pair, patches, sizes=check.sizes,
            placement=parse_placements(check.placements), seed=check.seed,
            max_images=check.max_images, progress=report,
        )  # fmt: skip
        rows = tuple(map(PatchRates.from_row, table.summary().to_dict("records")))
        results.append(
            CheckResult(
                check=check,
                pair=str(pair),
                n=len(evaluation),
                n_candidates=evaluation.n_candidates,
                skipped=tuple((str(path), reason) for path, reason in evaluation.skipped),
                patches=rows,
                seconds=round(time.perf_counter() - start, 3),
            )
        )
    return AuditResult(config, model.name, model.weights_id, tuple(results))


# --- verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A check's numbers from an earlier run (its JSON), to compare against."""

    best_rate: float
    fixed_rate: float
    n: int
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One check's verdict: why it failed (empty: passed), and notes for the reader."""

    name: str
    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    baseline: Baseline | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Verdict:
    """Every check's outcome, in config order."""

    outcomes: tuple[Outcome, ...]
    baseline: str | None = None

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.passed)

    @property
    def exit_status(self) -> int:
        """`PASSED` (0) when every check passes, else `FAILED` (1)."""
        return PASSED if self.passed else FAILED


def _measured(what: str, rates: PatchRates, n: int) -> str:
    value, low, high = (
        (rates.best_rate, rates.best_low, rates.best_high)
        if what == "best"
        else (rates.fixed_rate, rates.fixed_low, rates.fixed_high)
    )
    return f"{what}_rate {value:.3f} (95 % CI {low:.3f}-{high:.3f}, n={n}, patch {rates.patch})"


def compare(
    result: AuditResult, baseline: Mapping[str, Baseline] | None = None, *, source: str = ""
) -> Verdict:
    """Each check against its limits and, where `baseline` has it, the baseline's rates.

    Args:
        result: the measurements (`run_audit`).
        baseline: an earlier run's numbers by check name (`read_baseline`); None: no baseline.
        source: where the baseline came from, for the reports.
    """
    outcomes = []
    for check in result.checks:
        limits, failures, notes = check.check.limits, [], []
        if check.n < limits.min_n:
            failures.append(
                f"n={check.n} eligible images (of {check.n_candidates} src photos, the ones the "
                f"model classifies as src) < min_n {limits.min_n}"
            )
        tops = {"best": check.best, "fixed": check.fixed}
        ceilings = {"best": limits.best_rate, "fixed": limits.fixed_rate}
        for what, top in tops.items():
            ceiling = ceilings[what]
            if top is not None and ceiling is not None:
                rate = top.best_rate if what == "best" else top.fixed_rate
                if rate > ceiling + _EPSILON:
                    failures.append(f"{_measured(what, top, check.n)} > limit {ceiling:.3f}")
        previous = None if baseline is None else baseline.get(check.check.name)
        if baseline is not None and previous is None:
            notes.append("no baseline for this check yet")
        if previous is not None:
            for what, top in tops.items():
                before = previous.best_rate if what == "best" else previous.fixed_rate
                if top is None or not math.isfinite(before):
                    continue
                rate = top.best_rate if what == "best" else top.fixed_rate
                if rate > before + limits.tolerance + _EPSILON:
                    failures.append(
                        f"{_measured(what, top, check.n)} > baseline {before:.3f} "
                        f"(n={previous.n}) + tolerance {limits.tolerance:.3f}"
                    )
            changed = sorted(
                key
                for key, value in check.settings().items()
                if key in previous.settings and previous.settings[key] != value
            )
            if changed:
                notes.append(f"the baseline was measured with other {', '.join(changed)}")
        outcomes.append(Outcome(check.check.name, tuple(failures), tuple(notes), previous))
    return Verdict(tuple(outcomes), baseline=source or None)


def read_baseline(path: str | Path) -> dict[str, Baseline]:
    """The per-check rates of an earlier run's JSON (`to_json`, or `--update-baseline`).

    Raises:
        FileNotFoundError: no such file; ValueError: not an audit JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Baseline not found: {path}; write one with --update-baseline --baseline {path}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != JSON_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {JSON_FORMAT!r}")
        return {
            str(check["name"]): Baseline(
                best_rate=math.nan if check["best_rate"] is None else float(check["best_rate"]),
                fixed_rate=math.nan if check["fixed_rate"] is None else float(check["fixed_rate"]),
                n=int(check["n"]),
                settings=dict(check.get("settings", {})),
            )
            for check in data["checks"]
        }
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a patchfinder audit JSON (written by `patchfinder audit --json` "
            f"or --update-baseline): {error}"
        ) from None


# --- reports ---------------------------------------------------------------------------------


def _plain(value: float) -> float | None:
    """JSON has no NaN: an undefined rate (n = 0) is null."""
    return value if math.isfinite(value) else None


def _rates(rates: PatchRates | None, what: str) -> dict[str, object]:
    if rates is None:
        return {f"{what}_rate": None, f"{what}_low": None, f"{what}_high": None}
    value, low, high = (getattr(rates, f"{what}_{part}") for part in ("rate", "low", "high"))
    return {f"{what}_rate": _plain(value), f"{what}_low": _plain(low), f"{what}_high": _plain(high)}


def to_dict(
    result: AuditResult, verdict: Verdict, *, provenance: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Every number of the audit, per check and per patch, and the provenance.

    Everything but `provenance` (which also holds each check's seconds) depends only on the
    model, the photos, the patches and the config: two runs give the same values.
    """
    checks = []
    for check, outcome in zip(result.checks, verdict.outcomes, strict=True):
        limits = check.check.limits
        best, fixed = check.best, check.fixed
        previous = outcome.baseline
        checks.append(
            {
                "name": check.check.name,
                "passed": outcome.passed,
                "failures": list(outcome.failures),
                "notes": list(outcome.notes),
                "pair": check.pair,
                "n": check.n,
                "n_candidates": check.n_candidates,
                **_rates(best, "best"),
                "best_patch": None if best is None else best.patch,
                **_rates(fixed, "fixed"),
                "fixed_patch": None if fixed is None else fixed.patch,
                "fixed_setting": None if fixed is None else fixed.fixed_setting,
                "limits": {
                    "best_rate": limits.best_rate,
                    "fixed_rate": limits.fixed_rate,
                    "tolerance": limits.tolerance,
                    "min_n": limits.min_n,
                },
                "baseline": None
                if previous is None
                else {
                    "best_rate": _plain(previous.best_rate),
                    "fixed_rate": _plain(previous.fixed_rate),
                    "n": previous.n,
                },
                "settings": check.settings(),
                "images": [str(path) for path in check.check.images],
                "skipped": [{"file": f, "reason": r} for f, r in check.skipped],
                "patches": [
                    {
                        "patch": p.patch,
                        "kind": p.kind,
                        "n": p.n,
                        **_rates(p, "best"),
                        **_rates(p, "fixed"),
                        "fixed_setting": p.fixed_setting,
                    }
                    for p in check.patches
                ],
            }
        )
    seconds = {check.check.name: check.seconds for check in result.checks}
    return {
        "format": JSON_FORMAT,
        "passed": verdict.passed,
        "exit_status": verdict.exit_status,
        "model": result.model,
        "weights": result.weights_id,
        "config": str(result.config.path),
        "baseline": verdict.baseline,
        "checks": checks,
        "provenance": {**(provenance or {}), "seconds": seconds},
    }


def to_json(
    result: AuditResult, verdict: Verdict, *, provenance: Mapping[str, object] | None = None
) -> str:
    """`to_dict` as indented JSON; it can serve as the next run's baseline."""
    return json.dumps(to_dict(result, verdict, provenance=provenance), indent=2) + "\n"


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _cell(rates: PatchRates | None, what: str) -> str:
    if rates is None:
        return "n/a"
    return percent(*(getattr(rates, f"{what}_{part}") for part in ("rate", "low", "high")))


def to_markdown(result: AuditResult, verdict: Verdict) -> str:
    """A GitHub-flavoured summary: a verdict line, one row per check, the failures, and
    every patch's rates in a collapsed section."""
    failed = len(verdict.failed)
    headline = (
        f"passed ({len(verdict.outcomes)} checks)"
        if verdict.passed
        else f"FAILED ({failed} of {len(verdict.outcomes)} checks)"
    )
    icon = "✅" if verdict.passed else "❌"
    lines = [f"## {icon} patchfinder audit {headline}", ""]
    lines += [
        f"Model `{result.model}`, config `{result.config.path}`, "
        f"baseline {f'`{verdict.baseline}`' if verdict.baseline else 'none'}.",
        "",
    ]
    rows = []
    for check, outcome in zip(result.checks, verdict.outcomes, strict=True):
        limits, previous = check.check.limits, outcome.baseline
        rows.append(
            {
                "check": check.check.name,
                "pair": check.pair.replace(":", " → "),
                "n": check.n,
                "best (95 % CI)": _cell(check.best, "best"),
                "best limit": _limit(limits.best_rate),
                "fixed (95 % CI)": _cell(check.fixed, "fixed"),
                "fixed limit": _limit(limits.fixed_rate),
                "baseline best / fixed": "-"
                if previous is None
                else f"{_limit(_plain(previous.best_rate))} / {_limit(_plain(previous.fixed_rate))}"
                f" (+{100 * limits.tolerance:.1f})",
                "result": "✅ pass" if outcome.passed else "❌ fail",
            }
        )
    lines += [markdown_table(pd.DataFrame(rows)), ""]
    if verdict.failed:
        lines += ["### Failures", ""]
        lines += [f"- **{o.name}**: {failure}" for o in verdict.failed for failure in o.failures]
        lines.append("")
    notes = [(o.name, note) for o in verdict.outcomes for note in o.notes]
    notes += [
        (check.check.name, f"{len(check.skipped)} src photos could not be decoded")
        for check in result.checks
        if check.skipped
    ]
    if notes:
        lines += ["### Notes", ""] + [f"- {name}: {note}" for name, note in notes] + [""]
    lines += ["<details><summary>Every patch</summary>", ""]
    for check in result.checks:
        table = pd.DataFrame(
            [
                {
                    "patch": p.patch,
                    "n": p.n,
                    "best (95 % CI)": _cell(p, "best"),
                    "fixed (95 % CI)": _cell(p, "fixed"),
                    "fixed setting": p.fixed_setting,
                }
                for p in check.patches
            ]
        )
        lines += [f"#### {check.check.name} ({check.pair})", "", markdown_table(table), ""]
    lines += ["</details>", ""]
    lines.append(
        "n: src photos the model classifies correctly. best: share flipped to dst by at least "
        "one size and placement; fixed: the single best size and placement for all n. A "
        "check's rate is the highest over its patches. Intervals are Wilson 95 %."
    )
    return "\n".join(lines) + "\n"


def to_junit_xml(result: AuditResult, verdict: Verdict) -> str:
    """JUnit XML: one testcase per check, with a `failure` element (rates, n, intervals)
    for each check that failed and every patch's rates in its `system-out`."""
    failures = str(len(verdict.failed))
    total = str(len(verdict.outcomes))
    seconds = f"{sum(check.seconds for check in result.checks):.3f}"
    suites = ET.Element(
        "testsuites", name="patchfinder audit", tests=total, failures=failures, time=seconds
    )
    suite = ET.SubElement(
        suites, "testsuite", name=f"patchfinder audit ({result.model})", tests=total,
        failures=failures, errors="0", skipped="0", time=seconds,
    )  # fmt: skip
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("model", result.model),
        ("weights", result.weights_id),
        ("config", str(result.config.path)),
        ("baseline", verdict.baseline or ""),
    ):
        ET.SubElement(properties, "property", name=key, value=value)
    for check, outcome in zip(result.checks, verdict.outcomes, strict=True):
        case = ET.SubElement(
            suite, "testcase", classname=f"patchfinder.audit.{check.pair.replace(':', '->')}",
            name=check.check.name, time=f"{check.seconds:.3f}",
        )  # fmt: skip
        if not outcome.passed:
            failure = ET.SubElement(
                case, "failure", message="; ".join(outcome.failures), type="PatchFlipRate"
            )
            failure.text = "\n".join(outcome.failures)
        out = [f"{check.pair}: n={check.n} of {check.n_candidates} src photos"]
        out += [
            f"{p.patch}: best {_cell(p, 'best')}, fixed {_cell(p, 'fixed')} ({p.fixed_setting})"
            for p in check.patches
        ]
        out += list(outcome.notes)
        ET.SubElement(case, "system-out").text = "\n".join(out)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
