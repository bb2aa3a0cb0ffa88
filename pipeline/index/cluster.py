"""KMeans over the latent vectors, the choice of the number of clusters (nlist), and the routed index built on them
with a fit's settings."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Union

import numpy as np

from ..config import FitConfig
from .clustered import ClusteredIndex, nearest_centroids, prepare_vectors

TRAINING_POINTS_PER_CLUSTER = 64  # KMeans learns from at most this many points per cluster (FAISS warns below 39)
MINIBATCH_FROM = 10_000  # training points from which MiniBatchKMeans with one random start is used
MIN_CLUSTER_SIZE = 40  # average vectors per cluster that "auto" keeps at least


def choose_cluster_count(n_images: int, requested: Union[int, str] = "auto") -> int:
    """The number of clusters: ``requested``, or for ``"auto"`` about 4 sqrt(n) (the FAISS rule
    of thumb for IVF indexes) with at least ~40 vectors per cluster; never more than the images."""
    if n_images < 1:
        raise ValueError("cannot cluster zero images")
    if requested == "auto":
        return max(1, min(round(4 * math.sqrt(n_images)), n_images // MIN_CLUSTER_SIZE))
    return max(1, min(int(requested), n_images))


def fit_kmeans(vectors: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """KMeans centroids (float32), learned on a random sample of at most
    TRAINING_POINTS_PER_CLUSTER points per cluster (MiniBatchKMeans for large samples)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans  # half a second to import: only where a clustering runs
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(seed)
    sample_size = min(len(vectors), TRAINING_POINTS_PER_CLUSTER * n_clusters)
    sample = vectors if sample_size == len(vectors) else vectors[rng.choice(len(vectors), sample_size, replace=False)]
    if sample_size >= MINIBATCH_FROM:
        # k-means++ seeding costs 10x the whole fit here (61 s vs 6 s at 100,000 x 64, 1,265 clusters)
        model = MiniBatchKMeans(n_clusters, init="random", n_init=1, batch_size=4096, random_state=seed)
    else:
        model = KMeans(n_clusters, n_init="auto", random_state=seed)
    with warnings.catch_warnings():  # repeated vectors can leave clusters empty: the index drops those
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(sample)
    return model.cluster_centers_.astype(np.float32)


def build_index(vectors: np.ndarray, config: FitConfig,
                assign: Callable[[np.ndarray, np.ndarray, str], np.ndarray] = nearest_centroids
                ) -> tuple[ClusteredIndex, dict[int, float]]:
    """Cluster ``vectors`` with KMeans (learned on a sample), index them (``assign``: see
    :meth:`ClusteredIndex.fit`), tune nprobe: the index and its recall@10 curve."""
    index = ClusteredIndex(config.metric, config.nprobe, config.query_expansion, config.index_dtype)
    prepared = prepare_vectors(vectors, config.metric)
    centroids = fit_kmeans(prepared, choose_cluster_count(len(prepared), config.clusters), config.seed)
    index.fit(vectors, centroids, assign)  # prepares them itself: once, as a bundle's load does
    return index, index.tune_nprobe(config.target_recall, config.seed)
