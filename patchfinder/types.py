"""Small value types that flow between the stages. Shapes are stated once, here.

N = sampled activation vectors, D = channels at the layer, M = images in the pool,
R = classes kept per vector for labelling, S = model input side in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchfinder.labels import ClassList, ImageClass


@dataclass(frozen=True)
class ClassPair:
    """Push images of `src` toward `dst` (e.g. snorkel -> scuba_diver)."""

    src: ImageClass
    dst: ImageClass

    @classmethod
    def parse(cls, text: str, classes: ClassList) -> ClassPair:
        """`"snorkel:scuba_diver"` (names, wnids or indices) -> ClassPair.

        Raises:
            ValueError: when the text is not `SRC:DST`; UnknownClassError for unknown names.
        """
        parts = text.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"A class pair is written SRC:DST; Received: {text!r}")
        src, dst = (classes.get(p.strip()) for p in parts)
        if src == dst:
            raise ValueError(f"The pair's classes must differ; Received: {text!r}")
        return cls(src, dst)

    def __str__(self) -> str:
        return f"{self.src.name}:{self.dst.name}"


@dataclass
class ActivationSamples:
    """Spatial activation vectors sampled at one layer over an image pool, with attributions.

    Attribution (as in the Activation Atlas article): activation times the gradient of a
    logit with respect to that activation, summed over channels, at the vector's position.

    Attributes:
        layer: the layer name; `grid` (h, w) its spatial size; `input_size` S.
        files: (M,) the pool's image paths, as strings.
        vectors: float32 (N, D) activations.
        image: int (N,) index into `files`.
        position: int (N, 2) (row, col) in the layer's h x w grid.
        box: int (N, 4) receptive-field box (x0, y0, x1, y1) in model-input pixels (0..S).
        label: int (N,) the image's known class index, -1 when unknown.
        prediction: int (N,) the model's top-1 class for the image.
        pair_attribution: float32 (N,) attribution to logit[dst] - logit[src].
        class_ids: int (N, R) the classes each vector's image predicts most, best first.
        class_attribution: float32 (N, R) attribution to each of those classes.
    """

    layer: str
    grid: tuple[int, int]
    input_size: int
    files: list[str]
    vectors: np.ndarray
    image: np.ndarray
    position: np.ndarray
    box: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    pair_attribution: np.ndarray
    class_ids: np.ndarray
    class_attribution: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True)
class Cell:
    """One occupied grid cell of an atlas.

    Attributes:
        x, y: grid coordinates, 0..n-1 (x to the right, y down).
        members: int (count,) indices into the ActivationSamples.
        mean_activation: float32 (D,) the average vector: what the cell "is".
        attribution: mean pair attribution (dst minus src) of the members.
        top_classes: up to 5 (class index, summed attribution) pairs, strongest first.
        exemplar: index (into the samples) of the member closest to the mean activation.
    """

    x: int
    y: int
    members: np.ndarray
    mean_activation: np.ndarray
    attribution: float
    top_classes: tuple[tuple[int, float], ...]
    exemplar: int

    @property
    def count(self) -> int:
        return len(self.members)


#: The kinds of patch an evaluation compares (the `kind` column of every table).
PATCH_KINDS = ("discovered", "given", "noise", "random-crop", "optimized")


@dataclass(frozen=True)
class Patch:
    """An image to paste onto others.

    Attributes:
        name: unique within a run, used in tables and file names (e.g. `train-01`).
        kind: one of PATCH_KINDS.
        pixels: float32 (h, w, 3) RGB in 0..255 (any size; pasting resizes it).
    """

    name: str
    kind: str
    pixels: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in PATCH_KINDS:
            raise ValueError(f"Patch kind must be one of {PATCH_KINDS}; Received: {self.kind!r}")
        if self.pixels.ndim != 3 or self.pixels.shape[-1] != 3:
            raise ValueError(
                f"Patch {self.name!r} pixels must be (h, w, 3); Received: {self.pixels.shape}"
            )


@dataclass(frozen=True)
class Proposal:
    """A discovered patch and where it came from.

    Attributes:
        patch: the patch (kind `discovered`).
        source_file: the pool image it was cropped from.
        source_class: that image's known class name ("" when unknown).
        box: (x0, y0, x1, y1) of the crop in the source image's model-input pixels.
        cell: (x, y) of the atlas cell whose vector led to it.
        attribution: that vector's pair attribution (dst minus src).
        screening_rate: targeted flip rate on the screening images (best setting).
        screening_n: the number of screening images behind that rate.
        source: how the candidate was found (`proposals.SOURCES`: "attribution", "transfer",
            "aimed"), with "+refined" when it is a refined crop of another proposal.
        vector: the index, in the atlas's samples, of the vector it was cropped around.
        similarity: for "aimed": that vector's cosine similarity to the nearest activation
            of the optimised patch (nan otherwise).
        parent: for a refined crop: the name of the proposal it refines ("" otherwise).
    """

    patch: Patch
    source_file: str
    source_class: str
    box: tuple[int, int, int, int]
    cell: tuple[int, int]
    attribution: float
    screening_rate: float = float("nan")
    screening_n: int = 0
    source: str = "attribution"
    vector: int = -1
    similarity: float = float("nan")
    parent: str = ""
