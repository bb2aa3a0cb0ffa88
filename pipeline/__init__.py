"""Image-similarity search: an autoencoder over a pretrained network's features, clustered and indexed for routed KNN."""

__version__ = "0.2.0"
