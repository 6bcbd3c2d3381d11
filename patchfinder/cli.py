"""The `patchfinder` command line: a thin typer layer.

Each command parses its options, calls one library function and writes its tables. This is
the only module that prints; progress bars and warnings go to stderr so that stdout carries
just the requested output (a CSV or JSON can be piped).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from patchfinder import __version__
from patchfinder.provenance import git_commit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ info, warnings, CUDA probes

app = typer.Typer(
    help="Find natural adversarial patches for image classifiers and measure their flip rates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

#: Errors that are the user's to fix: reported in one line, exit status 2, no traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    ValueError,
    KeyError,
    RuntimeError,
)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except USAGE_ERRORS as error:
        message = getattr(error, "message", None) or str(error)
        err.print(f"[bold red]Error:[/] {message}", highlight=False)
        raise typer.Exit(2) from None


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields `advance(k)`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def _setup_logging() -> None:
    handler = RichHandler(console=err, show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")


def _version(value: bool) -> None:
    if value:
        console.print(f"patchfinder {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    _setup_logging()


# --- models ---------------------------------------------------------------------------------


@app.command()
def models() -> None:
    """List the known models: input size, classes, atlas layers, where weights come from."""
    from patchfinder.model import DEFAULT_MODEL, zoo

    table = Table(title="patchfinder models")
    table.add_column("name", no_wrap=True)
    for column in ("input", "classes", "default layer", "layers", "weights"):
        table.add_column(column, overflow="fold")
    for spec in zoo().values():
        name = spec.name + (" (default)" if spec.name == DEFAULT_MODEL else "")
        if spec.aliases:
            name += f"\nalias: {', '.join(spec.aliases)}"
        table.add_row(
            name,
            f"{spec.input_size}x{spec.input_size}",
            str(spec.classes),
            spec.default_layer,
            f"{spec.layers[0]} .. {spec.layers[-1]} ({len(spec.layers)})",
            spec.weights_source,
        )
    console.print(table)


# --- classify -------------------------------------------------------------------------------


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A zoo name (see `patchfinder models`), a .keras file or a SavedModel.",
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="Local weights for a zoo model (file or folder), for offline use."),
]
LabelsOption = Annotated[
    Path | None,
    typer.Option(help="Labels file for a saved model whose classes are not ImageNet's."),
]
PreprocessOption = Annotated[
    str | None,
    typer.Option(help="Input scaling of a saved model: none, unit, symmetric, lite or lucid."),
]


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    model: ModelOption = "efficientnet-lite0",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    preprocess: PreprocessOption = None,
    top: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 5,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Classify photos: top-K predictions per image, and top-1 accuracy where labels are known."""
    from patchfinder.classify import classify as run_classify
    from patchfinder.classify import top1_accuracy
    from patchfinder.data import LoadSummary, find_images
    from patchfinder.io import atomic_write
    from patchfinder.model import load_model

    with _user_errors():
        images = find_images(paths)
        classifier = load_model(
            model,
            weights=None if weights is None else str(weights),
            labels=labels,
            preprocess=preprocess,
        )
        summary = LoadSummary()
        with _progress(f"classify ({classifier.name})", len(images)) as advance:
            predictions = run_classify(
                classifier,
                images,
                top=top,
                batch_size=batch_size,
                summary=summary,
                progress=advance,
            )

    if format is Format.csv:
        text = predictions.to_csv(index=False, float_format="%.6f")
    elif format is Format.json:
        text = json.dumps(predictions.to_dict(orient="records"), indent=1) + "\n"
    else:
        text = None
    if text is not None and output is not None:
        with atomic_write(output) as tmp:
            tmp.write_text(text, encoding="utf-8")
    elif text is not None:
        sys.stdout.write(text)
    else:
        table = Table(show_lines=False)
        table.add_column("file", no_wrap=True)
        for column in ("label", *(f"top{r}" for r in range(1, top + 1))):
            table.add_column(column, overflow="fold")
        for row in predictions.itertuples(index=False):
            values = row._asdict()
            cells = [f"{values[f'top{r}']} {values[f'top{r}_prob']:.2f}" for r in range(1, top + 1)]
            table.add_row(Path(values["file"]).name, values["label"], *cells)
        console.print(table)

    err.print(f"{len(predictions)} images classified with {classifier.name}", highlight=False)
    if summary.skipped:
        err.print(f"[yellow]{len(summary.skipped)} files skipped (could not be decoded):[/]")
        for path, reason in summary.skipped:
            err.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)
    accuracy = top1_accuracy(predictions)
    if accuracy.n:
        err.print(f"top-1 accuracy on labelled images: {accuracy}", highlight=False)


