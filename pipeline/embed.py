"""The encoder turns model-input images into latent vectors, the same way at fit and query time."""

from __future__ import annotations

import keras
import numpy as np
from sklearn.decomposition import PCA
from tqdm import tqdm

from .dataset import ImageCache, iter_batches, to_model_input


def embed_images(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """Latent vectors (float32) of uint8 images shaped (count, size, size, 3)."""
    return np.asarray(encoder.predict_on_batch(to_model_input(images)), dtype=np.float32)


def embed_cache(encoder: keras.Model, cache: ImageCache, batch_size: int) -> np.ndarray:
    """Latent vectors of every image in a cache, in row order, streamed batch by batch."""
    vectors = []
    with tqdm(total=cache.count, desc="embed", unit="img") as progress:
        for batch in iter_batches(cache, batch_size):
            vectors.append(np.asarray(encoder.predict_on_batch(batch), dtype=np.float32))
            progress.update(len(batch))
    return np.concatenate(vectors) if vectors else np.empty((0, encoder.output_shape[-1]), np.float32)


def whitened_encoder(encoder: keras.Model, latents: np.ndarray, dims: int, whitening: float,
                     seed: int = 0) -> keras.Model:
    """The encoder followed by a PCA layer learned on ``latents`` (its outputs on the fitted images).

    The layer centres, rotates onto the principal axes, keeps at most ``dims`` of them and divides
    each by its variance ** (whitening / 2): 1 gives unit variance on every axis (full whitening),
    0 keeps PCA's scale. It is a fixed Dense layer inside the returned model, so a saved encoder
    applies it to queries exactly as to the fitted images.
    """
    dims = min(dims, latents.shape[1], len(latents) - 1)
    if dims < 1:
        return encoder
    pca = PCA(dims, random_state=seed).fit(latents)
    scale = np.maximum(pca.explained_variance_, 1e-12) ** (whitening / 2)
    kernel = (pca.components_.T / scale).astype(np.float32)
    bias = (-pca.mean_ @ kernel).astype(np.float32)
    whiten = keras.layers.Dense(dims, name="whiten", trainable=False)
    model = keras.Model(encoder.input, whiten(encoder.output), name="encoder")
    whiten.set_weights([kernel, bias])
    return model
