"""The index sharded by its own clusters: which shard holds which clusters, what a shard scans, and
the router's index that sends a query only to the shards owning its probed clusters.

A query is routed to its ``nprobe`` nearest clusters (:meth:`ClusteredIndex.route`); a cluster's
vectors lie together in the bundle's ``index_vectors.npy``. So a shard is a set of whole clusters
(:func:`shard_plan`: spread so that every shard holds about the same number of vectors), read
into the shard's memory, and :class:`ShardScanner` scans, for each query, the probed clusters its
shard owns, exactly as the whole index scans them: the same products, the same ``n`` best by
(score, id). The router's :class:`ShardedIndex` routes, asks each shard it needs for its ``n``
best, and keeps the ``n`` best of their answers by (score, id): the answer of one index over all the clusters, ids and
distances, to the last bit. Everything else a search does (query expansion, the distances of the
results to the query) reads a few vectors, which the router reads from the bundle's memory-mapped
file itself.

Which bundle a shard answers from is named in every call (its folder): a query is answered wholly
from one bundle version, whatever is committed meanwhile (:mod:`pipeline.serve.ray_server`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle.artifacts import load_index
from ..errors import ArtifactError
from ..index.clustered import ClusteredIndex

SHARD_BYTES = 1536 * 2**20  # vector bytes a shard holds by default: its RSS under 2 GB (1.56 GB measured for 1.2 GiB)

# the router's call to the shards: (bundle folder, prepared queries, n, {shard: the probed clusters it owns, the
# others replaced by nlist (an empty cluster)}) -> {shard: (scores, ids)}, every shard's answer or an error
FanOut = Callable[[str, np.ndarray, int, dict[int, np.ndarray]], dict[int, tuple[np.ndarray, np.ndarray]]]


def default_shards(index: ClusteredIndex) -> int:
    """Shards for ``index`` when none are asked for: one for every SHARD_BYTES of its vectors."""
    return max(1, math.ceil(index.size * index.centroids_.shape[1] * np.dtype(index.dtype).itemsize / SHARD_BYTES))


def shard_plan(sizes: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each cluster (``sizes``: the vectors of each): whole clusters, the largest first,
    each to the shard holding the fewest vectors so far (ties: the lower shard), so that the shards
    hold about the same number of vectors. Deterministic: every process computes the same plan."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    owner, held = np.zeros(len(sizes), np.int64), np.zeros(shards, np.int64)
    for cluster in np.lexsort((np.arange(len(sizes)), -np.asarray(sizes))):
        owner[cluster] = shard = int(np.argmin(held))
        held[shard] += sizes[cluster]
    return owner


class ShardScanner:
    """Shard ``shard`` of ``shards`` of the bundle in ``folder``: its clusters' vectors, read from
    the bundle's memory-mapped file into memory of its own (checked finite), in cluster order; the
    other clusters' vectors are never read.

    Why a copy and not the mapping itself: a shard would map other shards' pages too. On the
    machine measured (docs/BENCHMARKS.md, bench_ray_serve) the kernel reads ahead 8 MB around a
    fault and maps page-cache folios whole, so that scanning a quarter of a 5 GB file gave each of 4
    shards 4.3 GB of resident pages. The copy holds exactly the shard's share, and a scan faults no
    page."""

    def __init__(self, folder: str | Path, shard: int, shards: int):
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} of {shards}")
        self.folder, self.shard, self.shards = Path(folder), shard, shards
        whole = load_index(self.folder, check_vectors=False)
        sizes = np.diff(whole.offsets_)
        self.clusters = np.flatnonzero(shard_plan(sizes, shards) == shard)
        self.owns = np.zeros(len(sizes) + 1, bool)  # by cluster, and nlist (none) last
        self.owns[self.clusters] = self.owns[-1] = True
        held = np.zeros_like(sizes)
        held[self.clusters] = sizes[self.clusters]
        offsets = np.concatenate([[0], np.cumsum(held)]).astype(np.int64)  # the others: empty
        rows = np.concatenate([np.arange(whole.offsets_[c], whole.offsets_[c + 1]) for c in self.clusters]
                              or [np.zeros(0, np.int64)])
        self.vectors = len(rows)
        self.index = ClusteredIndex(whole.metric, whole.nprobe_, whole.expansion, whole.dtype)
        self.index.centroids_, self.index.offsets_ = whole.centroids_, offsets
        self.index.ids_, self.index.norms_ = whole.ids_[rows], whole.norms_[rows]
        self.index.vectors_ = np.empty((len(rows), whole.vectors_.shape[1]), whole.vectors_.dtype)
        for cluster in self.clusters:  # one contiguous read a cluster
            self.index.vectors_[offsets[cluster] : offsets[cluster + 1]] = \
                whole.vectors_[whole.offsets_[cluster] : whole.offsets_[cluster + 1]]
        if not np.isfinite(self.index.vectors_).all():
            raise ArtifactError(f"{self.folder}: the index's vectors hold values that are not finite (NaN or "
                                f"infinity); fit again")

    def scan(self, queries: np.ndarray, probed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best (scores, ids) of each prepared query among its probed clusters (queries,
        nprobe) that this shard owns; ValueError for a cluster it does not own (nlist: none)."""
        probed = np.asarray(probed, np.int64)
        owned = self.owns[np.clip(probed, 0, self.index.nlist)] & (probed >= 0) & (probed <= self.index.nlist)
        if not owned.all():
            raise ValueError(f"shard {self.shard} of {self.shards} does not hold clusters "
                             f"{sorted(set(probed[~owned].tolist()))[:5]}")
        return self.index.scan(np.asarray(queries, np.float32), probed, n)


