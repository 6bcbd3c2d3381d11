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
