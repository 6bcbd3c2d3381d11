"""Tables and figures of an evaluation: CSV, Markdown, a self-contained HTML report.

Every rate is printed with its n and its Wilson 95 % interval; nothing here computes a
statistic (that is `evaluate`), it only lays the numbers out for a reader.

    write_report(folder, table, title=..., examples=example_grid(...), notes=[...], details={...})
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from patchfinder.evaluate import EligibleImages, FlipTable
from patchfinder.io import write_csv, write_json, write_text
from patchfinder.model import Classifier
from patchfinder.paste import Placement
from patchfinder.types import ClassPair, Patch

#: Line colours of the patch kinds in figures (discovered stand out; controls are muted).
KIND_COLOURS = {
    "discovered": "#e66101",
    "given": "#5e3c99",
    "optimized": "#1a9641",
    "random-crop": "#7f7f7f",
    "noise": "#b2abd2",
}


def percent(rate: float, low: float, high: float) -> str:
    """`42.0 % [30.1, 54.9]`; `n/a` for an undefined rate (n = 0)."""
    if not np.isfinite(rate):
        return "n/a"
    return f"{100 * rate:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-patch summary as display strings, best patch of each kind first."""
    ordered = summary.sort_values(
        ["kind", "best_rate", "fixed_rate"], ascending=[True, False, False]
    )
    return pd.DataFrame(
        {
            "patch": ordered["patch"],
            "kind": ordered["kind"],
            "n": ordered["n"],
            "best (95 % CI)": [
                percent(r, lo, hi)
                for r, lo, hi in ordered[["best_rate", "best_low", "best_high"]].to_numpy()
            ],
            "fixed (95 % CI)": [
                percent(r, lo, hi)
                for r, lo, hi in ordered[["fixed_rate", "fixed_low", "fixed_high"]].to_numpy()
            ],
            "fixed setting": ordered["fixed_setting"],
        }
    )


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency: pandas needs `tabulate`)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.to_numpy()
    ]
    return "\n".join([header, rule, *rows])


def kind_overview(summary: pd.DataFrame) -> pd.DataFrame:
    """Per kind: how many patches, and the best patch's best and fixed rates."""
    rows = []
    for kind, group in summary.groupby("kind", sort=False):
        top = group.sort_values(["best_rate", "fixed_rate"], ascending=False).iloc[0]
        rows.append(
            {
                "kind": kind,
                "patches": len(group),
                "n": int(top["n"]),
                "top patch": top["patch"],
                "best (95 % CI)": percent(top["best_rate"], top["best_low"], top["best_high"]),
                "fixed (95 % CI)": percent(top["fixed_rate"], top["fixed_low"], top["fixed_high"]),
                "median best over patches": f"{100 * group['best_rate'].median():.1f} %",
            }
        )
    return pd.DataFrame(rows)


def summary_markdown(
    summary: pd.DataFrame,
    *,
    title: str,
    notes: Sequence[str] = (),
    headline: pd.DataFrame | None = None,
    headline_note: str = "",
) -> str:
    """`summary.md`: the title, an optional headline table (e.g. published figures beside
    ours) with its note, the reader's notes, the per-kind overview, every patch."""
    parts = [f"# {title}", ""]
    if headline is not None:
        parts += [markdown_table(headline), "", *([headline_note, ""] if headline_note else [])]
    parts += [f"- {note}" for note in notes]
    parts += ["", "## By kind", "", markdown_table(kind_overview(summary)), ""]
    parts += ["## Every patch", "", markdown_table(summary_table(summary)), ""]
    parts += [
        "best: share of the n images flipped to the target by at least one size and "
        "placement of the patch. fixed: the single best size and placement, applied to all "
        "n images. Intervals are Wilson 95 %.",
        "",
    ]
    return "\n".join(parts)


# --- figures -------------------------------------------------------------------------------