class ShardedIndex(ClusteredIndex):
    """The router's index: the bundle's index as loaded (centroids, assignments, the vectors
    memory-mapped but for the scans never read), whose scans are done by the shards through
    ``fan_out``, each shard asked only for the queries' probed clusters it owns."""

    def __init__(self, index: ClusteredIndex, folder: str | Path, shards: int, fan_out: FanOut):
        super().__init__(index.metric, index.nprobe, index.expansion, index.dtype)
        self.__dict__.update({name: value for name, value in vars(index).items() if name.endswith("_")})
        self.folder, self.shards, self.fan_out = str(folder), shards, fan_out
        self.owner_ = shard_plan(np.diff(self.offsets_), shards)

    def shard_sizes(self) -> list[dict[str, int]]:
        """The clusters and vectors of each shard."""
        sizes = np.diff(self.offsets_)
        return [{"shard": shard, "clusters": int((self.owner_ == shard).sum()),
                 "vectors": int(sizes[self.owner_ == shard].sum())} for shard in range(self.shards)]

    def scan(self, queries: np.ndarray, probed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best (scores, ids) of each query: every shard owning one of its probed clusters
        asked for its ``n`` best there, their answers merged by (score, id)."""
        owners = self.owner_[probed]
        asked = {int(shard): np.where(owners == shard, probed, self.nlist) for shard in np.unique(owners)}
        answers = self.fan_out(self.folder, queries, n, asked)
        scores = np.concatenate([answers[shard][0] for shard in asked], axis=1)
        ids = np.concatenate([answers[shard][1] for shard in asked], axis=1)
        order = np.lexsort((ids, scores), axis=1)[:, :n]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def local_fan_out(scanners: dict[int, ShardScanner]) -> FanOut:
    """A fan-out to shards in this process (tests, benchmarks): the folder must be theirs."""
    def fan_out(folder: str, queries: np.ndarray, n: int, asked: dict[int, np.ndarray]):
        if any(str(scanner.folder) != folder for scanner in scanners.values()):
            raise ArtifactError(f"{folder}: the shards hold another bundle")
        return {shard: scanners[shard].scan(queries, probed, n) for shard, probed in asked.items()}
    return fan_out

