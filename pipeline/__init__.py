"""Image-similarity search: an autoencoder over a pretrained network's features, clustered and indexed for routed KNN."""

from .quiet import silence_tensorflow

__version__ = "0.2.0"

silence_tensorflow()  # the package's one import-time side effect: before anything loads TensorFlow