def flip_rate_plot(long: pd.DataFrame, *, title: str) -> Image.Image:
    """Targeted flip rate versus patch size: one line per patch (its best placement at each
    size), coloured by kind; the shaded band is the best discovered patch's 95 % interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    best = long.loc[long.groupby(["patch", "size"])["flip_rate"].idxmax()]
    for (_patch, kind), group in best.groupby(["patch", "kind"], sort=False):
        group = group.sort_values("size")
        axes.plot(
            group["size"], 100 * group["flip_rate"], color=KIND_COLOURS.get(kind, "black"),
            alpha=0.9 if kind in ("discovered", "given", "optimized") else 0.6, linewidth=1.2,
            marker="o", markersize=3,
        )  # fmt: skip
    discovered = best[best["kind"] == "discovered"]
    if len(discovered):
        top = discovered.groupby("patch")["flip_rate"].mean().idxmax()
        band = discovered[discovered["patch"] == top].sort_values("size")
        axes.fill_between(
            band["size"], 100 * band["ci_low"], 100 * band["ci_high"],
            color=KIND_COLOURS["discovered"], alpha=0.15, linewidth=0,
        )  # fmt: skip
    for kind, colour in KIND_COLOURS.items():
        if kind in set(best["kind"]):
            axes.plot([], [], color=colour, label=kind)
    n = int(long["n"].iloc[0]) if len(long) else 0
    axes.set_xlabel("patch side (fraction of the image side)")
    axes.set_ylabel(f"images flipped to the target (%, n = {n})")
    axes.set_title(title, fontsize=11)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def example_grid(
    model: Classifier,
    eligible: EligibleImages,
    patches: Sequence[Patch],
    pair: ClassPair,
    *,
    size: float,
    placement: Placement,
    count: int = 6,
    seed: int = 0,
    thumb: int = 160,
) -> Image.Image:
    """Patched examples: one row per patch, `count` eligible images each, pasted at the first
    position of `placement`, captioned with the model's top-1 class and its probability
    (green when it is the target class)."""
    rows = []
    images = eligible.images[:count]
    names = model.classes.names
    for patch in patches:
        pasted = placement(images, patch, np.random.default_rng(seed), size=size)[: len(images)]
        probs = model.probabilities(pasted).numpy()
        row = []
        for pixels, p in zip(pasted.numpy(), probs, strict=True):
            tile = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((thumb, thumb))
            canvas = Image.new("RGB", (thumb, thumb + 30), "white")
            canvas.paste(tile, (0, 0))
            top = int(p.argmax())
            colour = (26, 150, 65) if top == pair.dst.index else (60, 60, 60)
            ImageDraw.Draw(canvas).text(
                (3, thumb + 2), f"{names[top][:22]}\np={p[top]:.2f}", fill=colour
            )
            row.append(canvas)
        label = Image.new("RGB", (110, thumb + 30), "white")
        ImageDraw.Draw(label).text(
            (3, thumb // 2), f"{patch.name[:16]}\n({patch.kind})", fill="black"
        )
        rows.append([label, *row])
    if not rows:
        return Image.new("RGB", (1, 1), "white")
    width = sum(tile.width for tile in rows[0])
    grid = Image.new("RGB", (width, (thumb + 30) * len(rows)), "white")
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            grid.paste(tile, (x, r * (thumb + 30)))
            x += tile.width
    return grid


def _png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def report_html(
    summary: pd.DataFrame,
    *,
    title: str,
    notes: Sequence[str],
    plot: Image.Image,
    examples: Image.Image | None,
    headline: pd.DataFrame | None = None,
    headline_note: str = "",
) -> str:
    """A self-contained page: the headline table, notes, per-kind overview, every patch, the
    plot, examples."""
    top = (
        headline.to_html(index=False, escape=True, border=0)
        + f"<p>{html.escape(headline_note)}</p>"
        if headline is not None
        else ""
    )
    overview = kind_overview(summary).to_html(index=False, escape=True, border=0)
    patches = summary_table(summary).to_html(index=False, escape=True, border=0)
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    examples_html = (
        f'<h2>Examples</h2><img alt="patched examples" src="{_png_uri(examples)}">'
        if examples is not None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{top}
<ul>{items}</ul>
<h2>By kind</h2>{overview}
<h2>Flip rate versus size</h2><img alt="flip rate versus size" src="{_png_uri(plot)}">
{examples_html}
<h2>Every patch</h2>{patches}
<p>best: share of the n images flipped to the target by at least one size and placement.
fixed: the single best size and placement applied to all n images. Wilson 95 % intervals.</p>
</body></html>
"""


