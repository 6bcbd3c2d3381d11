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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from patchfinder import __version__

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


# --- atlas ----------------------------------------------------------------------------------

#: Options that take several paths (`--images a b c`): click options take one value each, so
#: the extra values arrive as extra arguments and are appended to the option's list.
MULTI_PATHS = {"allow_extra_args": True}


def _paths(values: list[Path] | None, ctx: typer.Context, option: str) -> list[Path]:
    extra = [Path(arg) for arg in ctx.args]
    unknown = [str(arg) for arg in extra if str(arg).startswith("-")]
    if unknown:
        raise typer.BadParameter(f"unknown option(s) {unknown}", param_hint=option)
    paths = list(values or []) + extra
    if not paths:
        raise typer.BadParameter("give at least one image file or folder", param_hint=option)
    return paths


@contextmanager
def _stages(total_images: int) -> Iterator[Callable[[str, int, int], None]]:
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


@app.command(context_settings=MULTI_PATHS)
def atlas(
    ctx: typer.Context,
    images: Annotated[
        list[Path] | None, typer.Option("--images", help="Pool images: files or folders.")
    ] = None,
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
) -> None:
    """Build a class-pair activation atlas: cells, vectors, atlas.png, pair_atlas.png, HTML."""
    import time

    from patchfinder.atlas import image_classes
    from patchfinder.data import LoadSummary, find_images
    from patchfinder.discover import pair_atlas
    from patchfinder.model import load_model
    from patchfinder.render import write_atlas
    from patchfinder.types import ClassPair

    paths = _paths(images, ctx, "--images")
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
        start = time.perf_counter()
        with _stages(len(pool)) as report:
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
                "seconds": round(time.perf_counter() - start, 1),
            }
            written = write_atlas(out, samples, result, classifier.classes, details=details)
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


if __name__ == "__main__":
    app()
