"""The index's Numba kernels, for large batches of queries across every core (:func:`pipeline.index.clustered._run`).

Loaded only when a batch is large (evaluation, tuning nprobe, finding duplicates): a process that
answers single queries never imports Numba, whose compiled kernels take about half a second to
load even from its cache. A few queries take the NumPy path in :mod:`pipeline.index.clustered`, which ranks
alike: scores ``-q.x`` for cosine and ``|x|^2 - 2 q.x`` for euclidean, ties to the smaller id.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload


def _value(stored, table):  # pragma: no cover  (compiled by Numba through the overload below)
    """A stored vector element as a float: itself, or for float16 (passed as its uint16 bits) its value."""


@overload(_value)
def _value_of(stored, table):  # pragma: no cover
    if isinstance(stored, types.Integer):  # Numba has no float16: the bits index a table of every value
        return lambda stored, table: table[stored]
    return lambda stored, table: stored


@numba.njit(fastmath=True, cache=True, nogil=True)
def _scan_query(q, queries, probed, vectors, table, norms, offsets, ids, n, cosine, best_s, best_i):  # pragma: no cover
    """The ``n`` best (score, id) pairs of query ``q`` among its probed clusters, into ``best_s`` and ``best_i``.

    Ties go to the smaller id, so the result is the same whatever order the clusters are scanned in.
    ``vectors`` are float32, or float16 given as their uint16 bits with ``table`` their values.
    """
    worst = 0  # slot of the worst kept pair
    for p in range(probed.shape[1]):
        cluster = probed[q, p]
        for row in range(offsets[cluster], offsets[cluster + 1]):
            dot = np.float32(0.0)
            for j in range(queries.shape[1]):
                dot += queries[q, j] * _value(vectors[row, j], table)
            score = -dot if cosine else norms[row] - 2 * dot
            if score < best_s[worst] or (score == best_s[worst] and ids[row] < best_i[worst]):
                best_s[worst], best_i[worst] = score, ids[row]
                for t in range(n):
                    if best_s[t] > best_s[worst] or (best_s[t] == best_s[worst] and best_i[t] > best_i[worst]):
                        worst = t


@numba.njit(parallel=True, cache=True)
def scan_parallel(queries, probed, vectors, table, norms, offsets, ids, n, cosine, out_scores, out_ids):  # pragma: no cover
    """:func:`_scan_query` for each query, in parallel."""
    for q in numba.prange(queries.shape[0]):
        _scan_query(q, queries, probed, vectors, table, norms, offsets, ids, n, cosine, out_scores[q], out_ids[q])


@numba.njit(cache=True, nogil=True)
def _smallest_row(row, k):  # pragma: no cover
    """Column indices of the ``k`` smallest values of ``row``, smallest first (ties: lower index)."""
    if k * 8 >= row.shape[0]:  # a large share of the row: sort it
        return np.argsort(row, kind="mergesort")[:k]
    best = np.full(k, np.inf)  # else keep the k best by insertion, one pass over the row
    best_i = np.full(k, -1, dtype=np.int64)
    for c in range(row.shape[0]):
        value = row[c]
        if value < best[k - 1]:
            t = k - 1
            while t > 0 and best[t - 1] > value:
                best[t], best_i[t] = best[t - 1], best_i[t - 1]
                t -= 1
            best[t], best_i[t] = value, c
    return best_i


@numba.njit(parallel=True, cache=True)
def smallest_parallel(matrix, k):  # pragma: no cover
    """:func:`_smallest_row` of each row, in parallel."""
    out = np.empty((matrix.shape[0], k), dtype=np.int64)
    for r in numba.prange(matrix.shape[0]):
        out[r] = _smallest_row(matrix[r], k)
    return out
