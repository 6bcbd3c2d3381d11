"""`compare_runs` and `patchfinder compare`: fixed patches by name, searched kinds by the rate of
their top patch, verdicts against the reference's Wilson intervals. Tables built from arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from patchfinder.compare import compare_runs
from patchfinder.evaluate import FlipTable

from conftest import run_cli

N = 100


def summary(flipped: dict[tuple[str, str], int], *, n: int = N) -> pd.DataFrame:
    """A summary where patch (name, kind) flips its first `count` images at one setting."""
    names = [name for name, _ in flipped]
    flips = np.zeros((len(flipped), 1, 1, n), bool)
    for p, count in enumerate(flipped.values()):
        flips[p, 0, 0, :count] = True
    return FlipTable(
        patches=tuple(names),
        kinds=tuple(kind for _, kind in flipped),
        sizes=(0.4,),
        placements=("top-left",),
        flips=flips,
        untargeted=flips,
        delta_p=np.zeros(flips.shape, np.float32),
    ).summary()


REFERENCE = {
    ("train-10", "given"): 32,
    ("train-01", "given"): 5,
    ("noise", "noise"): 5,
    ("random-00", "random-crop"): 4,
    ("cell11-07-b", "discovered"): 24,
    ("cell03-02-a", "discovered"): 9,
    ("optimized", "optimized"): 100,
}


def verdicts(rerun: dict[tuple[str, str], int], **kwargs) -> dict[str, str]:
    table = compare_runs(summary(REFERENCE), summary(rerun, **kwargs))
    assert (table["agrees"] == table["verdict"].isin(["identical", "within interval"])).all()
    return dict(zip(table["row"], table["verdict"], strict=True))


def test_a_run_agrees_with_itself_row_for_row():
    found = verdicts(REFERENCE)
    fixed = [name for name, kind in REFERENCE if kind not in ("discovered", "optimized")]
    assert set(found) == {*fixed, "top discovered", "top optimized"}
    assert set(found.values()) == {"identical"}


def test_searched_kinds_compare_their_top_patch_by_rate_not_by_name():
    rerun = dict(REFERENCE)
    del rerun[("cell11-07-b", "discovered")]
    rerun[("cell05-05-b", "discovered")] = 19  # another top patch, inside [16.7, 33.2]
    rerun[("optimized", "optimized")] = 98
    found = verdicts(rerun)
    assert found["top discovered"] == "within interval"
    assert found["top optimized"] == "within interval"
    rerun[("cell05-05-b", "discovered")] = 12  # below the interval
    assert verdicts(rerun)["top discovered"] == "outside interval"


def test_fixed_patches_must_repeat_by_name():
    rerun = dict(REFERENCE)
    rerun[("train-10", "given")] = 33  # one image more: inside the interval
    assert verdicts(rerun)["train-10"] == "within interval"
    rerun[("train-10", "given")] = 60
    assert verdicts(rerun)["train-10"] == "outside interval"
    del rerun[("noise", "noise")]
    rerun[("random-99", "random-crop")] = 4
    found = verdicts(rerun)
    assert found["noise"] == "missing" and found["random-99"] == "missing"


def test_a_different_n_never_agrees():
    assert set(verdicts(REFERENCE, n=90).values()) == {"n differs"}


def test_a_summary_without_the_columns_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks columns"):
        compare_runs(summary(REFERENCE), pd.DataFrame({"patch": ["x"]}))


def test_the_command_exits_by_verdict(tmp_path):
    (tmp_path / "ref").mkdir()
    summary(REFERENCE).to_csv(tmp_path / "ref" / "summary.csv", index=False)
    summary(REFERENCE).to_csv(tmp_path / "same.csv", index=False)
    worse = {**REFERENCE, ("train-10", "given"): 60}
    summary(worse).to_csv(tmp_path / "worse.csv", index=False)
    same = run_cli("compare", str(tmp_path / "ref"), str(tmp_path / "same.csv"),
                   "--out", str(tmp_path / "verdicts.csv"))  # fmt: skip
    assert same.exit_code == 0, same.output
    assert "agree" in same.output
    assert pd.read_csv(tmp_path / "verdicts.csv")["agrees"].all()
    result = run_cli("compare", str(tmp_path / "ref"), str(tmp_path / "worse.csv"))
    assert result.exit_code == 1 and "disagree" in result.output
    result = run_cli("compare", str(tmp_path / "ref"), str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "No summary.csv" in result.output
