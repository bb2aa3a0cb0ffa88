"""KMeans over the latent vectors, and the choice of the number of clusters."""

from __future__ import annotations

import math
import warnings
from typing import Union

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning


def choose_cluster_count(n_images: int, requested: Union[int, str] = "auto") -> int:
    """The number of clusters to fit: ``requested``, or about sqrt(n) with at least ~10 images
    per cluster for ``"auto"``; never more clusters than images."""
    if n_images < 1:
        raise ValueError("cannot cluster zero images")
    if requested == "auto":
        return max(1, min(round(math.sqrt(n_images)), n_images // 10))
    return max(1, min(int(requested), n_images))


def fit_kmeans(vectors: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """KMeans centroids (float32) and each vector's cluster id.

    Clusters left empty (possible when vectors repeat) are dropped and the ids renumbered, so
    every returned cluster has at least one member.
    """
    with warnings.catch_warnings():  # "fewer distinct clusters than n_clusters": handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed).fit(vectors)
    used, assignments = np.unique(kmeans.labels_, return_inverse=True)
    return kmeans.cluster_centers_[used].astype(np.float32), assignments.astype(np.int32)
