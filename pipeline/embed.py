"""The encoder turns model-input images into latent vectors, the same way at fit and query time."""

from __future__ import annotations

import keras
import numpy as np
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
