"""PCA whitening as an affine map: how each block of the descriptor is projected (fit) and how evaluate reads a block alone."""

from __future__ import annotations

import numpy as np


def fit_whitening(latents: np.ndarray, dims: int, whitening: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PCA whitening learned on ``latents`` as an affine map: ``latents @ kernel + bias``.

    It centres, rotates onto the principal axes, keeps at most ``dims`` of them and divides each by
    its variance ** (whitening / 2): 1 gives unit variance on every axis (full whitening), 0 keeps
    PCA's scale.
    """
    from sklearn.decomposition import PCA  # half a second to import: only where a projection is learned

    pca = PCA(min(dims, latents.shape[1], len(latents) - 1), random_state=seed).fit(latents)
    kernel = (pca.components_.T / np.maximum(pca.explained_variance_, 1e-12) ** (whitening / 2)).astype(np.float32)
    return kernel, (-pca.mean_ @ kernel).astype(np.float32)
