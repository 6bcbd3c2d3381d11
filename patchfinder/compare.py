"""Does a re-run agree with a committed run? An honest check across machines.

Not every number of a run is bit-stable across machines. What is, and what is not:

* **Fixed patches** (`FIXED_KINDS`: the given patches, noise, random natural crops) are files
  or seeded draws, pasted at seeded places and classified by forward passes. Their flips are
  argmax decisions, which float rounding practically never moves: on another CPU their rates
  come out identical (measured: every such row of `train-patch` matched on a second machine).
* **Searched patches** (`SEARCHED_KINDS`: discovered, optimised) come out of gradients and a
  UMAP layout, where the last bits of a kernel's rounding (oneDNN and numba pick kernels by
  the CPU's instruction set) can move a cell boundary or an optimiser step. On one machine
  they repeat exactly; on another, the search may find a different top patch. What should
  repeat is how well the search does: the rate of its top patch, within the interval.

So `compare_runs` matches fixed patches by name and expects their rates to be identical
(and says "within interval" where they are not but stay inside the reference's Wilson 95 %
interval), and compares the top patch of each searched kind by rate: it agrees when the
re-run's best and fixed rates lie inside the reference's intervals.

    verdicts = compare_runs(pd.read_csv("results/train-patch/summary.csv"),
                            pd.read_csv("rerun/summary.csv"))
    agree = verdicts["agrees"].all()
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Kinds whose rates should repeat exactly on any machine (files and seeded draws).
FIXED_KINDS = ("given", "noise", "random-crop")
#: Kinds found by a search (layout, gradients): compared by their top patch's rates.
SEARCHED_KINDS = ("discovered", "optimized")
#: Columns `compare_runs` needs in each summary (those of `FlipTable.summary()`).
NEEDED = ("patch", "kind", "n", "best_rate", "best_low", "best_high", "fixed_rate",
          "fixed_low", "fixed_high")  # fmt: skip


def _check(summary: pd.DataFrame, name: str) -> None:
    missing = [column for column in NEEDED if column not in summary.columns]
    if missing:
        raise ValueError(
            f"The {name} summary lacks columns {missing} (expected a summary.csv written by "
            f"patchfinder); Received columns: {list(summary.columns)}"
        )


def _verdict(reference: pd.Series | None, rerun: pd.Series | None) -> str:
    """identical | within interval | outside interval | n differs | missing."""
    if reference is None or rerun is None:
        return "missing"
    if int(reference["n"]) != int(rerun["n"]):
        return "n differs"
    n = int(reference["n"])
    same = all(
        round(float(reference[key]) * n) == round(float(rerun[key]) * n)
        for key in ("best_rate", "fixed_rate")
    )
    if same:
        return "identical"
    inside = all(
        float(reference[f"{key}_low"]) - 1e-9
        <= float(rerun[f"{key}_rate"])
        <= float(reference[f"{key}_high"]) + 1e-9
        for key in ("best", "fixed")
    )
    return "within interval" if inside else "outside interval"


def _rate(row: pd.Series | None, key: str) -> float:
    return float(row[key]) if row is not None else np.nan


def compare_runs(reference: pd.DataFrame, rerun: pd.DataFrame) -> pd.DataFrame:
    """One row per fixed patch (matched by name) and per searched kind (its top patch).

    Args:
        reference: the committed run's `summary.csv` (`FlipTable.summary()` columns).
        rerun: the re-run's.
    Returns:
        Columns `row` (a patch name, or `top <kind>`), `kind`, `n`, `reference_patch`,
        `rerun_patch`, `reference_best`, `rerun_best`, `reference_fixed`, `rerun_fixed` (rates),
        `verdict` and `agrees`. A fixed patch agrees when identical or within the reference's
        interval; a searched kind's top patch when identical or within interval; a patch or
        kind missing from either run, or a different n, never agrees.
    """
    _check(reference, "reference")
    _check(rerun, "re-run")
    rows = []

    def add(label: str, kind: str, ref: pd.Series | None, new: pd.Series | None) -> None:
        verdict = _verdict(ref, new)
        rows.append(
            {
                "row": label,
                "kind": kind,
                "n": int((ref if ref is not None else new)["n"]),
                "reference_patch": "" if ref is None else str(ref["patch"]),
                "rerun_patch": "" if new is None else str(new["patch"]),
                "reference_best": _rate(ref, "best_rate"),
                "rerun_best": _rate(new, "best_rate"),
                "reference_fixed": _rate(ref, "fixed_rate"),
                "rerun_fixed": _rate(new, "fixed_rate"),
                "verdict": verdict,
                "agrees": verdict in ("identical", "within interval"),
            }
        )

    by_name = {str(row["patch"]): row for _, row in rerun.iterrows()}
    fixed = reference[reference["kind"].isin(FIXED_KINDS)]
    for _, row in fixed.iterrows():
        add(str(row["patch"]), str(row["kind"]), row, by_name.get(str(row["patch"])))
    extra = rerun[rerun["kind"].isin(FIXED_KINDS) & ~rerun["patch"].isin(fixed["patch"])]
    for _, row in extra.iterrows():
        add(str(row["patch"]), str(row["kind"]), None, row)
    for kind in SEARCHED_KINDS:
        tops = [_top(table, kind) for table in (reference, rerun)]
        if tops[0] is not None or tops[1] is not None:
            add(f"top {kind}", kind, *tops)
    return pd.DataFrame(rows)


def _top(summary: pd.DataFrame, kind: str) -> pd.Series | None:
    """The patch of `kind` with the highest best rate (ties: fixed rate), or None."""
    group = summary[summary["kind"] == kind]
    if group.empty:
        return None
    return group.sort_values(["best_rate", "fixed_rate"], ascending=False, kind="stable").iloc[0]
