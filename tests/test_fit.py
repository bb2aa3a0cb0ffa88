"""Indexing choices made at fit time: the number of clusters and the tuned nprobe."""

import numpy as np

from conftest import tiny_config
from pipeline.fit import index_embeddings
from test_index import gaussian_mixture


def recall(index, queries, nprobe, k=10):
    routed = index.search(queries, k, nprobe).ids
    exact = index.search(queries, k, "all").ids
    return np.mean([len(np.intersect1d(r, e)) / k for r, e in zip(routed, exact)])


def test_auto_nprobe_reaches_its_target_on_held_out_queries():
    data = gaussian_mixture(n=8300, dim=32, centers=60, seed=3)
    indexed, held_out = data[:8000], data[8000:]
    config = tiny_config(target_recall=0.9)
    index, nprobe, curve = index_embeddings(indexed, config)
    assert index.nlist == 200  # min(4 sqrt(8000) = 358, 8000 / 40)
    assert 1 < nprobe < index.nlist and curve[nprobe] >= 0.9
    # 300 unseen queries x 10 neighbours: a standard error of about 0.005 on the measured recall
    assert recall(index, held_out, nprobe) >= 0.9 - 0.02
    smaller = max(p for p in curve if p < nprobe)
    assert curve[smaller] < 0.9  # and it is the smallest that does


def test_small_sets_search_every_cluster():
    index, nprobe, _ = index_embeddings(gaussian_mixture(n=500), tiny_config())
    assert index.nlist == 12 and nprobe == 12
