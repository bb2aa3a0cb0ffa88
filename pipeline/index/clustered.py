"""The routed KNN index: exact KNN within the ``nprobe`` KMeans clusters nearest each query.

This is the idea of FAISS's IndexIVFFlat (``nlist`` clusters, ``nprobe`` probed per query):
probing few clusters is fast but can miss neighbours that lie across a cluster border, so
:func:`recall_curve` measures recall against exact search (``nprobe = nlist``) and
:meth:`ClusteredIndex.tune_nprobe` keeps the smallest nprobe that reaches a target recall.
The index's life after clustering lives here (:func:`pipeline.index.cluster.build_index` clusters and
tunes it): ``add`` and ``remove`` change it, ``to_arrays``/``from_arrays`` store it.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
from threadpoolctl import ThreadpoolController

from ..config import INDEX_DTYPES, METRICS
from .storage import HALF_TO_FLOAT, as_float32

# Numba's default threading layer must not launch parallel kernels from two threads at once, so callers of the
# parallel kernels take turns; a few queries run with NumPy in the caller's thread instead (_run).
_KERNEL_LOCK = threading.Lock()
PARALLEL_FROM = 16  # queries in a call from which the index's kernels run across the cores
RECALL_QUERIES = 500  # indexed vectors used as queries to measure recall against exact search
EXACT_SEARCH_BELOW = 2000  # "nprobe auto" searches every cluster below this many vectors
EXACT_BLOCK = 16384  # stored vectors scored at a time by recall_curve's exact search


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def centroid_scores(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Scores of each (prepared) centroid for each (prepared) vector that rank the centroids as the
    distance does, nearest lowest: -v.c for cosine, |c|^2 - 2 v.c for euclidean."""
    if len(vectors) < PARALLEL_FROM:  # too few for BLAS to start its threads
        products = vectors @ centroids.T
    else:  # one BLAS thread: idle OpenBLAS threads spinning beside Numba's workers halved search throughput
        with _blas().limit(limits=1, user_api="blas"):
            products = vectors @ centroids.T
    if metric == "cosine":
        return -products
    return np.einsum("ij,ij->i", centroids, centroids) - 2 * products


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray, metric: str, chunk: int = 8192) -> np.ndarray:
    """The nearest centroid of each (prepared) vector: the cluster a query equal to it probes first."""
    return np.concatenate([centroid_scores(vectors[i : i + chunk], centroids, metric).argmin(axis=1)
                           for i in range(0, len(vectors), chunk)] or [np.empty(0, np.int64)])


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


def _scan_few(queries, probed, vectors, table, norms, offsets, ids, n, cosine, out_scores, out_ids) -> None:
    """The ``n`` best (score, id) pairs of each of a few queries among its probed clusters, into
    ``out_scores`` and ``out_ids``, with NumPy: one matrix-vector product per probed cluster, read
    in place. Scores and ties as :func:`pipeline.index.kernels.scan_parallel` ranks them; its
    arguments too (``table`` is the kernel's: float16 ``vectors``, given as their bits, are converted here)."""
    half = vectors.dtype == np.uint16
    for q, query in enumerate(queries):
        scores, found = [np.zeros(0, np.float32)], [ids[:0]]  # none when every probed cluster is empty
        for cluster in probed[q]:
            start, stop = offsets[cluster], offsets[cluster + 1]
            if start == stop:  # an empty cluster, or one another shard holds
                continue
            block = as_float32(vectors[start:stop].view(np.float16)) if half else vectors[start:stop]
            dots = block @ query
            scores.append(-dots if cosine else norms[start:stop] - 2 * dots)
            found.append(ids[start:stop])
        scores, found = np.concatenate(scores), np.concatenate(found)
        if len(scores) > n:
            kept = np.argpartition(scores, n - 1)[:n]
            kept = np.union1d(kept, np.flatnonzero(scores == scores[kept].max()))  # ties at the border: smaller id
            scores, found = scores[kept], found[kept]
        order = np.lexsort((found, scores))[:n]
        out_scores[q, : len(order)], out_ids[q, : len(order)] = scores[order], found[order]


