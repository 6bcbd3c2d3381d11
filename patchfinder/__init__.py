"""patchfinder: natural adversarial patches from class-pair activation atlases.

The stages, in the order data flows: `labels` and `data` (classes and images), `model` (one
uniform classifier interface over Keras, TF-Hub, SavedModel and frozen-graph models),
`activations` (attributed activation vectors), `atlas` (layout, cells, class-pair view),
`render`, `proposals` (natural crops and controls), `paste` (placements, batched pasting),
`evaluate` (flip statistics), `optimize` (the gradient-optimised control), `report`, and the
recipes in `discover`. `cli` is the command-line layer over all of it.

The public names below are imported on first use, so `import patchfinder` stays fast and
does not load TensorFlow until a model-facing name is touched.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("patchfinder")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {
    "ClassList": "labels",
    "imagenet": "labels",
    "ClassPair": "types",
    "Cell": "types",
    "Patch": "types",
    "Proposal": "types",
    "ActivationSamples": "types",
    "find_images": "data",
    "load_image": "data",
    "Classifier": "model",
    "load_model": "model",
    "collect": "activations",
    "Atlas": "atlas",
    "build_atlas": "atlas",
    "Placement": "paste",
    "Corners": "paste",
    "Grid": "paste",
    "RandomPositions": "paste",
    "Rotated": "paste",
    "Flip": "evaluate",
    "Untargeted": "evaluate",
    "eligible": "evaluate",
    "evaluate_patches": "evaluate",
    "split_images": "evaluate",
    "optimize_patch": "optimize",
    "pair_atlas": "discover",
    "propose": "discover",
    "measure": "discover",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f"patchfinder.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'patchfinder' has no attribute {name!r}")