def write_report(
    folder: str | Path,
    table: FlipTable,
    *,
    title: str,
    notes: Sequence[str] = (),
    examples: Image.Image | None = None,
    details: Mapping[str, object] | None = None,
    headline: pd.DataFrame | None = None,
    headline_note: str = "",
) -> dict[str, Path]:
    """Write `flips.csv`, `summary.csv`, `summary.md`, `report.html` (and `provenance.json`
    when `details` is given) into `folder`, each atomically; returns {name: path}. A
    `headline` table (with its note) goes at the top of `summary.md` and `report.html`."""
    from patchfinder.provenance import provenance

    top = {"headline": headline, "headline_note": headline_note}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    long, summary = table.long(), table.summary()
    plot = flip_rate_plot(long, title=title)
    written = {
        "flips": write_csv(folder / "flips.csv", long),
        "summary": write_csv(folder / "summary.csv", summary),
        "summary_md": write_text(
            folder / "summary.md", summary_markdown(summary, title=title, notes=notes, **top)
        ),
        "report": write_text(
            folder / "report.html",
            report_html(summary, title=title, notes=notes, plot=plot, examples=examples, **top),
        ),
    }
    if details is not None:
        written["provenance"] = write_json(folder / "provenance.json", provenance(**details))
    return written


def best_of_each_kind(summary: pd.DataFrame, patches: Sequence[Patch]) -> list[Patch]:
    """The patch with the highest best rate of each kind, for the examples figure."""
    by_name = {patch.name: patch for patch in patches}
    ordered = summary.sort_values(["best_rate", "fixed_rate"], ascending=False)
    return [by_name[row.patch] for row in ordered.drop_duplicates("kind").itertuples()]


def evaluation_notes(
    model: Classifier, pair: ClassPair, evaluation: EligibleImages, *, screening: int | None
) -> list[str]:
    """The facts a reader needs beside the rates: model, pair, n and how it was chosen."""
    notes = [
        f"Model {model.name}; {pair.src.name} -> {pair.dst.name}.",
        f"n = {len(evaluation)} evaluation images: the {pair.src.name} photos the model "
        f"classifies as {pair.src.name} before patching, of {evaluation.n_candidates} "
        "that decoded.",
    ]
    if screening is not None:
        notes.append(
            f"Proposals were screened (and the optimised patch trained) on {screening} other "
            f"{pair.src.name} images, disjoint from the evaluation images."
        )
    if len(evaluation) < 30:
        notes.append(
            f"Small n ({len(evaluation)}): the intervals are wide; read the rates as rough."
        )
    return notes


def write_discovery(
    folder: str | Path,
    discovery,
    model: Classifier,
    *,
    details: Mapping[str, object],
    placement: Placement,
    headline: pd.DataFrame | None = None,
    headline_note: str = "",
) -> dict[str, Path]:
    """Write a `discover` run: the atlas (`atlas/`), every evaluated patch with provenance
    (`proposals/`: PNGs and proposals.csv), the flip tables and report (with an optional
    headline table, see `write_report`), the split and provenance. `discovery` is a
    `discover.Discovery`; examples use `placement`'s first position at the largest size."""
    from patchfinder.proposals import write_proposals
    from patchfinder.render import write_atlas

    folder = Path(folder)
    pair = discovery.atlas.pair
    written = write_atlas(
        folder / "atlas", discovery.samples, discovery.atlas, model.classes, details=details
    )
    discovered = {p.patch.name for p in discovery.proposals}
    others = [patch for patch in discovery.patches if patch.name not in discovered]
    written["proposals"] = write_proposals([*discovery.proposals, *others], folder / "proposals")
    written["screening"] = write_csv(folder / "screening.csv", discovery.search.table())
    summary = discovery.table.summary()
    examples = example_grid(
        model,
        discovery.evaluation,
        best_of_each_kind(summary, discovery.patches),
        pair,
        size=max(discovery.table.sizes),
        placement=placement,
        seed=int(details.get("seed", 0)),
    )
    title = f"{pair.src.name} -> {pair.dst.name} on {model.name}"
    notes = evaluation_notes(model, pair, discovery.evaluation, screening=len(discovery.screening))
    if discovery.missing_proposals:
        notes.insert(0, discovery.missing_proposals)
    if discovery.search.describe():
        notes.append(discovery.search.describe())
    written.update(
        write_report(
            folder,
            discovery.table,
            title=title,
            notes=notes,
            examples=examples,
            details=details,
            headline=headline,
            headline_note=headline_note,
        )
    )
    measured = {
        "screening_eligible": [str(record.path) for record in discovery.screening.records],
        "evaluated": [str(record.path) for record in discovery.evaluation.records],
    }  # the eligible images of each part: the ones a rate's n counts
    written["split"] = write_json(folder / "split.json", {**discovery.split.to_dict(), **measured})
    return written
