"""Image-similarity search: a convolutional autoencoder's latents, clustered and indexed for routed KNN."""

__version__ = "0.1.0"
