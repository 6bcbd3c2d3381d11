"""Is the input pipeline the bottleneck? Bare forward pass vs decode + resize + batch + forward.

Prints images/s for both, measured in this one run, and their ratio (pipeline / bare; 1.0
means decoding is fully hidden behind the model). Usage:

    python benchmarks/input_pipeline.py ../shared/data/imagenet-samples [--model NAME]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from patchfinder.data import find_images, iterate_batches
from patchfinder.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=512, help="images to run through")
    args = parser.parse_args()

    model = load_model(args.model)
    images = find_images([args.folder])
    images = images[: args.limit] if len(images) > args.limit else images
    n = len(images)
    size, batch = model.input_size, args.batch_size

    # Warm up: trace the forward pass once for both the full and the last partial batch.
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    model.logits(x).numpy()
    model.logits(x[: n % batch or batch]).numpy()

    start = time.perf_counter()
    for begin in range(0, n, batch):
        model.logits(x[: min(batch, n - begin)]).numpy()
    bare = n / (time.perf_counter() - start)

    start = time.perf_counter()
    done = 0
    for chunk in iterate_batches(images, size=size, batch_size=batch):
        model.logits(chunk.images).numpy()
        done += len(chunk.images)
    pipeline = done / (time.perf_counter() - start)

    print(f"model {model.name}, {done} images, batch {batch}, input {size}x{size}")
    print(f"bare forward pass:           {bare:8.1f} images/s")
    print(f"decode+resize+batch+forward: {pipeline:8.1f} images/s")
    print(f"ratio pipeline/bare:         {pipeline / bare:8.2f}")


if __name__ == "__main__":
    main()