# --- atlas, propose, evaluate, discover --------------------------------------------------

#: Options that take several values (`--images a b c`). Click options take one value each, so
#: `expand_multi_values` rewrites the command line into `--images a --images b ...` first.
MULTI_VALUE_OPTIONS = ("--images", "--pool", "--patches")


def expand_multi_values(args: Sequence[str]) -> list[str]:
    """`[--images, a, b, --pair, x]` -> `[--images, a, --images, b, --pair, x]`."""
    expanded: list[str] = []
    current: str | None = None
    for arg in args:
        if arg in MULTI_VALUE_OPTIONS:
            current = arg
            continue
        if arg.startswith("-"):
            current = None
        elif current is not None:
            expanded.append(current)
        expanded.append(arg)
    return expanded


@contextmanager
def _stages() -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars per stage on stderr; yields `report(stage, done, total)`."""
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


ImagesOption = Annotated[list[Path], typer.Option("--images", help="Image files or folders.")]


@app.command()
def atlas(
    images: ImagesOption,
    pair: Annotated[str, typer.Option(help="SRC:DST class names, e.g. snorkel:scuba_diver.")] = "",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("atlas"),
    model: ModelOption = "efficientnet-lite0",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    preprocess: PreprocessOption = None,
    layer: Annotated[str | None, typer.Option(help="Layer (default: the model's).")] = None,
    samples_per_image: Annotated[int, typer.Option(min=1, help="Positions per image (K).")] = 16,
    grid: Annotated[int, typer.Option(min=2, help="Atlas grid side N.")] = 20,
    min_count: Annotated[int, typer.Option(min=1, help="Drop cells with fewer vectors.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for sampling and layout.")] = 0,
    icons: Annotated[
        Literal["natural", "featurevis"],
        typer.Option(help="Cell icons: pool crops, or feature visualisations (slow on CPU)."),
    ] = "natural",
    featurevis_steps: Annotated[
        int, typer.Option(min=0, help="Gradient steps per feature-visualisation icon.")
    ] = 128,
) -> None:
    """Build a class-pair activation atlas: cells, vectors, atlas.png, pair_atlas.png, HTML."""
    import time

    from patchfinder.atlas import image_classes
    from patchfinder.data import LoadSummary, find_images
    from patchfinder.discover import pair_atlas
    from patchfinder.model import load_model
    from patchfinder.render import write_atlas
    from patchfinder.types import ClassPair

    paths = images
    with _user_errors():
        if not pair:
            raise ValueError("--pair SRC:DST is required, e.g. --pair snorkel:scuba_diver")
        classifier = load_model(
            model,
            weights=None if weights is None else str(weights),
            labels=labels,
            preprocess=preprocess,
        )
        pool = find_images(paths, classes=classifier.classes)
        class_pair = ClassPair.parse(pair, classifier.classes)
        chosen = classifier.resolve_layer(layer)
        summary = LoadSummary()
        start, commit = time.perf_counter(), git_commit()
        with _stages() as report:
            samples, result = pair_atlas(
                classifier,
                pool,
                class_pair,
                layer=chosen,
                samples_per_image=samples_per_image,
                grid=grid,
                min_count=min_count,
                seed=seed,
                progress=report,
                summary=summary,
            )
            report("render", 0, 1)
            details = {
                "command": "atlas",
                "model": classifier.name,
                "weights": classifier.weights_id,
                "layer": chosen,
                "pair": str(class_pair),
                "images": [str(p) for p in paths],
                "images_loaded": summary.loaded,
                "images_skipped": len(summary.skipped),
                "samples_per_image": samples_per_image,
                "grid": grid,
                "min_count": min_count,
                "seed": seed,
                "icons": icons,
                **({"featurevis_steps": featurevis_steps} if icons == "featurevis" else {}),
                "seconds": round(time.perf_counter() - start, 1),
                "git_commit": commit,
            }
            drawn, total = [0], len(result.cells) * featurevis_steps

            def icon_steps(k: int) -> None:
                drawn[0] += k
                report("icons", drawn[0], total)

            written = write_atlas(
                out, samples, result, classifier.classes, details=details, icons=icons,
                model=classifier, featurevis_steps=featurevis_steps, seed=seed,
                progress=icon_steps,
            )  # fmt: skip
            report("render", 1, 1)

    ranked = sorted(result.cells, key=lambda cell: -cell.attribution)
    table = Table(title=f"cells most favouring {class_pair.dst.name} ({chosen})")
    for column in ("cell", "count", "attribution", "top classes", "found in images of"):
        table.add_column(column)
    for cell in ranked[:10]:
        names = ", ".join(classifier.classes[i].name for i, _ in cell.top_classes[:3])
        found = ", ".join(
            f"{classifier.classes[i].name} {share:.0%}" for i, share in image_classes(cell, samples)
        )
        table.add_row(
            f"{cell.x},{cell.y}", str(cell.count), f"{cell.attribution:+.3g}", names, found
        )
    console.print(table)
    err.print(
        f"{len(samples)} vectors from {summary.loaded} images at {chosen}; "
        f"{len(result.cells)} cells on a {grid}x{grid} grid; wrote {len(written)} files to {out}",
        highlight=False,
    )
    if summary.skipped:
        err.print(f"[yellow]{len(summary.skipped)} files skipped (could not be decoded)[/]")


SizesOption = Annotated[
    str, typer.Option(help="Patch sides as fractions of the image side, comma-separated.")
]
PlacementsOption = Annotated[
    str,
    typer.Option(help="Where patches go: corners, centre, grid:N, random:N, corners@0,90, a+b."),
]
SeedOption = Annotated[int, typer.Option(help="Seed for every random choice of the run.")]
SourcesOption = Annotated[
    str,
    typer.Option(
        help="Where candidate crops come from, comma-separated: 'attribution' (cells favouring "
        "dst in their own images), 'transfer' (their effect on the src photos), 'aimed' "
        "(nearest to the optimised patch's features), 'samples' (pool vectors by their own "
        "attribution, whatever their cell)."
    ),
]
DEFAULT_SOURCES_TEXT = "attribution,transfer,aimed,samples"


def _sources(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _sizes(text: str) -> tuple[float, ...]:
    try:
        sizes = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--sizes takes fractions like 0.2,0.3; Received: {text!r}") from None
    if not sizes or any(not 0 < size <= 1 for size in sizes):
        raise ValueError(f"--sizes must be fractions in (0, 1]; Received: {text!r}")
    return sizes


def _load(model: str, weights: Path | None, labels: Path | None, preprocess: str | None):
    from patchfinder.model import load_model

    return load_model(
        model,
        weights=None if weights is None else str(weights),
        labels=labels,
        preprocess=preprocess,
    )


def _print_summary(table, title: str) -> None:
    from patchfinder.report import kind_overview

    _print_frame(kind_overview(table.summary()), title)


@app.command()
def propose(
    atlas_dir: Annotated[Path, typer.Option("--atlas", help="A folder written by `atlas`.")],
    out: Annotated[Path, typer.Option(help="Output folder for the patches.")] = Path("proposals"),
    top_k: Annotated[int, typer.Option(min=1, help="How many proposals to keep.")] = 10,
    sources: SourcesOption = DEFAULT_SOURCES_TEXT,
    optimize_steps: Annotated[
        int, typer.Option(min=0, help="Steps of the optimised patch that aims 'aimed' crops.")
    ] = 100,
    images: Annotated[
        list[Path] | None,
        typer.Option("--images", help="src photos to screen the proposals on (optional)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default: the atlas's model.")
    ] = None,
    weights: WeightsOption = None,
    sizes: SizesOption = "0.2,0.3,0.4,0.5",
    placements: PlacementsOption = "corners",
    seed: SeedOption = 0,
) -> None:
    """Propose natural patches from an atlas: PNGs and proposals.csv with their provenance."""
    from patchfinder.activations import load_samples
    from patchfinder.atlas import load_atlas
    from patchfinder.data import find_images
    from patchfinder.discover import adversary
    from patchfinder.discover import propose as run_propose
    from patchfinder.evaluate import eligible
    from patchfinder.paste import parse_placements
    from patchfinder.proposals import write_proposals

    with _user_errors():
        recorded = atlas_dir / "provenance.json"
        name = model or (json.loads(recorded.read_text())["model"] if recorded.is_file() else None)
        classifier = _load(name or "efficientnet-lite0", weights, None, None)
        samples = load_samples(atlas_dir / "activations.npz")
        result = load_atlas(atlas_dir / "atlas.npz", classifier.classes)
        screening = None
        if images:
            screening = eligible(
                classifier, find_images(images).filter([result.pair.src]), result.pair
            )
        chosen = _sources(sources)
        with _stages() as report:
            optimized = None
            if screening is not None and "aimed" in chosen:
                optimized = adversary(
                    classifier, screening, result.pair, steps=optimize_steps,
                    sizes=_sizes(sizes), seed=seed, progress=report,
                )  # fmt: skip
            proposals = run_propose(
                classifier, result, samples, screening, result.pair, adversary=optimized,
                sources=chosen, top_k=top_k, sizes=_sizes(sizes),
                placement=parse_placements(placements), seed=seed, progress=report,
            ).kept  # fmt: skip
        write_proposals(proposals, out)
    shown = Table(title=f"proposals for {result.pair}")
    for column in ("patch", "source", "from", "cell", "attribution", "screened"):
        shown.add_column(column, overflow="fold")
    for p in proposals:
        screened = f"{p.screening_rate:.0%} of {p.screening_n}" if p.screening_n else "-"
        origin = f"{Path(p.source_file).name} ({p.source_class or '?'})"
        shown.add_row(
            p.patch.name, p.source, origin, f"{p.cell[0]},{p.cell[1]}", f"{p.attribution:+.3g}",
            screened,
        )  # fmt: skip
    console.print(shown)
    err.print(f"wrote {len(proposals)} proposals to {out}", highlight=False)


@app.command()
def evaluate(
    images: ImagesOption,
    patches: Annotated[list[Path], typer.Option("--patches", help="Patch files or folders.")],
    pair: Annotated[str, typer.Option(help="SRC:DST, e.g. snorkel:scuba_diver.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("evaluation"),
    model: ModelOption = "efficientnet-lite0",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    preprocess: PreprocessOption = None,
    sizes: SizesOption = "0.2,0.3,0.4,0.5",
    placements: PlacementsOption = "corners",
    noise: Annotated[
        bool, typer.Option(help="Evaluate a uniform-noise control beside them.")
    ] = True,
    seed: SeedOption = 0,
) -> None:
    """Flip rates of given patches on the src photos the model gets right, with intervals."""
    import time

    import numpy as np

    from patchfinder.data import find_images
    from patchfinder.discover import measure
    from patchfinder.paste import parse_placements
    from patchfinder.proposals import noise_patch, read_patches
    from patchfinder.report import best_of_each_kind, evaluation_notes, example_grid, write_report
    from patchfinder.types import ClassPair

    with _user_errors():
        classifier = _load(model, weights, labels, preprocess)
        class_pair = ClassPair.parse(pair, classifier.classes)
        placement, chosen_sizes = parse_placements(placements), _sizes(sizes)
        given = read_patches(patches)
        if noise:
            rng = np.random.default_rng(seed)
            given.append(noise_patch(classifier.input_size // 4, rng=rng))
        start, commit = time.perf_counter(), git_commit()
        with _stages() as report:
            evaluation, table = measure(
                classifier, find_images(images, classes=classifier.classes), class_pair, given,
                sizes=chosen_sizes, placement=placement, seed=seed, progress=report,
            )  # fmt: skip
        if len(evaluation) == 0:
            raise ValueError(
                f"None of the images is a {class_pair.src.name} photo that {classifier.name} "
                f"classifies as {class_pair.src.name}: nothing to evaluate"
            )
        title = f"{class_pair.src.name} -> {class_pair.dst.name} on {classifier.name}"
        examples = example_grid(
            classifier, evaluation, best_of_each_kind(table.summary(), given), class_pair,
            size=max(chosen_sizes), placement=placement, seed=seed,
        )  # fmt: skip
        details = {
            "command": "evaluate", "model": classifier.name, "weights": classifier.weights_id,
            "pair": str(class_pair), "images": [str(p) for p in images],
            "patches": [str(p) for p in patches], "sizes": list(chosen_sizes),
            "placements": str(placement), "seed": seed, "n": len(evaluation),
            "n_candidates": evaluation.n_candidates,
            "seconds": round(time.perf_counter() - start, 1),
            "git_commit": commit,
        }  # fmt: skip
        write_report(
            out, table, title=title, examples=examples, details=details,
            notes=evaluation_notes(classifier, class_pair, evaluation, screening=None),
        )  # fmt: skip
    _print_summary(table, title)
    err.print(f"wrote flips.csv, summary.csv, summary.md, report.html to {out}", highlight=False)


@app.command()
def discover(
    pool: Annotated[list[Path], typer.Option("--pool", help="Images to build the atlas from.")],
    images: Annotated[
        list[Path], typer.Option("--images", help="Photos of the src class (others ignored).")
    ],
    pair: Annotated[str, typer.Option(help="SRC:DST, e.g. snorkel:scuba_diver.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("discovery"),
    model: ModelOption = "efficientnet-lite0",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    preprocess: PreprocessOption = None,
    layer: Annotated[str | None, typer.Option(help="Atlas layer (default: the model's).")] = None,
    patches: Annotated[
        list[Path] | None,
        typer.Option("--patches", help="Given patches to evaluate beside the discovered ones."),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Discovered patches to keep.")] = 10,
    sources: SourcesOption = DEFAULT_SOURCES_TEXT,
    halving: Annotated[
        bool,
        typer.Option(help="Screen by successive halving (else every candidate alike, fewer)."),
    ] = True,
    samples_per_image: Annotated[int, typer.Option(min=1)] = 16,
    grid: Annotated[int, typer.Option(min=2)] = 20,
    sizes: SizesOption = "0.2,0.3,0.4,0.5",
    placements: PlacementsOption = "corners",
    random_crops: Annotated[int, typer.Option(min=0, help="Random-crop controls.")] = 5,
    optimize_steps: Annotated[
        int, typer.Option(min=0, help="Steps of the optimised-patch control (0: none).")
    ] = 100,
    seed: SeedOption = 0,
) -> None:
    """Atlas, proposals and evaluation in one run, with controls and a disjoint split."""
    import time

    from patchfinder.data import find_images
    from patchfinder.discover import discover as run_discover
    from patchfinder.paste import parse_placements
    from patchfinder.proposals import read_patches
    from patchfinder.report import write_discovery
    from patchfinder.types import ClassPair

    with _user_errors():
        classifier = _load(model, weights, labels, preprocess)
        class_pair = ClassPair.parse(pair, classifier.classes)
        placement, chosen_sizes = parse_placements(placements), _sizes(sizes)
        given = read_patches(patches) if patches else []
        start, commit = time.perf_counter(), git_commit()
        with _stages() as report:
            result = run_discover(
                classifier, find_images(pool, classes=classifier.classes),
                find_images(images, classes=classifier.classes), class_pair, given=given,
                layer=layer, samples_per_image=samples_per_image, grid=grid, top_k=top_k,
                sources=_sources(sources), halving=halving,
                sizes=chosen_sizes, placement=placement, random_crops=random_crops,
                optimize_steps=optimize_steps, seed=seed, progress=report,
            )  # fmt: skip
            details = {
                "command": "discover", "model": classifier.name,
                "weights": classifier.weights_id, "layer": result.atlas.layer,
                "pair": str(class_pair), "pool": [str(p) for p in pool],
                "images": [str(p) for p in images],
                "patches": [str(p) for p in patches or []], "sizes": list(chosen_sizes),
                "placements": str(placement), "top_k": top_k, "sources": list(_sources(sources)),
                "halving": halving, "seed": seed,
                "samples_per_image": samples_per_image, "grid": grid,
                "random_crops": random_crops, "optimize_steps": optimize_steps,
                "n_evaluation": len(result.evaluation), "n_screening": len(result.screening),
                "split": result.split.to_dict(),
                "seconds": round(time.perf_counter() - start, 1),
                "git_commit": commit,
            }  # fmt: skip
            write_discovery(out, result, classifier, details=details, placement=placement)
    title = f"{class_pair.src.name} -> {class_pair.dst.name} on {classifier.name}"
    _print_summary(result.table, title)
    _warn_missing(result)
    err.print(f"wrote the atlas, proposals and report to {out}", highlight=False)


def _warn_missing(result) -> None:
    """A `Discovery` with no proposals says so on stderr (its summary says so too)."""
    if result.missing_proposals:
        err.print(f"[yellow]warning: {result.missing_proposals}[/]", soft_wrap=True)


# --- audit ------------------------------------------------------------------------------------


@app.command()
def audit(
    config: Annotated[Path, typer.Argument(help="The audit config (TOML).")],
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="An earlier run's JSON: fail where a rate rose by more than the tolerance."
        ),
    ] = None,
    update_baseline: Annotated[
        bool,
        typer.Option(
            "--update-baseline",
            help="Write this run as the new --baseline FILE (when every check is within its "
            "limits) instead of comparing against it.",
        ),
    ] = False,
    junit: Annotated[
        Path | None, typer.Option(help="Write JUnit XML: one testcase per check.")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write every number as JSON, with provenance.")
    ] = None,
) -> None:
    """CI gate: known patches must flip the model at most so often, and no more than last time.

    Prints a Markdown summary (appended to $GITHUB_STEP_SUMMARY when set). Exit status 0: every
    check passes; 1: a check exceeds a limit or regressed beyond its tolerance; 2: a config or
    usage error. The config format is described in `patchfinder.audit`.
    """
    from patchfinder.audit import (
        compare,
        load_config,
        read_baseline,
        run_audit,
        to_json,
        to_junit_xml,
        to_markdown,
    )
    from patchfinder.io import write_text
    from patchfinder.provenance import provenance

    with _user_errors():
        if update_baseline and baseline is None:
            raise ValueError("--update-baseline needs --baseline FILE: the file to write")
        checked = load_config(config)
        previous = None if baseline is None or update_baseline else read_baseline(baseline)
        spec = checked.model
        classifier = _load(spec.name, spec.weights, spec.labels, spec.preprocess)
        with _stages() as report:
            result = run_audit(checked, model=classifier, progress=report)
        source = None if previous is None else str(baseline)
        verdict = compare(result, previous, source=source or "")
        record = provenance(
            command="audit", config=str(config), baseline=source, model=result.model,
            weights=result.weights_id, update_baseline=update_baseline,
        )  # fmt: skip
        text = to_json(result, verdict, provenance=record)
        markdown = to_markdown(result, verdict)
        if json_file is not None:
            write_text(json_file, text)
        if junit is not None:
            write_text(junit, to_junit_xml(result, verdict))
        if update_baseline and baseline is not None and verdict.passed:
            write_text(baseline, text)
            err.print(f"baseline written to {baseline}", highlight=False, soft_wrap=True)
        elif update_baseline:
            err.print(
                f"[yellow]baseline {baseline} not updated: a check failed its limits[/]",
                soft_wrap=True,
            )
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
    sys.stdout.write(markdown)
    raise typer.Exit(verdict.exit_status)


# --- reproduce ---------------------------------------------------------------------------------


@app.command()
def reproduce(
    name: Annotated[
        str | None, typer.Argument(help="An experiment (see --list), or its TOML file.")
    ] = None,
    model: ModelOption = "efficientnet-lite0",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    preprocess: PreprocessOption = None,
    data: Annotated[
        Path | None, typer.Option(help="The data root (default: $PATCHFINDER_DATA).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: results/NAME).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the experiments and exit.")] = False,
) -> None:
    """Re-run one of the article's patch experiments: its patches and noise control beside
    discovered patches and controls, with the article's published figures side by side."""
    import time

    from patchfinder.experiments import (
        check_data_root,
        data_counts,
        describe,
        headline,
        list_experiments,
        load_experiment,
        write_reproduction,
    )
    from patchfinder.experiments import reproduce as run_reproduce

    with _user_errors():
        if list_:
            _print_frame(describe(list_experiments()), "experiments")
            return
        if name is None:
            raise ValueError("Name an experiment; `patchfinder reproduce --list` shows them")
        experiment = load_experiment(name)
        root = check_data_root(experiment, data or os.environ.get("PATCHFINDER_DATA"))
        classifier = _load(model, weights, labels, preprocess)
        folder = out or Path("results") / experiment.name
        start, commit = time.perf_counter(), git_commit()
        with _stages() as report:
            result = run_reproduce(classifier, experiment, root, progress=report)
            details = {
                "command": "reproduce", "experiment": experiment.name,
                "experiment_file": str(experiment.file), "model": classifier.name,
                "weights": classifier.weights_id, "layer": result.atlas.layer,
                "pair": experiment.pair, "data_root": str(root),
                "data": data_counts(experiment, root), "sizes": list(experiment.sizes),
                "placements": experiment.placements, "seed": experiment.seed,
                "discovery": dict(experiment.discovery),
                "n_evaluation": len(result.evaluation), "n_screening": len(result.screening),
                "seconds": round(time.perf_counter() - start, 1), "git_commit": commit,
            }  # fmt: skip
            table = headline(result, experiment, classifier)
            write_reproduction(folder, result, experiment, classifier, details=details, table=table)
    _print_frame(table, experiment.title)
    _warn_missing(result)
    err.print(f"wrote the summary, report, patches and provenance to {folder}", highlight=False)