def _smallest_few(matrix: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest values of each row, smallest first (ties: lower index):
    the values up to the k-th smallest, found by a partition, then sorted (a full sort of a row of
    12,649 centroids took a millisecond, two thirds of a route)."""
    if k >= matrix.shape[1]:
        return np.argsort(matrix, axis=1, kind="stable")[:, :k]
    kth = np.partition(matrix, k - 1, axis=1)[:, k - 1]
    out = np.empty((len(matrix), k), np.int64)
    for number, (row, border) in enumerate(zip(matrix, kth)):
        kept = np.arange(len(row)) if np.isnan(border) else np.flatnonzero(row <= border)  # NaN: sorted last
        out[number] = kept[np.argsort(row[kept], kind="stable")[:k]]
    return out


def _run(kernel: str, few: Callable, queries: int, *args):
    """A search step over a batch of ``queries``: with NumPy, in the calling thread, for a few
    queries (a query process never loads Numba, and a service's requests run side by side); for a
    large batch, with the Numba kernel of :mod:`pipeline.index.kernels` of that name across every core
    (one caller at a time: Numba's threads serve one parallel kernel at a time)."""
    if queries < PARALLEL_FROM:
        return few(*args)
    from . import kernels  # Numba: loading its compiled kernels takes about half a second

    with _KERNEL_LOCK:
        return getattr(kernels, kernel)(*args)


class ClusteredIndex:
    """Vectors grouped by cluster, with queries routed to their ``nprobe`` nearest clusters.

    Each cluster's vectors lie next to each other in one contiguous array, so a probed cluster
    is scanned with one matrix product for every query of a batch that probes it (exact KNN
    within the cluster). Parameters, kept as given (as scikit-learn does): ``metric`` is
    ``"cosine"`` or ``"euclidean"``; ``nprobe`` a count, ``"all"`` or ``"auto"`` (the smallest
    count reaching a target recall, found by :meth:`tune_nprobe`); ``expansion`` what
    :meth:`search` uses when not told otherwise. Learned state after :meth:`fit`: ``nprobe_`` (the
    count searched when not told otherwise; tuned by :meth:`tune_nprobe`), ``centroids_`` (nlist, dim), ``assignments_`` (cluster of each indexed vector),
    ``vectors_`` (the vectors sorted by cluster), ``ids_`` (their original positions), ``rows_``
    (the row of ``vectors_`` holding each id) and ``offsets_`` (cluster c is rows
    ``offsets_[c]:offsets_[c + 1]``).
    """

    def __init__(self, metric: str = "cosine", nprobe: int | str = "all", expansion: int = 0, dtype: str = "float32"):
        self.metric = metric
        self.nprobe = nprobe
        self.expansion = expansion
        self.dtype = dtype

    @property
    def nlist(self) -> int:
        return len(self.centroids_)

    @property
    def size(self) -> int:
        return len(self.assignments_)

    @property
    def members_(self) -> list[np.ndarray]:
        """The original ids of the vectors of each cluster."""
        return [self.ids_[start:stop] for start, stop in zip(self.offsets_[:-1], self.offsets_[1:])]

    def fit(self, vectors: np.ndarray, centroids: np.ndarray,
            assign: Callable[[np.ndarray, np.ndarray, str], np.ndarray] = nearest_centroids) -> "ClusteredIndex":
        """Index ``vectors``, each in the cluster a query equal to it would probe first.

        ``assign(prepared vectors, prepared centroids, metric)`` finds those clusters: here by
        default, or where an engine runs (:mod:`pipeline.engines.engine`). Centroids that no vector is
        nearest to are dropped.
        """
        vectors = prepare_vectors(vectors, self.metric)
        self.centroids_ = prepare_vectors(centroids, self.metric)
        nearest = assign(vectors, self.centroids_, self.metric)
        used, assignments = np.unique(nearest, return_inverse=True)
        self.centroids_ = self.centroids_[used]
        self._lay_out(vectors, assignments)
        self.nprobe_ = self.nlist if self.nprobe == "auto" else self.resolve_nprobe(self.nprobe)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state beside the stored vectors (:attr:`vectors_`), as plain arrays: what a bundle stores."""
        return {"metric": np.array(self.metric), "centroids": self.centroids_, "assignments": self.assignments_,
                "norms": self.norms_, "nprobe": np.array(self.nprobe_),
                "expansion": np.array(self.expansion)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vectors: np.ndarray,
                    laid_out: Optional[np.ndarray] = None, check_vectors: bool = True) -> "ClusteredIndex":
        """An index rebuilt from :meth:`to_arrays` and the indexed vectors (in insertion order).

        ``laid_out``: the stored vectors as :attr:`vectors_` keeps them (prepared, in cluster
        order; a memory-mapped file), used as they are: nothing is copied into memory, and
        ``vectors`` only gives the count; ``check_vectors=False`` leaves checking that they are
        finite to the caller (an index shard checks the clusters it holds). Raises ValueError (or
        KeyError for a missing array) when
        they do not fit together.
        """
        centroids, assignments = np.asarray(arrays["centroids"], dtype=np.float32), np.asarray(arrays["assignments"])
        if not np.issubdtype(assignments.dtype, np.integer):
            raise ValueError(f"cluster assignments of type {assignments.dtype}")
        if laid_out is not None and (np.shape(laid_out) != np.shape(vectors) or len(arrays["norms"]) != len(vectors)):
            raise ValueError(f"stored vectors of shape {np.shape(laid_out)} and {len(arrays['norms'])} norms do not "
                             f"fit {np.shape(vectors)} embeddings")
        if centroids.ndim != 2 or np.shape(vectors)[1:] != centroids.shape[1:] or len(assignments) != len(vectors):
            raise ValueError(f"{len(assignments)} cluster assignments and centroids of shape {centroids.shape} "
                             f"do not fit {np.shape(vectors)} vectors")
        if len(assignments) and (assignments.min() < 0 or assignments.max() >= len(centroids)):
            raise ValueError("cluster assignments out of range")
        nprobe, expansion = int(arrays["nprobe"]), int(arrays["expansion"])
        if nprobe < 1 or expansion < 0:
            raise ValueError(f"nprobe {nprobe} and expansion {expansion} out of range")
        index = cls(str(arrays["metric"]), nprobe, expansion, "float32" if laid_out is None else str(laid_out.dtype))
        if index.metric not in METRICS:
            raise ValueError(f"metric {index.metric!r}, not one of {', '.join(METRICS)}")
        if index.dtype not in INDEX_DTYPES:
            raise ValueError(f"stored vectors of type {index.dtype}, not one of {', '.join(INDEX_DTYPES)}")
        if not (np.isfinite(centroids).all() and np.isfinite(arrays.get("norms", 0.0)).all()
                and (laid_out is None or not check_vectors or all(np.isfinite(laid_out[start : start + 65_536]).all()
                                             for start in range(0, len(laid_out), 65_536)))):
            raise ValueError("values that are not finite (NaN or infinity)")
        index.centroids_ = centroids
        index.nprobe_ = nprobe  # as stored; a search clamps it to the clusters there are
        if laid_out is None:
            index._lay_out(prepare_vectors(vectors, index.metric), assignments)
        else:
            index._lay_out(None, assignments, laid_out, np.asarray(arrays["norms"], dtype=np.float32))
        return index

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Index more vectors, each in its nearest cluster (no re-clustering); return their ids."""
        vectors = prepare_vectors(vectors, self.metric)
        old = self.stored_vectors()
        self._lay_out(np.concatenate([old, vectors]),
                      np.concatenate([self.assignments_, nearest_centroids(vectors, self.centroids_, self.metric)]))
        return np.arange(len(old), len(old) + len(vectors))

    def remove(self, ids: np.ndarray) -> None:
        """Drop the vectors ``ids``; the ids after them move down, so id order stays insertion order."""
        keep = np.ones(self.size, dtype=bool)
        keep[np.asarray(ids, dtype=np.int64)] = False
        self._lay_out(self.stored_vectors()[keep], self.assignments_[keep])

    def stored_vectors(self) -> np.ndarray:
        """The indexed (prepared) vectors in id order, as float32."""
        return self._stored(np.arange(self.size))

    def tune_nprobe(self, target_recall: float = 0.95, seed: int = 0) -> dict[int, float]:
        """Set ``nprobe_`` from the ``nprobe`` setting and return the recall@10 curve it was chosen from.

        The curve is measured on up to RECALL_QUERIES indexed vectors used as queries. With
        ``"auto"`` the smallest nprobe reaching ``target_recall`` is kept, or every cluster (exact
        search) below EXACT_SEARCH_BELOW vectors, where routing cannot pay off.
        """
        sample = np.sort(np.random.default_rng(seed).permutation(self.size)[:RECALL_QUERIES])
        curve = recall_curve(self, self._stored(sample), sample)
        if self.nprobe != "auto":
            self.nprobe_ = self.resolve_nprobe(self.nprobe)
        elif self.size < EXACT_SEARCH_BELOW:
            self.nprobe_ = self.nlist
        else:
            self.nprobe_ = smallest_nprobe(curve, target_recall)
        return curve

    def _lay_out(self, vectors: Optional[np.ndarray], assignments: np.ndarray, laid_out: Optional[np.ndarray] = None,
                 norms: Optional[np.ndarray] = None) -> None:
        """Store prepared vectors (in insertion order) sorted by cluster, with the offsets of each
        cluster; or take ``laid_out`` vectors already in that order, and their squared ``norms``."""
        self.assignments_ = np.asarray(assignments, dtype=np.int32)
        order = np.argsort(self.assignments_, kind="stable")
        self.ids_ = order.astype(np.int64)
        self.rows_ = np.empty_like(self.ids_)
        self.rows_[self.ids_] = np.arange(len(self.ids_))
        self.vectors_ = np.ascontiguousarray(vectors[order], dtype=self.dtype) if laid_out is None else laid_out
        if norms is None:
            stored = self.vectors_.astype(np.float32)  # the norms of the values as stored, float16 rounding included
            norms = np.einsum("ij,ij->i", stored, stored)
        self.norms_ = norms
        sizes = np.bincount(self.assignments_, minlength=len(self.centroids_))
        self.offsets_ = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def resolve_nprobe(self, nprobe: int | str) -> int:
        """An nprobe setting ("all" or a count) as a count between 1 and nlist."""
        return self.nlist if nprobe == "all" else max(1, min(int(nprobe), self.nlist))

    def route(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` clusters nearest each (prepared) query, nearest first."""
        scores = centroid_scores(queries, self.centroids_, self.metric)
        if nprobe == 1:
            return scores.argmin(axis=1)[:, None]
        return _run("smallest_parallel", _smallest_few, len(scores), scores, nprobe)

    def search(
        self,
        queries: np.ndarray,
        n: int,
        nprobe: int | str | None = None,
        expansion: int | None = None,
        exclude: np.ndarray | None = None,
    ) -> SearchHits:
        """The ``n`` nearest indexed vectors of each query among its ``nprobe`` nearest clusters.

        ``nprobe`` (a count or ``"all"``) defaults to the tuned ``nprobe_``, ``expansion`` to the index's own. With ``expansion`` > 0 (average
        query expansion), each query is first averaged with its ``expansion`` nearest indexed
        vectors, leaving out the ids in its row of ``exclude`` (queries, m; -1 pads), and the
        neighbours are ranked by their distance to that average, but for the nearest to the query
        itself, which stays first, at its distance to the query: expansion raises precision@10 and
        would otherwise cost the best hit (docs/QUALITY.md). The distances returned are the ones
        ranked by, so they never decrease along a row after the first. Queries are scanned in
        parallel, each over its probed clusters' contiguous vectors.
        """
        queries = prepare_vectors(np.atleast_2d(queries), self.metric)
        nprobe = self.resolve_nprobe(self.nprobe_ if nprobe is None else nprobe)
        expansion = self.expansion if expansion is None else expansion
        if not expansion:
            return self._search_prepared(queries, n, nprobe)
        exclude = np.full((len(queries), 0), -1) if exclude is None else np.atleast_2d(exclude)
        first = self._search_prepared(queries, expansion + exclude.shape[1], nprobe)
        usable = (first.ids >= 0) & ~(first.ids[:, :, None] == exclude[:, None, :]).any(axis=2)
        used = usable & (np.cumsum(usable, axis=1) <= expansion)
        neighbours = self._stored(first.ids) * used[:, :, None]
        expanded = prepare_vectors((queries + neighbours.sum(axis=1)) / (1 + used.sum(axis=1, keepdims=True)),
                                   self.metric)
        return _nearest_first(self._search_prepared(expanded, n, nprobe), first, usable)

    def _search_prepared(self, queries: np.ndarray, n: int, nprobe: int) -> SearchHits:
        probed = self.route(queries, nprobe)
        scores, ids = self.scan(queries, probed, n)
        ids[~np.isfinite(scores)] = -1  # fewer than n vectors in the probed clusters
        return SearchHits(self._distances(scores, queries), ids, probed)

    def scan(self, queries: np.ndarray, probed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best (scores, ids) of each prepared query among its ``probed`` clusters (queries,
        nprobe), best first by (score, id), padded with (inf, the largest int64); a probed cluster
        ``nlist`` is empty (how a shard skips the clusters it does not hold, :mod:`pipeline.search.shards`)."""
        scores = np.full((len(queries), n), np.inf, dtype=np.float32)
        ids = np.full((len(queries), n), np.iinfo(np.int64).max, dtype=np.int64)
        half = self.vectors_.dtype == np.float16
        offsets = np.append(self.offsets_, self.offsets_[-1])  # cluster nlist: empty
        _run("scan_parallel", _scan_few, len(queries), queries, np.asarray(probed, np.int64),
             self.vectors_.view(np.uint16) if half else self.vectors_, HALF_TO_FLOAT if half else HALF_TO_FLOAT[:0],
             self.norms_, offsets, self.ids_, n, self.metric == "cosine", scores, ids)
        order = np.lexsort((ids, scores), axis=1)
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def distances_to(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Distances (queries, m) from each query to the indexed vectors ``ids[i]`` (inf where -1)."""
        queries = prepare_vectors(np.atleast_2d(queries), self.metric)
        ids = np.atleast_2d(ids)
        vectors = self._stored(ids)
        if self.metric == "cosine":
            distances = np.maximum(1.0 - np.einsum("qmd,qd->qm", vectors, queries), 0.0)
        else:
            distances = np.linalg.norm(vectors - queries[:, None], axis=2)
        return np.where(ids >= 0, distances, np.inf).astype(np.float32)

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """The stored (prepared) vectors of ``ids``, any shape; -1 gives some vector, to be masked."""
        return self.vectors_[self.rows_[np.maximum(ids, 0)]].astype(np.float32, copy=False)

    def _distances(self, scores: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Ranking scores to distances: ``-q.x`` to cosine distance, ``|x|^2 - 2 q.x`` to euclidean."""
        if self.metric == "cosine":
            return np.maximum(1.0 + scores, 0.0)
        return np.sqrt(np.maximum(scores + np.einsum("ij,ij->i", queries, queries)[:, None], 0.0))


def nearest_of_rows(hits: SearchHits, first: SearchHits, usable: np.ndarray) -> Iterator[tuple[int, int, float,
                                                                                                   np.ndarray]]:
    """For each row of ``hits`` whose query has a usable neighbour in ``first``: (the row, the id
    nearest to the query itself, its distance to the query, the mask of the row's other ids)."""
    for row in range(len(hits.ids)):
        columns = np.flatnonzero(usable[row])
        if len(columns):
            nearest = first.ids[row, columns[0]]
            yield row, nearest, first.distances[row, columns[0]], hits.ids[row] != nearest


def _nearest_first(hits: SearchHits, first: SearchHits, usable: np.ndarray) -> SearchHits:
    """``hits`` with, in each row, the first usable id of ``first`` (the nearest to the query itself)
    moved to the front at its own distance, the others after it in their order."""
    ids, distances = hits.ids.copy(), hits.distances.copy()
    for row, nearest, distance, keep in nearest_of_rows(hits, first, usable):
        rest_ids, rest_distances = ids[row][keep], distances[row][keep]
        ids[row] = np.concatenate([[nearest], rest_ids])[: ids.shape[1]]
        distances[row] = np.concatenate([[distance], rest_distances])[: ids.shape[1]]
    return SearchHits(distances, ids, hits.probed)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """The share of the true neighbours (rows of ``truth``) that appear in the same rows of
    ``found``; -1 entries (no neighbour) are ignored in both."""
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((np.asarray(truth) >= 0).sum()))


def recall_curve(
    index: ClusteredIndex, queries: np.ndarray, query_ids: np.ndarray, k: int = 10
) -> dict[int, float]:
    """Recall@k of routed search against exact search for nprobe = 1, 2, 4, ... nlist, without
    query expansion.

    ``queries`` are indexed vectors (ids ``query_ids``); each query's own entry is left out of
    both result lists, so the figure is about its true neighbours only. A true neighbour is in a
    routed search's answer exactly when its cluster is among the query's ``nprobe`` nearest (the
    probed vectors are a subset of all, so it ranks no lower among them), so one exact search and
    the routing order give the whole curve: with NumPy, no search per nprobe and no Numba to load.
    """
    k = min(k, index.size - 1)
    if k < 1:
        return {index.nlist: 1.0}
    queries = prepare_vectors(np.atleast_2d(queries), index.metric)
    order = np.argsort(centroid_scores(queries, index.centroids_, index.metric), axis=1, kind="stable")
    rank_of_cluster = np.empty_like(order)
    np.put_along_axis(rank_of_cluster, order, np.broadcast_to(np.arange(index.nlist), order.shape), axis=1)
    ranks = np.take_along_axis(rank_of_cluster, _true_neighbour_clusters(index, queries, query_ids, k), axis=1)
    steps = sorted({min(2**i, index.nlist) for i in range(index.nlist.bit_length() + 1)})
    return {nprobe: float((ranks < nprobe).mean()) for nprobe in steps}


def _true_neighbour_clusters(index: ClusteredIndex, queries: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """The clusters of the ``k`` nearest indexed vectors of each (prepared) query by exact search,
    its own vector left out: matrix products over the stored vectors, EXACT_BLOCK rows at a time."""
    cluster_of_row = np.repeat(np.arange(index.nlist), np.diff(index.offsets_))
    own_rows = index.rows_[query_ids]
    best_scores = np.full((len(queries), k), np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    for start in range(0, index.size, EXACT_BLOCK):
        stop = min(start + EXACT_BLOCK, index.size)
        block = index.vectors_[start:stop]
        dots = queries @ as_float32(block).T
        scores = -dots if index.metric == "cosine" else index.norms_[start:stop] - 2 * dots
        here = np.flatnonzero((own_rows >= start) & (own_rows < stop))
        scores[here, own_rows[here] - start] = np.inf
        scores = np.concatenate([best_scores, scores], axis=1)
        block_rows = np.broadcast_to(np.arange(start, stop), (len(queries), stop - start))
        rows = np.concatenate([best_rows, block_rows], axis=1)
        kept = np.argpartition(scores, k - 1, axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, kept, axis=1), np.take_along_axis(rows, kept, axis=1)
    return cluster_of_row[best_rows]


def smallest_nprobe(curve: dict[int, float], target_recall: float) -> int:
    """The smallest nprobe of a recall curve that reaches ``target_recall`` (else the largest)."""
    for nprobe in sorted(curve):
        if curve[nprobe] >= target_recall:
            return nprobe
    return max(curve)
