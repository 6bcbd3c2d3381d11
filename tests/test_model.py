"""The uniform classifier interface on every backend, on tiny models written by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from patchfinder import model as model_mod
from patchfinder.labels import ClassList, ImageClass, imagenet, lucid_to_imagenet
from patchfinder.model import (
    INCEPTION_V1_HUB_LAYERS,
    LUCID_LAYERS,
    KerasClassifier,
    UnknownLayerError,
    UnknownModelError,
    WeightsUnavailableError,
    load_model,
)

from conftest import tiny_cnn


def ten_classes() -> ClassList:
    return ClassList([ImageClass(i, "", f"class{i}") for i in range(10)])


def tiny_classifier(*, softmax: bool = False) -> KerasClassifier:
    return KerasClassifier(
        tiny_cnn(softmax=softmax),
        outputs_probabilities=softmax,
        name="tiny",
        input_size=32,
        classes=ten_classes(),
        layers=("conv1", "conv2", "conv3"),
        default_layer="conv3",
        weights_id="random",
        preprocess="unit",
    )


def images(rng: np.random.Generator, n: int = 3, size: int = 32) -> np.ndarray:
    return rng.uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def assert_interface(classifier, x: np.ndarray, layer: str) -> None:
    """The properties every classifier must have, whatever its backend."""
    logits = classifier.logits(x)
    assert logits.shape == (len(x), len(classifier.classes))
    with tf.GradientTape() as tape:
        # No tape.watch: every backend records its activations for the caller's tape.
        acts, logits_same_pass = classifier.activations(x, layer)
        difference = logits_same_pass[:, 1] - logits_same_pass[:, 0]
    assert acts.shape.rank == 4 and acts.shape[0] == len(x)
    np.testing.assert_allclose(logits_same_pass, logits, rtol=1e-4, atol=1e-4)
    gradient = tape.gradient(difference, acts)
    assert gradient is not None and gradient.shape == acts.shape
    assert np.isfinite(gradient.numpy()).all() and np.abs(gradient.numpy()).sum() > 0
    with pytest.raises(UnknownLayerError, match=layer):
        classifier.activations(x, "no_such_layer")
    with pytest.raises(ValueError, match="Received"):
        classifier.logits(x[:, :-1])


def test_keras_classifier_interface(rng):
    assert_interface(tiny_classifier(), images(rng), "conv2")


def test_logits_are_differentiable_with_respect_to_images(rng):
    classifier = tiny_classifier()
    x = tf.constant(images(rng))
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(classifier.logits(x)[:, 3])
    assert np.abs(tape.gradient(score, x).numpy()).sum() > 0


def test_softmax_output_gives_exact_logit_differences(rng):
    x = images(rng)
    plain, with_softmax = tiny_classifier(), tiny_classifier(softmax=True)
    with_softmax.model.set_weights(plain.model.get_weights())
    a, b = plain.logits(x).numpy(), with_softmax.logits(x).numpy()
    np.testing.assert_allclose(a[:, 4] - a[:, 7], b[:, 4] - b[:, 7], rtol=1e-4, atol=1e-4)


def test_keras_file_with_labels(tmp_path, rng):
    path = tmp_path / "tiny.keras"
    tiny_cnn(softmax=True).save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(10)))
    classifier = load_model(str(path), labels=labels, preprocess="unit")
    assert classifier.layers == ("conv1", "conv2", "conv3")
    assert classifier.default_layer == "conv3"
    assert classifier.classes.get("thing 3").index == 3
    assert_interface(classifier, images(rng), "conv3")


def test_keras_file_without_matching_labels_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_cnn().save(path)
    with pytest.raises(ValueError, match="--labels"):
        load_model(str(path))
    with pytest.raises(FileNotFoundError, match="absent.keras"):
        load_model(str(tmp_path / "absent.keras"))


def test_unknown_model_lists_the_zoo():
    with pytest.raises(UnknownModelError, match="efficientnet-lite0"):
        load_model("resnet-9000")
    assert model_mod.model_spec("GoogLeNet").name == "inception-v1"


# --- Inception V3: the keras.applications architecture, weights from a local file --------


@pytest.fixture(scope="module")
def inception_v3_weights(tmp_path_factory) -> tuple[str, tf.keras.Model]:
    model = model_mod.inception_v3_architecture(None)
    path = tmp_path_factory.mktemp("iv3") / "inception_v3.weights.h5"
    model.save_weights(path)
    return str(path), model


def test_inception_v3_from_local_weights(inception_v3_weights, rng):
    path, reference = inception_v3_weights
    classifier = load_model("inception-v3", weights=path)
    assert classifier.layers == tuple(f"mixed{i}" for i in range(11))
    assert classifier.input_size == 299 and len(classifier.classes) == 1000
    x = images(rng, n=1, size=299)
    expected = reference(x / 127.5 - 1.0, training=False)
    np.testing.assert_allclose(classifier.logits(x), expected, rtol=1e-3, atol=1e-3)
    acts, _ = classifier.activations(x, classifier.default_layer)
    assert acts.shape == (1, 17, 17, 768)


def test_inception_v3_offline_error_names_url_and_flag(monkeypatch):
    def offline(weights):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(model_mod, "inception_v3_architecture", offline)
    with pytest.raises(WeightsUnavailableError, match="inception_v3_weights.*--weights"):
        load_model("inception-v3")
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        load_model("inception-v3", weights="/nowhere.h5")


# --- Inception V1 through TF-Hub: a SavedModel with the Hub image-classification layout ----


def hub_like_outputs(images, layers, outputs: int, rng, variable) -> dict:
    """Conv layers named `InceptionV1/<layer>`, then pooled logits under `default`."""
    result, x = {}, images
    for i, name in enumerate(layers):
        kernel = variable(f"k{i}", rng.normal(size=(3, 3, 3 if i == 0 else 4, 4)))
        x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=2 if i < 5 else 1, padding="SAME"))
        result[f"InceptionV1/{name}"] = x
    dense = variable("dense", rng.normal(size=(4, outputs)))
    result["default"] = tf.matmul(tf.reduce_mean(x, axis=[1, 2]), dense)
    return result


def write_hub_like_module(folder, layers=INCEPTION_V1_HUB_LAYERS, outputs: int = 1001) -> None:
    """A TF1 SavedModel like the public TF-Hub Inception V1 module (TF1 Hub format): an
    `image_classification` signature taking `images` in 0..1, returning logits under
    `default` and hidden activations under `InceptionV1/<layer>`."""
    rng = np.random.default_rng(1)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3], name="images")

        def variable(name, value):
            return tf.compat.v1.get_variable(name, initializer=tf.constant(value, tf.float32))

        result = hub_like_outputs(images, layers, outputs, rng, variable)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(folder))
            signature = tf.compat.v1.saved_model.predict_signature_def({"images": images}, result)
            builder.add_meta_graph_and_variables(
                session, [], signature_def_map={"image_classification": signature}
            )
            builder.save()


def write_tf2_savedmodel(folder, layers, outputs: int = 10) -> None:
    """The same layout saved from a TF2 `tf.Module` with a `serving_default` signature."""
    rng = np.random.default_rng(3)

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.store = {}

        def variable(self, name, value):
            if name not in self.store:
                self.store[name] = tf.Variable(value, dtype=tf.float32, name=name)
            return self.store[name]

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def serve(self, images):
            return hub_like_outputs(images, layers, outputs, rng, self.variable)

    module = Module()
    module.serve.get_concrete_function()  # creates the variables
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def test_inception_v1_from_local_savedmodel(tmp_path, rng):
    write_hub_like_module(tmp_path / "hub")
    classifier = load_model("googlenet", weights=str(tmp_path / "hub"))
    assert classifier.layers == INCEPTION_V1_HUB_LAYERS
    assert len(classifier.classes) == 1000
    x = images(rng, n=2, size=224)
    raw = (
        tf.saved_model.load(str(tmp_path / "hub"))
        .signatures["image_classification"](images=tf.constant(x / 255.0))["default"]
        .numpy()
    )
    # Column 0 is the background class; the rest are the ImageNet classes in order.
    np.testing.assert_allclose(classifier.logits(x), raw[:, 1:], rtol=1e-4, atol=1e-4)
    assert_interface(classifier, x, "Mixed_4d")


def test_savedmodel_missing_layers_is_a_clear_error(tmp_path):
    write_hub_like_module(tmp_path / "small", layers=("Mixed_3b", "Mixed_4c"))
    with pytest.raises(ValueError, match="Mixed_5c"):
        load_model("inception-v1", weights=str(tmp_path / "small"))


def test_any_tf2_savedmodel_folder_with_labels(tmp_path, rng):
    write_tf2_savedmodel(tmp_path / "tf2", layers=("early", "late"))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(10)))
    classifier = load_model(str(tmp_path / "tf2"), labels=labels)
    assert classifier.layers == ("early", "late") and len(classifier.classes) == 10
    assert_interface(classifier, images(rng, n=2, size=224), "early")


def test_inception_v1_unreachable_handle_says_how_to_go_offline():
    with pytest.raises(WeightsUnavailableError, match="--weights DIR"):
        load_model("inception-v1", weights="http://127.0.0.1:9/no/module")


# --- Lucid's InceptionV1: a frozen GraphDef with the same input and layer names ---------


def write_lucid_like_graph(path) -> np.ndarray:
    """A frozen graph: `input` -> conv layers named mixed3a..mixed5b -> 1008 logits.

    Returns the dense weights so the test can check the class-column mapping."""
    rng = np.random.default_rng(2)
    dense = rng.normal(size=(4, 1008)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="input")
        for i, name in enumerate(LUCID_LAYERS):
            kernel = tf.constant(rng.normal(size=(3, 3, 3 if i == 0 else 4, 4)), tf.float32)
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), name=name)
        pooled = tf.reduce_mean(x, axis=[1, 2])
        tf.matmul(pooled, tf.constant(dense), name="softmax2_pre_activation")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return dense


def test_inception_v1_lucid_from_local_graph(tmp_path, rng):
    graph_file = tmp_path / "tensorflow_inception_graph.pb"
    write_lucid_like_graph(graph_file)
    classifier = load_model("inception-v1-lucid", weights=str(graph_file))
    assert classifier.layers == LUCID_LAYERS and classifier.default_layer == "mixed4c"
    x = images(rng, n=2, size=224)
    assert_interface(classifier, x, "mixed4c")
    # The 1000 logits are the Lucid columns of the matching names, input shifted by -117.
    _, raw = classifier._forward(tf.constant(x - 117.0), None)
    logits = classifier.logits(x).numpy()
    snorkel = imagenet().get("snorkel").index
    np.testing.assert_allclose(
        logits[:, snorkel], raw.numpy()[:, lucid_to_imagenet()[snorkel]], rtol=1e-5
    )


def test_lucid_graph_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pb"):
        load_model("inception-v1-lucid", weights=str(tmp_path / "absent.pb"))
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\x00\xffnot a graph")
    with pytest.raises(ValueError, match="junk.pb"):
        load_model("inception-v1-lucid", weights=str(junk))