@app.command()
def compare(
    reference: Annotated[Path, typer.Argument(help="The committed run: folder or summary.csv.")],
    rerun: Annotated[Path, typer.Argument(help="The re-run: a folder or its summary.csv.")],
    out: Annotated[Path | None, typer.Option(help="Also write the verdicts as CSV here.")] = None,
) -> None:
    """Check a re-run against a committed run, honestly across machines: fixed patches (given,
    noise, random crops) by name, the top discovered and optimised patch by rate. Exits 1
    when a rate falls outside the reference's 95 % interval, or a patch or n is missing."""
    import pandas as pd

    from patchfinder.compare import compare_runs
    from patchfinder.io import write_csv

    with _user_errors():
        tables = []
        for path in (reference, rerun):
            file = path / "summary.csv" if path.is_dir() else path
            if not file.is_file():
                raise FileNotFoundError(
                    f"No summary.csv at {file}: expected a folder written by `reproduce`, "
                    "`discover` or `evaluate`, or its summary.csv"
                )
            tables.append(pd.read_csv(file))
        verdicts = compare_runs(*tables)
        if out is not None:
            write_csv(out, verdicts)
    shown = verdicts.copy()
    for column in ("reference_best", "rerun_best", "reference_fixed", "rerun_fixed"):
        shown[column] = [f"{100 * v:.1f} %" if pd.notna(v) else "-" for v in shown[column]]
    _print_frame(shown.drop(columns="agrees"), f"{rerun} against {reference}")
    disagree = int((~verdicts["agrees"]).sum())
    if disagree:
        err.print(f"[red]{disagree} of {len(verdicts)} rows disagree[/]", highlight=False)
        raise typer.Exit(1)
    err.print(f"all {len(verdicts)} rows agree", highlight=False)


