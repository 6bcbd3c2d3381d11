"""What does pasting cost? Patched evaluation vs the bare model, and vs a naive per-image loop.

Three measurements in one run, on the same seeded random images and one random patch, at one
batch size, with the default model (EfficientNet-Lite0) unless told otherwise:

* bare: `model.probabilities` on device-resident batches (the model alone);
* patched: `evaluate.evaluate_patches` over images x sizes x corners (paste on the device,
  forward pass, criteria, bookkeeping), the same number of images per batch;
* paste: the pasting stream alone, without the model (what patched adds to bare);
* naive: a per-image loop that pastes with numpy and predicts one image at a time, timed on
  a small subset and extrapolated per image.

Bare and patched are timed in alternation (so a change of machine load hits both alike).
Printed: images/s of each, patched/bare (target >= 0.9) and patched/naive (target >= 20x;
a batched pass only beats a per-image loop by that much where the accelerator is starved
by batch 1, i.e. on a GPU; on a CPU the forward pass costs about the same per image).
Usage:

    python benchmarks/paste_throughput.py [--model NAME_OR_FILE.keras] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from patchfinder.data import ImageRecord
from patchfinder.evaluate import EligibleImages, evaluate_patches
from patchfinder.model import DEFAULT_MODEL, load_model
from patchfinder.paste import (
    DEFAULT_SIZES,
    Corners,
    iterate_pasted,
    patch_side,
    resize_patch,
    to_device,
)
from patchfinder.types import ClassPair, Patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="zoo name or .keras file")
    parser.add_argument("--pair", default="snorkel:scuba_diver", help="SRC:DST classes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=32, help="eligible images to paste on")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each")
    parser.add_argument("--naive-images", type=int, default=64, help="naive loop subset")
    args = parser.parse_args()

    model = load_model(args.model)
    pair = ClassPair.parse(args.pair, model.classes)
    size, batch = model.input_size, args.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
    patch = Patch("noise", "noise", rng.uniform(0, 255, (100, 100, 3)).astype(np.float32))
    records = [ImageRecord(Path(f"random-{k}.png"), pair.src) for k in range(len(x))]
    candidates = EligibleImages(x, records, np.zeros(len(x), np.float32), len(x), [])
    placement = Corners()
    layouts = placement.layout(size, DEFAULT_SIZES, np.random.default_rng(0))
    pasted = len(x) * len(DEFAULT_SIZES) * len(layouts[0])  # images per patched pass

    # The bare model sees as many images, in batches of the same size, already on the device.
    resident = to_device(np.resize(x, (batch, size, size, 3)))
    resident_x = to_device(x)

    def bare() -> None:
        for start in range(0, pasted, batch):
            model.probabilities(resident[: min(batch, pasted - start)]).numpy()

    def patched() -> None:
        evaluate_patches(model, candidates, [patch], pair, batch_size=batch)

    def paste_only() -> None:
        for pasted_batch in iterate_pasted(
            resident_x, [patch.pixels], layouts=layouts, sizes=DEFAULT_SIZES, batch_size=batch
        ):
            pasted_batch.images[0, 0, 0, 0].numpy()  # wait for the device

    runs = {"bare": bare, "patched": patched, "paste": paste_only}
    seconds = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        run()  # warm up: trace and allocate once
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name] += time.perf_counter() - start
    rates = {name: pasted * args.repeats / spent for name, spent in seconds.items()}

    # Naive: numpy paste (patch resized once per size, as a careful loop would) and
    # one forward pass per pasted image.
    resized = {s: resize_patch(patch.pixels, patch_side(s, size)).numpy() for s in DEFAULT_SIZES}
    jobs = [
        (s, position, image)
        for s, layout in zip(DEFAULT_SIZES, layouts, strict=True)
        for position in layout
        for image in x
    ][: args.naive_images]

    def naive() -> None:
        for s, position, image in jobs:
            side = patch_side(s, size)
            canvas = image.copy()
            canvas[position.y : position.y + side, position.x : position.x + side] = resized[s]
            model.probabilities(canvas[None]).numpy()

    naive()  # warm up the batch-1 trace
    start = time.perf_counter()
    naive()
    naive_rate = len(jobs) / (time.perf_counter() - start)

    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else "CPU only"
    print(
        f"model {model.name}, input {size}x{size}, batch {batch}, device {device}; "
        f"{len(x)} images x {len(DEFAULT_SIZES)} sizes x {len(layouts[0])} corners = "
        f"{pasted} pasted images per pass, {args.repeats} timed passes each"
    )
    print(f"bare forward pass:               {rates['bare']:8.1f} images/s")
    print(f"patched (paste + forward + flip): {rates['patched']:8.1f} images/s")
    print(f"paste alone (no model):           {rates['paste']:8.1f} images/s")
    print(f"naive per-image loop ({len(jobs)} images): {naive_rate:8.1f} images/s")
    print(f"patched / bare:  {rates['patched'] / rates['bare']:.3f}  (target >= 0.9)")
    print(f"patched / naive: {rates['patched'] / naive_rate:.1f}x  (target >= 20x)")


if __name__ == "__main__":
    main()
