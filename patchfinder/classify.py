"""Classify image sets with any `Classifier`: the first end-to-end use of the model zoo."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from patchfinder.data import ImageSet, LoadSummary, iterate_batches
from patchfinder.model import Classifier
from patchfinder.stats import Rate, rate


def classify(
    model: Classifier,
    images: ImageSet,
    *,
    top: int = 5,
    batch_size: int = 32,
    summary: LoadSummary | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Top-`top` predictions for every image that decodes.

    Images stream through in batches (memory stays bounded); undecodable files are skipped
    and recorded in `summary`. `progress(k)` is called after each batch of k images.

    Returns:
        One row per image, in the set's order: `file`, `label` (known class name or ""),
        `top1`, `top1_prob`, ..., `top{top}`, `top{top}_prob`.
    """
    if not 1 <= top <= len(model.classes):
        raise ValueError(f"top must be in 1..{len(model.classes)}; Received: top={top}")
    names = np.array(model.classes.names)
    rows: list[dict[str, object]] = []
    for batch in iterate_batches(
        images, size=model.input_size, batch_size=batch_size, summary=summary
    ):
        probs = model.probabilities(batch.images).numpy()  # (B, K)
        best = np.argsort(-probs, axis=1)[:, :top]  # (B, top)
        for record, indices, p in zip(batch.records, best, probs, strict=True):
            row: dict[str, object] = {
                "file": str(record.path),
                "label": record.label.name if record.label is not None else "",
            }
            for rank, index in enumerate(indices, start=1):
                row[f"top{rank}"] = names[index]
                row[f"top{rank}_prob"] = float(p[index])
            rows.append(row)
        if progress is not None:
            progress(len(batch.records))
    columns = ["file", "label"] + [f"top{r}{s}" for r in range(1, top + 1) for s in ("", "_prob")]
    return pd.DataFrame(rows, columns=columns)


def top1_accuracy(predictions: pd.DataFrame) -> Rate:
    """Share of labelled images whose top-1 prediction is their label, with its interval."""
    labelled = predictions[predictions["label"] != ""]
    return rate(int((labelled["top1"] == labelled["label"]).sum()), len(labelled))