def _print_frame(frame, title: str) -> None:
    shown = Table(title=title)
    for column in frame.columns:
        shown.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        shown.add_row(*(str(value) for value in row))
    console.print(shown)


# --- data -------------------------------------------------------------------------------------

data_app = typer.Typer(help="The public datasets the experiments read: list and fetch them.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list(
    root: Annotated[
        Path | None, typer.Option(help="A data root to check (default: $PATCHFINDER_DATA).")
    ] = None,
) -> None:
    """The datasets, their public sources and licences, and which are present under ROOT."""
    import pandas as pd

    from patchfinder.datasets import default_root, describe, missing

    with _user_errors():
        where = root or default_root()
        rows = pd.DataFrame(describe())
        absent = set(missing(list(rows["name"]), where))
        rows.insert(2, "present", ["no" if n in absent else "yes" for n in rows["name"]])
    _print_frame(rows, f"datasets (data root {where})")


@data_app.command("fetch")
def data_fetch(
    names: Annotated[list[str], typer.Argument(help="Dataset names (see `data list`).")],
    root: Annotated[
        Path | None,
        typer.Option(help="The data root to fill (default: $PATCHFINDER_DATA, else the cache)."),
    ] = None,
    url: Annotated[
        list[str] | None,
        typer.Option(help="NAME=URL: fetch NAME from this archive (a mirror, a file:// copy)."),
    ] = None,
) -> None:
    """Download each dataset's repository at its pinned commit, convert it to the data-root
    layout and verify it; datasets already present and sound are skipped."""
    from patchfinder.datasets import DatasetError, default_root, fetch

    with _user_errors():
        urls = {}
        for item in url or []:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise ValueError(f"--url takes NAME=URL; Received: {item!r}")
            urls[key] = value
        where = root or default_root()
        with _stages() as stage:

            def report(event) -> None:
                stage(f"{event.name} {event.stage}", event.done, event.total)

            try:
                reports = fetch(names, where, urls=urls, progress=report)
            except DatasetError as error:
                raise RuntimeError(str(error)) from None
    for item in reports:
        console.print(str(item), highlight=False)
    err.print(f"data root: {where} (pass it as --data or PATCHFINDER_DATA)", highlight=False)


def run() -> None:
    """The console-script entry point."""
    app(args=expand_multi_values(sys.argv[1:]), prog_name="patchfinder")


if __name__ == "__main__":
    run()
