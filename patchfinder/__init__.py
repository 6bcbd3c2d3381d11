"""patchfinder: natural adversarial patches from class-pair activation atlases.

The stages, in the order data flows: `labels` and `data` (classes and images), `model` (one
uniform classifier interface over Keras, TF-Hub, SavedModel and frozen-graph models), then
the later stages that build on them. `cli` is the command-line layer over all of it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("patchfinder")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
