"""The encoder turns model-input images into latent vectors, the same way at fit and query time."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from sklearn.decomposition import PCA
from tqdm import tqdm

from .dataset import ImageCache, iter_batches, to_model_input


def embed_images(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """Latent vectors (float32) of uint8 images shaped (count, size, size, 3)."""
    return np.asarray(encoder.predict_on_batch(to_model_input(images)), dtype=np.float32)


def embed_cache(encoder: keras.Model, cache: ImageCache, batch_size: int) -> np.ndarray:
    """Latent vectors of every image in a cache, in row order (a descriptor encoder: one output)."""
    return embed_cache_blocks(encoder, cache, batch_size)[0]


def embed_cache_blocks(encoder: keras.Model, cache: ImageCache, batch_size: int) -> list[np.ndarray]:
    """Each output of ``encoder`` for every image in a cache, in row order, streamed batch by batch."""
    blocks: list[list[np.ndarray]] = [[] for _ in encoder.outputs]
    with tqdm(total=cache.count, desc="embed", unit="img") as progress:
        for batch in iter_batches(cache, batch_size):
            outputs = encoder.predict_on_batch(batch)
            for slot, output in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
                blocks[slot].append(np.asarray(output, dtype=np.float32))
            progress.update(len(batch))
    return [np.concatenate(parts) if parts else np.empty((0, output.shape[-1]), np.float32)
            for parts, output in zip(blocks, encoder.outputs)]


def fit_whitening(latents: np.ndarray, dims: int, whitening: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PCA whitening learned on ``latents`` as an affine map: ``latents @ kernel + bias``.

    It centres, rotates onto the principal axes, keeps at most ``dims`` of them and divides each by
    its variance ** (whitening / 2): 1 gives unit variance on every axis (full whitening), 0 keeps
    PCA's scale.
    """
    pca = PCA(min(dims, latents.shape[1], len(latents) - 1), random_state=seed).fit(latents)
    kernel = (pca.components_.T / np.maximum(pca.explained_variance_, 1e-12) ** (whitening / 2)).astype(np.float32)
    return kernel, (-pca.mean_ @ kernel).astype(np.float32)


def descriptor_encoder(encoder: keras.Model, blocks: Sequence[np.ndarray], weights: Sequence[float], dims: int,
                       whitening: float, seed: int = 0) -> keras.Model:
    """The encoder followed by one PCA whitening layer per output block (:func:`fit_whitening`,
    learned on ``blocks``, its outputs on the fitted images), giving one vector: the blocks, each of
    unit length times its weight, side by side. These are fixed layers inside the returned model,
    so a saved encoder applies them to queries exactly as to the fitted images.
    """
    outputs = []
    for slot, (output, latents, weight) in enumerate(zip(encoder.outputs, blocks, weights)):
        if min(latents.shape[1], len(latents) - 1) >= 1:
            kernel, bias = fit_whitening(latents, dims, whitening, seed)
            project = keras.layers.Dense(kernel.shape[1], name=f"whiten_{slot}", trainable=False)
            output = project(output)
            project.set_weights([kernel, bias])
        output = keras.layers.UnitNormalization(name=f"unit_{slot}")(output)
        outputs.append(keras.layers.Rescaling(float(weight), name=f"weight_{slot}")(output))
    vector = keras.layers.Concatenate(name="descriptor")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(encoder.input, vector, name="encoder")
