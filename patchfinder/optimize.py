"""The gradient-optimised patch (Brown et al. 2017): the upper-bound control.

Natural patches are judged against what an attacker with gradients reaches with a patch of
the same size: an adversarial patch trained, by expectation over sizes and positions, to
maximise log p(dst) on the screening images (never on the evaluation images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from patchfinder.evaluate import EligibleImages
from patchfinder.model import Classifier
from patchfinder.paste import DEFAULT_SIZES, Position, composite, patch_side, place, transforms
from patchfinder.types import ClassPair, Patch


def optimize_patch(
    model: Classifier,
    eligible_screening: EligibleImages,
    pair: ClassPair,
    *,
    side: int = 64,
    steps: int = 200,
    learning_rate: float = 0.1,
    batch_size: int = 16,
    sizes: Sequence[float] = DEFAULT_SIZES,
    seed: int = 0,
    name: str = "optimized",
    progress: Callable[[int], None] | None = None,
) -> Patch:
    """An adversarial patch (Brown et al., 2017) for the pair: the upper bound for its size.

    The patch is `255 * sigmoid(w)`, so it stays in 0..255 whatever w. Each step draws
    `batch_size` screening images, one size from `sizes` and, per image, a position where
    the patch lies wholly inside (expectation over transformations); pastes with
    `paste.py`'s own ops (resize, `place`, `composite`: differentiable in the patch, and the
    same pixels the evaluation pastes) and takes one Adam step on -mean log p(dst). Every
    random choice comes from `np.random.default_rng(seed)`, so on CPU a seed gives the same
    patch.

    Args:
        model: the classifier.
        eligible_screening: the screening images the model gets right (never the evaluation
            half: that would grade the patch on its own training images).
        pair: the patch pushes toward `pair.dst`.
        side: the patch's side in pixels (pasting resizes it to each size).
        steps: Adam steps.
        learning_rate: Adam's step size in w (sigmoid) space: each step moves each w by about
            this much, and at w = 0 one unit of w is 64 grey levels.
        batch_size: images per step (fewer if fewer are eligible).
        sizes: patch sides as fractions of S; one is drawn per step.
        seed: seeds the initial noise, the batches, sizes and positions.
        name: the patch's name.
        progress: called with 1 after each step.
    Returns:
        A patch of kind "optimized", float32 (side, side, 3).
    """
    images = np.asarray(eligible_screening.images, dtype=np.float32)  # (n, S, S, 3)
    size = model.input_size
    if len(images) == 0:
        raise ValueError("optimize_patch needs eligible screening images; Received: none")
    if side < 1 or steps < 0 or batch_size < 1:
        raise ValueError(
            f"Need side >= 1, steps >= 0, batch_size >= 1; Received: side={side}, "
            f"steps={steps}, batch_size={batch_size}"
        )
    sides = [patch_side(fraction, size) for fraction in sizes]  # validates the fractions
    if not sides:
        raise ValueError("optimize_patch needs at least one size; Received: sizes=()")
    dst = pair.dst.index

    @tf.function(reduce_retracing=True)
    def loss_and_gradient(w, x, moves, pasted_side):
        # w (side, side, 3); x (B, S, S, 3); moves (B, 8) projective transforms
        with tf.GradientTape() as tape:
            tape.watch(w)
            patch = 255.0 * tf.sigmoid(w)  # (side, side, 3) in 0..255
            resized = tf.image.resize(patch, pasted_side, method="bilinear", antialias=True)
            count = tf.shape(x)[0]
            layers = place(resized[None], moves, tf.zeros([count], tf.int32), size)
            pasted = composite(x, layers, tf.range(count), tf.range(count))  # (B, S, S, 3)
            log_p = tf.nn.log_softmax(model.logits(pasted), axis=-1)[:, dst]  # (B,)
            loss = -tf.reduce_mean(log_p)
        return loss, tape.gradient(loss, w)

    rng = np.random.default_rng(seed)
    w = rng.uniform(-2.0, 2.0, size=(side, side, 3)).astype(np.float32)  # pixels ~ 30..225
    first, second = np.zeros_like(w), np.zeros_like(w)  # Adam's moment estimates
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8  # Adam's defaults (Kingma and Ba, 2015)
    for step in range(1, steps + 1):
        batch = np.sort(rng.choice(len(images), size=min(batch_size, len(images)), replace=False))
        pasted_side = sides[rng.integers(len(sides))]
        corners = rng.integers(0, size - pasted_side + 1, size=(len(batch), 2))  # (B, 2) x, y
        moves = transforms(
            [Position(str(k), int(x), int(y)) for k, (x, y) in enumerate(corners)], pasted_side
        )
        _, gradient = loss_and_gradient(
            tf.constant(w),
            tf.constant(images[batch]),
            tf.constant(moves),
            tf.constant([pasted_side, pasted_side]),
        )
        g = gradient.numpy()
        first = beta1 * first + (1 - beta1) * g
        second = beta2 * second + (1 - beta2) * g**2
        mean, variance = first / (1 - beta1**step), second / (1 - beta2**step)  # unbiased
        w = (w - learning_rate * mean / (np.sqrt(variance) + epsilon)).astype(np.float32)
        if progress is not None:
            progress(1)
    pixels = (255.0 / (1.0 + np.exp(-w.astype(np.float64)))).astype(np.float32)
    return Patch(name=name, kind="optimized", pixels=pixels)
