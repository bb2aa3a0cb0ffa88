import numpy as np
import pytest

from pipeline.index.cluster import choose_cluster_count, fit_kmeans


@pytest.mark.parametrize("n, expected", [(1, 1), (50, 1), (200, 5), (5000, 125), (100_000, 1265), (1_000_000, 4000)])
def test_auto_cluster_count_is_about_4_sqrt_n_with_40_per_cluster_at_least(n, expected):
    assert choose_cluster_count(n) == expected


def test_requested_count_never_exceeds_the_images():
    assert choose_cluster_count(3, 10) == 3
    assert choose_cluster_count(100, 10) == 10


def test_kmeans_learned_on_a_sample_finds_every_true_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (8, 4))
    vectors = (centres[rng.integers(0, 8, 20_000)] + rng.normal(0, 0.5, (20_000, 4))).astype(np.float32)
    centroids = fit_kmeans(vectors, 8, seed=0)  # 8 x 256 = 2,048 training points
    assert centroids.shape == (8, 4) and centroids.dtype == np.float32
    nearest = ((centres[:, None, :] - centroids[None]) ** 2).sum(-1).min(axis=1)
    assert nearest.max() < 0.1  # each true centre has a learned centroid next to it


def test_minibatch_kmeans_for_large_training_samples():
    vectors = np.random.default_rng(1).normal(size=(30_000, 8)).astype(np.float32)
    assert fit_kmeans(vectors, 50, seed=0).shape == (50, 8)  # 12,800 training points: MiniBatchKMeans
