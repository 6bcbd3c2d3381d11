"""What does attribution cost? Bare forward pass vs activation collection, in images/s.

The collection step is what `patchfinder.activations.collect` runs per batch, minus decoding
and caching: one forward pass, 1 + R backward passes (logits -> layer) and the sampling of K
positions per image. Both are measured in this one run on the same seeded random images, at
one batch size, timed in alternation (so a change of machine load hits both alike); the ratio
collection/bare is printed (the target is >= 0.5). Usage:

    python benchmarks/collect_throughput.py [--model NAME_OR_FILE.keras] [--layer NAME]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from patchfinder.activations import attribute, receptive_field, sample
from patchfinder.model import DEFAULT_MODEL, load_model
from patchfinder.types import ClassPair


def images_per_second(
    runs: dict[str, Callable[[], object]], images: int, repeats: int
) -> dict[str, float]:
    """Throughput of each run, timed in alternation so that a load change hits all alike."""
    for run in runs.values():
        run()  # warm up: trace and allocate once
    seconds = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name] += time.perf_counter() - start
    return {name: images * repeats / spent for name, spent in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="zoo name or .keras file")
    parser.add_argument("--layer", default=None, help="default: the model's default layer")
    parser.add_argument("--pair", default="snorkel:scuba_diver", help="SRC:DST classes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--samples-per-image", type=int, default=16)
    parser.add_argument("--top-classes", type=int, default=3)
    args = parser.parse_args()

    model = load_model(args.model)
    layer = model.resolve_layer(args.layer)
    pair = ClassPair.parse(args.pair, model.classes)
    size, batch = model.input_size, args.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    indices = np.arange(batch)
    side = receptive_field(model, layer)

    def bare() -> None:
        model.logits(x).numpy()

    def collection() -> None:
        attribution = attribute(model, x, pair, layer=layer, top_classes=args.top_classes)
        sample(
            attribution,
            indices,
            samples_per_image=args.samples_per_image,
            seed=0,
            box_side=side,
        )

    rates = images_per_second({"bare": bare, "collection": collection}, batch, args.repeats)
    bare_rate, collect_rate = rates["bare"], rates["collection"]
    print(
        f"model {model.name}, layer {layer}, input {size}x{size}, batch {batch}, "
        f"R={args.top_classes}, K={args.samples_per_image}, {args.repeats} timed batches each"
    )
    print(f"bare forward pass (logits):         {bare_rate:8.1f} images/s")
    print(f"collection (fwd + 1+R bwd + sample): {collect_rate:8.1f} images/s")
    print(f"ratio collection/bare:              {collect_rate / bare_rate:8.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
