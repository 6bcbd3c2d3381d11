"""Feature-visualisation icons: Lucid's recipe (Olah et al., 2017) for atlas cell directions.

The optional alternative to `render.cell_icons`' natural icons: each cell's mean activation is
drawn as the image that excites that direction at the layer, optimised by gradient ascent.
The recipe is Lucid's `render_vis` with its defaults, batched over directions:

    spectrum = normal(0, 0.01)                 # (B, 3, S, S//2+1) complex, one image per direction
    image = to_rgb(spectrum)                   # (B, S, S, 3) 0..255: irfft2, 1/f scale, colours
    seen = robustness(image)                   # (B, S, S, 3): pad, jitter, scale, rotate, jitter
    acts, _ = model.activations(seen, layer)   # (B, h, w, D)
    ascend direction_objective(acts, directions) with Adam, `steps` times

Parameterisation: Lucid's default `param.image(fft=True, decorrelate=True)`. The image is the
inverse real FFT of a spectrum scaled by 1/frequency (so every frequency learns at the same
pace and the image is not drowned in high-frequency noise), its three channels are mixed by
the square root of ImageNet's colour covariance (so the optimiser moves in decorrelated
colour space), and a sigmoid keeps it in 0..255.

Objective: Lucid's `direction_neuron_cossim` (the family the Activation Atlas icons used),
taken at every spatial position and averaged, `mean_hw dot(a, v) * max(cos(a, v), 0.1) ** pow` with
v the unit direction: the dot product rewards magnitude along v, the cosine factor punishes
magnitude in other directions. Averaging over positions (rather than Lucid's centre position)
fills the whole image with the feature, so the downsampled icon shows it wherever one looks.

Resolution: models here take a fixed S x S input, and the model's forward and backward pass
at S costs the same whatever resolution the image is optimised at, so the image is optimised at
S itself (features at the scale the model sees them) and the icon is the whole image,
downsampled (antialiased) to `icon_size`.

Transforms: Lucid's `standard_transforms` (pad, jitter, random scale, random rotation,
jitter; rotations narrowed to +-5 degrees) are composed into one affine map per image and
step, applied by one bilinear resampling (`tf.raw_ops.ImageProjectiveTransformV3`), grey
outside the image; sizes are fractions of S, so they mean the same at S = 32 and at S = 299.

Cost: one forward and backward pass at S per direction and step. Measured on 2 busy CPU cores
(EfficientNet-Lite0, S = 224, `block6d`, 4 directions in one batch): 0.12 s per direction and
step, both at 32 and at 128 steps, so about 15 s per icon at the default 128 steps and about
50 min for a 200-cell atlas. `steps` is the knob; the objective has roughly tripled by step 32,
and the icons are saturated and recognisable (fish eyes and scales, shark skin) by step 128.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from patchfinder.model import Classifier

#: Square root of ImageNet's colour covariance (Lucid's `color_correlation_svd_sqrt`), with its
#: columns scaled so the largest has unit norm: maps decorrelated channels to RGB.
COLOUR_CORRELATION = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
COLOUR_CORRELATION /= np.max(np.linalg.norm(COLOUR_CORRELATION, axis=0))


@dataclass(frozen=True)
class Robustness:
    """Random transforms drawn per image and step, as in Lucid's `standard_transforms`.

    Attributes:
        pad: grey margin added on every side, as a fraction of S (Lucid: 12 px).
        jitter: largest shift before scaling, a fraction of S (Lucid: 8 px).
        scales: zoom factors, one drawn uniformly.
        angles: rotations in degrees, one drawn uniformly (Lucid: -10..10).
        jitter_after: largest shift after rotating, a fraction of S (Lucid: 4 px).
    """

    pad: float = 0.05
    jitter: float = 0.035
    scales: tuple[float, ...] = tuple(1.0 + (i - 5) / 50.0 for i in range(11))  # 0.9 .. 1.1
    angles: tuple[float, ...] = tuple(float(a) for a in range(-5, 6))
    jitter_after: float = 0.02


#: The transforms `feature_icons` uses unless told otherwise.
STANDARD_ROBUSTNESS = Robustness()


# --- parameterisation ---------------------------------------------------------------------


def _frequency_scale(side: int, decay_power: float = 1.0) -> np.ndarray:
    """float32 (side, side//2+1): Lucid's spectrum scale, 1/frequency, times the side."""
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    frequencies = np.sqrt(fx * fx + fy * fy)
    # The DC term gets the scale of the lowest non-zero frequency; sqrt(side^2) = side keeps
    # the image's amplitude independent of its size (irfft2d divides by side^2).
    return (side / np.maximum(frequencies, 1.0 / side) ** decay_power).astype(np.float32)


def _to_rgb(spectrum: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """(2, B, 3, S, S//2+1) real and imaginary parts -> float32 (B, S, S, 3) in 0..255."""
    complex_spectrum = tf.complex(spectrum[0] * scale, spectrum[1] * scale)
    side = tf.shape(spectrum)[3]
    image = tf.signal.irfft2d(complex_spectrum, fft_length=tf.stack([side, side]))  # (B, 3, S, S)
    image = tf.transpose(image, (0, 2, 3, 1)) / 4.0  # (B, S, S, 3), Lucid's damping
    decorrelated = tf.einsum("bhwc,rc->bhwr", image, COLOUR_CORRELATION)  # to RGB
    return 255.0 * tf.sigmoid(decorrelated)


# --- transforms ---------------------------------------------------------------------------


def _affine_rows(
    rng: np.random.Generator, count: int, side: int, robustness: Robustness
) -> np.ndarray:
    """float32 (count, 8) `ImageProjectiveTransformV3` rows, mapping model-input pixels to
    image pixels, each a random pad, jitter, scale, rotation and jitter about the centre."""
    centre = (side - 1) / 2.0
    shift = rng.uniform(-1.0, 1.0, size=(count, 2)) * robustness.jitter * side  # (count, 2)
    shift_after = rng.uniform(-1.0, 1.0, size=(count, 2)) * robustness.jitter_after * side
    # The padded image (side * (1 + 2 pad)) is shown at side pixels, then zoomed.
    zoom = rng.choice(robustness.scales, size=count) / (1.0 + 2.0 * robustness.pad)  # (count,)
    radians = np.deg2rad(rng.choice(robustness.angles, size=count))
    cos, sin = np.cos(radians) / zoom, np.sin(radians) / zoom
    rows = np.zeros((count, 8), np.float64)
    # output o -> image i = centre + shift + R(-angle) (o - centre - shift_after) / zoom
    ox = centre + shift_after[:, 0]
    oy = centre + shift_after[:, 1]
    rows[:, 0], rows[:, 1] = cos, sin
    rows[:, 2] = centre + shift[:, 0] - cos * ox - sin * oy
    rows[:, 3], rows[:, 4] = -sin, cos
    rows[:, 5] = centre + shift[:, 1] + sin * ox - cos * oy
    return rows.astype(np.float32)


def _transform(images: tf.Tensor, rows: tf.Tensor, side: int) -> tf.Tensor:
    """(B, S, S, 3) -> (B, side, side, 3), bilinear, grey (127.5) outside the image."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=rows,
        output_shape=tf.constant([side, side]),
        fill_value=127.5,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


# --- objective ----------------------------------------------------------------------------


def _objective(acts: tf.Tensor, units: tf.Tensor, cossim_pow: float) -> tf.Tensor:
    """(B, h, w, D) activations, (B, D) unit directions -> (B,) objectives."""
    dot = tf.einsum("bhwd,bd->bhw", acts, units)  # (B, h, w)
    cosine = dot / (tf.norm(acts, axis=-1) + 1e-4)  # (B, h, w)
    return tf.reduce_mean(dot * tf.maximum(cosine, 0.1) ** cossim_pow, axis=(1, 2))


def _unit_directions(directions: np.ndarray) -> np.ndarray:
    """(C, D) -> float32 (C, D) of unit length (all-zero rows stay zero)."""
    directions = np.asarray(directions, np.float64)
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    return (directions / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def direction_objective(
    model: Classifier,
    layer: str,
    images: np.ndarray,
    directions: np.ndarray,
    *,
    cossim_pow: float = 1.0,
) -> np.ndarray:
    """float64 (B,): how strongly each image shows its direction at `layer`.

    `mean over positions of dot(a, v) * max(cos(a, v), 0.1) ** cossim_pow`, v the unit
    direction: the quantity `feature_icons` maximises (without its random transforms).

    Args:
        model: the classifier.
        layer: one of `model.layers`.
        images: float (B, S, S, 3) in 0..255.
        directions: (B, D), one per image; D is the layer's channel count.
        cossim_pow: the cosine's exponent (0: the plain dot product).
    """
    acts, _ = model.activations(np.asarray(images, np.float32), layer)
    units = tf.constant(_unit_directions(directions))
    return _objective(acts, units, cossim_pow).numpy().astype(np.float64)


# --- icons --------------------------------------------------------------------------------


def feature_icons(
    model: Classifier,
    layer: str,
    directions: np.ndarray,
    *,
    icon_size: int = 64,
    steps: int = 128,
    learning_rate: float = 0.05,
    seed: int = 0,
    batch_size: int = 16,
    cossim_pow: float = 1.0,
    robustness: Robustness = STANDARD_ROBUSTNESS,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint8 (C, icon_size, icon_size, 3): a feature visualisation of each direction.

    Directions are optimised `batch_size` at a time, one image each, by Adam on the spectrum
    of Lucid's FFT parameterisation (see the module docstring for the recipe and its cost).
    Every random choice (initial spectra, transforms) comes from `np.random.default_rng(seed)`,
    so a seed and batch size give the same icons on CPU.

    Args:
        model: the classifier.
        layer: one of `model.layers`.
        directions: (C, D) activation directions, e.g. the atlas cells' `mean_activation`; only
            their direction counts, not their length.
        icon_size: output side in pixels.
        steps: Adam steps per batch (0 gives the grey initial images).
        learning_rate: Adam's step size on the spectrum (Lucid's default).
        seed: seeds the initial spectra and the transforms.
        batch_size: directions optimised together.
        cossim_pow: exponent of the cosine factor in the objective (0: plain dot product).
        robustness: the random transforms applied every step.
        progress: called after each step with the number of images it optimised (the total
            is C * steps).
    """
    directions = np.asarray(directions)
    if not isinstance(icon_size, (int, np.integer)) or icon_size <= 0:
        raise ValueError(f"icon_size must be a positive int; Received: icon_size={icon_size!r}")
    if steps < 0 or batch_size < 1:
        raise ValueError(
            f"Need steps >= 0 and batch_size >= 1; Received: steps={steps}, batch_size={batch_size}"
        )
    if directions.ndim != 2 or not np.all(np.isfinite(directions)):
        raise ValueError(
            f"directions must be a finite (C, D) array; Received: shape {directions.shape}"
        )
    side = model.input_size
    probe, _ = model.activations(np.full((1, side, side, 3), 127.5, np.float32), layer)
    if probe.shape.rank != 4 or directions.shape[1] != probe.shape[-1]:
        raise ValueError(
            f"directions must have one value per channel of {layer!r} ({probe.shape[-1]}); "
            f"Received: shape {directions.shape}"
        )
    units = _unit_directions(directions)  # (C, D)
    scale = tf.constant(_frequency_scale(side))

    @tf.function(reduce_retracing=True)
    def ascend(spectrum: tf.Tensor, rows: tf.Tensor, batch_units: tf.Tensor):
        with tf.GradientTape() as tape:
            tape.watch(spectrum)
            seen = _transform(_to_rgb(spectrum, scale), rows, side)  # (B, S, S, 3)
            acts, _ = model.activations(seen, layer)  # (B, h, w, D)
            loss = -tf.reduce_sum(_objective(acts, batch_units, cossim_pow))  # images independent
        return tape.gradient(loss, spectrum)

    rng = np.random.default_rng(seed)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8  # Adam's defaults (Kingma and Ba, 2015)
    icons = np.zeros((len(units), icon_size, icon_size, 3), np.uint8)
    for start in range(0, len(units), batch_size):
        batch_units = tf.constant(units[start : start + batch_size])  # (B, D)
        count = int(batch_units.shape[0])
        shape = (2, count, 3, side, side // 2 + 1)  # real and imaginary parts
        spectrum = rng.normal(0.0, 0.01, size=shape).astype(np.float32)  # Lucid's sd
        first, second = np.zeros_like(spectrum), np.zeros_like(spectrum)  # Adam's moments
        for step in range(1, steps + 1):
            rows = _affine_rows(rng, count, side, robustness)
            g = ascend(tf.constant(spectrum), tf.constant(rows), batch_units).numpy()
            first = beta1 * first + (1 - beta1) * g
            second = beta2 * second + (1 - beta2) * g**2
            mean, variance = first / (1 - beta1**step), second / (1 - beta2**step)  # unbiased
            spectrum = (spectrum - learning_rate * mean / (np.sqrt(variance) + epsilon)).astype(
                np.float32
            )
            if progress is not None:
                progress(count)
        image = _to_rgb(tf.constant(spectrum), scale)  # (B, S, S, 3)
        small = tf.image.resize(image, (icon_size, icon_size), method="bilinear", antialias=True)
        icons[start : start + count] = np.clip(np.rint(small.numpy()), 0, 255).astype(np.uint8)
    return icons
