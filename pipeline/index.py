"""The routed KNN index: a KNN per KMeans cluster, searched in the ``nprobe`` nearest clusters.

This is the idea of FAISS's IndexIVFFlat (``nlist`` clusters, ``nprobe`` probed per query):
probing few clusters is fast but can miss neighbours that lie across a cluster border, so
:func:`recall_curve` measures recall against exact search (``nprobe = nlist``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32 vectors as the index stores them: L2-normalised for the cosine metric."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, np.float32(1e-12))
    return vectors


@dataclass
class SearchHits:
    """Results of a batch of queries; rows are queries, columns are ranks (nearest first).

    Where the probed clusters hold fewer than ``n`` vectors, the row ends with id -1 and an
    infinite distance.
    """

    distances: np.ndarray  # (queries, n) float
    ids: np.ndarray  # (queries, n) int, positions in the indexed vectors
    probed: np.ndarray  # (queries, nprobe) int, the clusters searched, nearest first


class ClusteredIndex:
    """A scikit-learn KNN per cluster, with queries routed to their nearest clusters.

    Parameters: ``metric`` is ``"cosine"`` or ``"euclidean"``. Learned state after :meth:`fit`:
    ``centroids_`` (nlist, dim), ``assignments_`` (cluster of each indexed vector),
    ``members_`` (the vector ids of each cluster) and ``knn_`` (one NearestNeighbors per cluster).
    """

    def __init__(self, metric: str = "cosine"):
        self.metric = metric

    @property
    def nlist(self) -> int:
        return len(self.centroids_)

    @property
    def size(self) -> int:
        return len(self.assignments_)

    def fit(self, vectors: np.ndarray, centroids: np.ndarray, assignments: np.ndarray) -> "ClusteredIndex":
        """Index ``vectors``, cluster ``assignments[i]`` holding vector i."""
        vectors = prepare_vectors(vectors, self.metric)
        self.centroids_ = prepare_vectors(centroids, self.metric)
        self.assignments_ = np.asarray(assignments, dtype=np.int32)
        self.members_ = [np.flatnonzero(self.assignments_ == c) for c in range(len(self.centroids_))]
        self.knn_ = [
            NearestNeighbors(algorithm="brute", metric=self.metric).fit(vectors[members]) if len(members) else None
            for members in self.members_
        ]
        return self

    def resolve_nprobe(self, nprobe: int | str) -> int:
        """An nprobe setting ("all" or a count) as a count between 1 and nlist."""
        return self.nlist if nprobe == "all" else max(1, min(int(nprobe), self.nlist))

    def route(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` clusters nearest each (prepared) query, nearest first."""
        distances = pairwise_distances(queries, self.centroids_, metric=self.metric)
        return np.argsort(distances, axis=1, kind="stable")[:, :nprobe]

    def search(self, queries: np.ndarray, n: int, nprobe: int | str = "all") -> SearchHits:
        """The ``n`` nearest indexed vectors of each query among its ``nprobe`` nearest clusters.

        Queries are grouped by probed cluster, so each cluster is searched once per batch.
        """
        queries = prepare_vectors(np.atleast_2d(queries), self.metric)
        nprobe = self.resolve_nprobe(nprobe)
        probed = self.route(queries, nprobe)
        candidate_d = np.full((len(queries), nprobe * n), np.inf)
        candidate_i = np.full((len(queries), nprobe * n), -1, dtype=np.int64)
        for slot in range(nprobe):
            for cluster in np.unique(probed[:, slot]):
                rows = np.flatnonzero(probed[:, slot] == cluster)
                k = min(n, len(self.members_[cluster]))
                distances, local = self.knn_[cluster].kneighbors(queries[rows], n_neighbors=k)
                columns = slice(slot * n, slot * n + k)
                candidate_d[rows, columns] = distances
                candidate_i[rows, columns] = self.members_[cluster][local]
        best = np.lexsort((candidate_i, candidate_d), axis=1)[:, :n]  # by distance, then id
        distances = np.take_along_axis(candidate_d, best, axis=1)
        return SearchHits(np.maximum(distances, 0.0), np.take_along_axis(candidate_i, best, axis=1), probed)


def recall_curve(
    index: ClusteredIndex, queries: np.ndarray, query_ids: np.ndarray, k: int = 10
) -> dict[int, float]:
    """Recall@k of routed search against exact search for nprobe = 1, 2, 4, ... nlist.

    ``queries`` are indexed vectors (ids ``query_ids``); each query's own entry is left out of
    both result lists, so the figure is about its true neighbours only.
    """
    k = min(k, index.size - 1)
    if k < 1:
        return {index.nlist: 1.0}

    def neighbours(nprobe: int) -> np.ndarray:
        ids = index.search(queries, k + 1, nprobe).ids
        keep = ids != query_ids[:, None]
        return np.array([row[mask][:k] for row, mask in zip(ids, keep)])

    exact = neighbours(index.nlist)
    steps = sorted({min(2**i, index.nlist) for i in range(index.nlist.bit_length() + 1)})
    curve = {}
    for nprobe in steps:
        routed = neighbours(nprobe)
        hits = sum(len(np.intersect1d(r[r >= 0], e[e >= 0])) for r, e in zip(routed, exact))
        curve[nprobe] = hits / max(1, int((exact >= 0).sum()))
    return curve


def smallest_nprobe(curve: dict[int, float], target_recall: float) -> int:
    """The smallest nprobe of a recall curve that reaches ``target_recall`` (else the largest)."""
    for nprobe in sorted(curve):
        if curve[nprobe] >= target_recall:
            return nprobe
    return max(curve)
