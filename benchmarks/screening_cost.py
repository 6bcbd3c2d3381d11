"""What does screening cost? Forward passes of the old exhaustive screening and of successive
halving, for the same candidates, counted as they run.

Both screen the same seeded candidates (random patches) on the same images, at the same sizes
and corners, and every pasted image that reaches `model.probabilities` is counted:

* old: `evaluate.screen`, every candidate at every size and position on `--images` images
  (what `discover` did before issue 11: about 30 attribution candidates on 32 images);
* new: `evaluate.successive_halving` with the budget `discover.propose` gives it by default,
  the old screening's cost for `--budget-candidates` candidates, plus the refinement round's
  variants counted as candidates (here: copies of the best, at the same cost as crops).

Printed per candidate count: both pass counts, old/new, and the wall time of each. The cost
is a property of the schedule, not of the model, so the default model is a tiny in-process
CNN (fast); `--model efficientnet-lite0` times the real thing. Usage:

    python benchmarks/screening_cost.py [--candidates 30,100,300] [--model tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from patchfinder.data import ImageRecord
from patchfinder.evaluate import EligibleImages, exhaustive_cost, screen, successive_halving
from patchfinder.model import Classifier, load_model
from patchfinder.paste import Corners
from patchfinder.types import ClassPair, Patch, Proposal


def tiny_model(folder: Path) -> Classifier:
    """A three-conv 64-px classifier with ImageNet's 1000 outputs, saved and loaded back."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1000, name="logits")(x))
    path = folder / "tiny.keras"
    model.save(path)
    return load_model(str(path), preprocess="unit")


def counting(model: Classifier) -> list[int]:
    """Count the images every `model.probabilities` call receives (an instance attribute)."""
    counted = [0]
    original = model.probabilities

    def probabilities(images):
        counted[0] += int(images.shape[0])
        return original(images)

    model.probabilities = probabilities  # type: ignore[method-assign]
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a zoo name or a .keras file")
    parser.add_argument("--pair", default="snorkel:scuba_diver", help="SRC:DST classes")
    parser.add_argument("--candidates", default="30,100,300", help="candidate counts to screen")
    parser.add_argument("--budget-candidates", type=int, default=30, help="old default count")
    parser.add_argument("--images", type=int, default=32, help="screening images")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model(Path(folder)) if args.model == "tiny" else load_model(args.model)
    pair = ClassPair.parse(args.pair, model.classes)
    size, sizes, placement = model.input_size, (0.3, 0.4, 0.5), Corners()
    rng = np.random.default_rng(0)
    images = EligibleImages(
        images=rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32),
        records=[ImageRecord(Path(f"image-{i}.png"), pair.src) for i in range(args.images)],
        clean_probs_dst=np.zeros(args.images, np.float32),
        n_candidates=args.images,
        skipped=[],
    )
    budget = exhaustive_cost(args.budget_candidates, args.images, len(sizes), 4)
    counted = counting(model)
    print(f"model {model.name}; {args.images} images, sizes {sizes}, 4 corners")
    print(f"budget (old screening of {args.budget_candidates} candidates): {budget:,} passes")
    print(f"{'candidates':>10} {'old passes':>11} {'new passes':>11} {'old/new':>8} "
          f"{'old s':>7} {'new s':>7}")  # fmt: skip
    for count in (int(c) for c in args.candidates.split(",")):
        proposals = [
            Proposal(
                patch=Patch(f"c{i:04d}", "discovered", rng.uniform(0, 255, (40, 40, 3))),
                source_file=f"pool-{i}.png",
                source_class="",
                box=(0, 0, 40, 40),
                cell=(0, 0),
                attribution=float(rng.normal()),
            )
            for i in range(count)
        ]

        def refine(field: list[Proposal]) -> list[Proposal]:
            return [
                dataclasses.replace(
                    p,
                    patch=Patch(f"{p.patch.name}-v{k}", "discovered", p.patch.pixels),
                    parent=p.patch.name,
                )
                for p in field[:5]
                for k in range(6)
            ]

        counted[0], start = 0, time.perf_counter()
        screen(model, proposals, images, pair, top_k=args.top_k, sizes=sizes, placement=placement)
        old, old_s = counted[0], time.perf_counter() - start
        counted[0], start = 0, time.perf_counter()
        successive_halving(
            model, proposals, images, pair, top_k=args.top_k, budget=budget, refine=refine,
            refine_count=30, sizes=sizes, placement=placement,
        )  # fmt: skip
        new, new_s = counted[0], time.perf_counter() - start
        print(f"{count:>10} {old:>11,} {new:>11,} {old / new:>8.2f} {old_s:>7.1f} {new_s:>7.1f}")


if __name__ == "__main__":
    main()
