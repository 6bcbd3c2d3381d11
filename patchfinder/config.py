"""Checking TOML configs (audits, experiments): every problem is collected, with its location
in the file, and reported at once in a `ConfigError` before any model is loaded.

The helpers append `location: what` strings to a `problems` list and return what they could
read (or a placeholder), so one pass over a file finds everything wrong with it.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from patchfinder.labels import ClassList, UnknownClassError
from patchfinder.paste import DEFAULT_SIZES, parse_placements
from patchfinder.types import ClassPair

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class ConfigError(ValueError):
    """A config file (audit or experiment) with problems; `problems` lists every one as
    `location: what`."""

    def __init__(self, path: str | Path, problems: Sequence[str]) -> None:
        self.path = Path(path)
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        self.message = f"{self.path}: {count} problem{'s' if count != 1 else ''}\n{lines}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def unknown_keys(table: Mapping, allowed: Sequence[str], where: str) -> list[str]:
    """A problem for each key of `table` not in `allowed`, with the closest allowed key."""
    problems = []
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; expected {', '.join(allowed)}"
            problems.append(f"{_join(where, key)}: unknown key{hint}")
    return problems


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def expand_path(text: str, base: Path) -> tuple[Path | None, str | None]:
    """A config path: environment variables, `~`, relative to `base`. (path, problem).

    A path written in the file is relative to the file's folder `base`; a variable that
    *starts* the path (`${PATCHFINDER_DATA}/x`) holds a path set in the shell, so a relative
    value there (`PATCHFINDER_DATA=../shared/data`) means the current directory, as it does
    for every other command that reads the variable.
    """
    unset = [a or b for a, b in _VARIABLE.findall(text) if (a or b) not in os.environ]
    if unset:
        names = ", ".join(dict.fromkeys(unset))
        return None, f"environment variable {names} is not set (in {text!r})"
    lead = _VARIABLE.match(text)
    if lead:
        value = Path(os.environ[lead.group(1) or lead.group(2)]).expanduser()
        text = os.path.abspath(value) + text[lead.end() :]
    expanded = _VARIABLE.sub(lambda m: os.environ[m.group(1) or m.group(2)], text)
    path = Path(expanded).expanduser()
    return (path if path.is_absolute() else base / path), None


def existing_paths(value: object, where: str, base: Path, problems: list[str]) -> tuple[Path, ...]:
    """Existing paths from a string or a list of strings; globs expanded, problems noted."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        problems.append(
            f"{where}: expected a path or a non-empty list of paths; Received {value!r}"
        )
        return ()
    found: list[Path] = []
    for position, text in enumerate(items):
        at = where if isinstance(value, str) else f"{where}[{position}]"
        path, problem = expand_path(text, base)
        if path is None:
            problems.append(f"{at}: {problem}")
        elif any(char in str(path) for char in "*?["):
            matches = sorted(glob.glob(str(path)))
            if not matches:
                problems.append(f"{at}: no file matches {path}")
            found += [Path(match) for match in matches]
        elif not path.exists():
            problems.append(f"{at}: not found: {path}")
        else:
            found.append(path)
    return tuple(found)


def is_number(value: object) -> bool:
    """An int or float, and not a bool (TOML's `true` is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_pair(
    value: object, where: str, classes: ClassList, problems: list[str]
) -> ClassPair | None:
    """A `SRC:DST` pair of two different classes of `classes`; None (problems noted) else."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 2 or not all(part.strip() for part in parts):
        problems.append(f"{where}: expected SRC:DST, e.g. snorkel:scuba_diver; Received {value!r}")
        return None
    found = []
    for part in parts:
        try:
            found.append(classes.get(part.strip()))
        except UnknownClassError as error:
            problems.append(f"{where}: {error.message}")
    if len(found) < 2:
        return None
    if found[0] == found[1]:
        problems.append(f"{where}: the pair's classes must differ; Received {value!r}")
        return None
    return ClassPair(*found)


def check_sizes(value: object, where: str, problems: list[str]) -> tuple[float, ...]:
    """Patch sizes: a fraction of the image side in (0, 1], or a list of them."""
    sizes = [value] if is_number(value) else value
    if (
        not isinstance(sizes, list)
        or not sizes
        or not all(is_number(s) and 0 < s <= 1 for s in sizes)
    ):
        problems.append(
            f"{where}: expected fractions of the image side in (0, 1], e.g. [0.3, 0.4]; "
            f"Received {value!r}"
        )
        return DEFAULT_SIZES
    return tuple(float(s) for s in sizes)


def check_placements(value: object, where: str, problems: list[str]) -> str:
    """A placement spec that `paste.parse_placements` reads, such as "corners@0,90+grid:3"."""
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected a string such as 'corners'; Received {value!r}")
        parse_placements(value)
    except ValueError as error:
        problems.append(f"{where}: {error}")
        return "corners"
    return value


def check_whole(value: object, where: str, problems: list[str], *, minimum: int = 0) -> int:
    """A whole number >= `minimum` (a seed, a count); not a bool."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(f"{where}: expected a whole number >= {minimum}; Received {value!r}")
        return minimum
    return value
