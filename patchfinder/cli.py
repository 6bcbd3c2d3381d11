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
out = Console()
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
        out.print(f"patchfinder {__version__}")
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
    out.print(table)


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
        out.print(table)

    err.print(f"{len(predictions)} images classified with {classifier.name}", highlight=False)
    if summary.skipped:
        err.print(f"[yellow]{len(summary.skipped)} files skipped (could not be decoded):[/]")
        for path, reason in summary.skipped:
            err.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)
    accuracy = top1_accuracy(predictions)
    if accuracy.n:
        err.print(f"top-1 accuracy on labelled images: {accuracy}", highlight=False)


if __name__ == "__main__":
    app()
