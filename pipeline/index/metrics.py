"""Retrieval metrics, pure functions of neighbour ids and labels (no images, no models).

Every image is a query against all the others (itself excluded); a neighbour is relevant when it
has the query's label.

- precision@k: the share of the k nearest neighbours that are relevant; precision@1, whether the
  nearest one is.
- mAP@k: the mean over queries of AP@k = (1 / min(k, R)) * sum over ranks i <= k of
  precision@i * [neighbour i is relevant], R being the number of other images with the query's label.

Recall of routed against exact search is :func:`pipeline.index.clustered.recall_at_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean share of relevant neighbours; ``neighbour_labels`` is (queries, k)."""
    return float((neighbour_labels == query_labels[:, None]).mean())


def map_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, relevant_counts: np.ndarray) -> float:
    """Mean average precision over the top k (see the module docstring)."""
    relevant = neighbour_labels == query_labels[:, None]
    k = relevant.shape[1]
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominators = np.minimum(k, relevant_counts)
    ap = np.where(denominators > 0, (precision_at_i * relevant).sum(axis=1) / np.maximum(denominators, 1), 0.0)
    return float(ap.mean())


def exact_neighbours(features: np.ndarray, k: int, metric: str = "cosine", block: int = 2048,
                     with_distances: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Ids of the k nearest other rows of ``features`` (leave-one-out, brute force, in row blocks);
    ``with_distances``: (ids, their distances), cosine as 1 - the cosine, L2 as the norm.

    Computed as ``shared/tools/baseline.py`` does: cosine as the dot product of unit vectors, L2
    as |a|^2 + |b|^2 - 2 a.b in float32, the query's own row excluded; nearest first.
    """
    features = np.asarray(features, dtype=np.float32)
    if metric == "cosine":
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    squares = np.einsum("ij,ij->i", features, features)
    k = min(k, len(features) - 1)
    ids = np.empty((len(features), k), dtype=np.int64)
    found = np.empty((len(features), k), dtype=np.float32)
    for start in range(0, len(features), block):
        rows = slice(start, min(start + block, len(features)))
        products = features[rows] @ features.T
        distances = -products if metric == "cosine" else squares[rows, None] + squares[None, :] - 2 * products
        distances[np.arange(distances.shape[0]), np.arange(rows.start, rows.stop)] = np.inf
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
        ids[rows] = np.take_along_axis(nearest, order, axis=1)
        found[rows] = np.take_along_axis(distances, ids[rows], axis=1)
    if not with_distances:
        return ids
    return ids, (1.0 + found if metric == "cosine" else np.sqrt(np.maximum(found, 0.0)))


def without_self(ids: np.ndarray, k: int) -> np.ndarray:
    query_ids = np.arange(len(ids))[:, None]
    return np.array([row[row != q][:k] for row, q in zip(ids, query_ids)])


@dataclass
class LabelledSet:
    """Scores neighbour ids against the labels of a leave-one-out evaluation."""

    labels: np.ndarray
    relevant_counts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> "LabelledSet":
        labels = np.asarray(labels)
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        return cls(labels, counts[inverse] - 1)

    def score(self, neighbour_ids: np.ndarray) -> dict[str, float]:
        neighbour_labels = self.labels[neighbour_ids]
        return {
            "precision_at_1": round(precision_at_k(neighbour_labels[:, :1], self.labels), 4),
            "precision_at_k": round(precision_at_k(neighbour_labels, self.labels), 4),
            "map_at_k": round(map_at_k(neighbour_labels, self.labels, self.relevant_counts), 4),
        }
