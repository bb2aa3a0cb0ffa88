"""The Searcher: answers queries by image bytes, file, URL or indexed id over a loaded bundle."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np

from .artifacts import Bundle, Catalog
from .embed import BatchingEncoder
from .errors import InputError
from .fetch import fetch_url
from .images import MAX_PIXELS, content_hash, prepare_image, read_file
from .index import ClusteredIndex


@dataclass
class Neighbor:
    """One result: an indexed image, its distance to the query and where it lives."""

    rank: int
    id: int  # the image's row in the catalog: how the server names it
    path: str
    distance: float  # what the results are ranked by: to the expanded query (to the query itself without expansion)
    query_distance: float  # to the query itself
    cluster: int
    label: Optional[str]
    same_image: bool  # byte-identical to the query (the query itself, when it is indexed)


@dataclass
class SearchResult:
    query: str
    nprobe: int
    clusters: list[int]  # the clusters probed, nearest first
    results: list[Neighbor]
    expansion: int = 0  # first neighbours averaged into the query to rank the others

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Answers "which indexed images look most like this one?" for a fitted :class:`Bundle`.

    Safe to share between threads. With ``batch_window_ms`` > 0 (the service), queries arriving
    together are encoded in one call (:class:`pipeline.embed.BatchingEncoder`). :meth:`use` swaps
    in a changed bundle of the same encoder (after a removal) while queries run: each query sees
    one bundle, the old or the new.
    """

    def __init__(self, bundle: Bundle, max_pixels: int = MAX_PIXELS, batch_window_ms: float = 0.0):
        self.image_size = bundle.settings.image_size
        self.max_pixels = max_pixels
        self._encoder = BatchingEncoder(bundle.encoder, batch_window_ms)
        self.use(bundle)

    def use(self, bundle: Bundle) -> None:
        """Answer from ``bundle`` from now on (the same encoder; its catalog and index may differ)."""
        copies: dict[str, list[int]] = defaultdict(list)  # content hash -> ids of the indexed copies
        for image_id, content in enumerate(bundle.catalog.hashes):
            copies[content].append(image_id)
        self._state = (bundle, dict(copies))  # one assignment: a query reads both or neither

    @property
    def bundle(self) -> Bundle:
        return self._state[0]

    @property
    def catalog(self) -> Catalog:
        return self._state[0].catalog

    @property
    def index(self) -> ClusteredIndex:
        return self._state[0].index

    def search_file(self, path: Union[str, os.PathLike], **options) -> SearchResult:
        return self.search_bytes(read_file(path), str(path), **options)

    def search_url(self, url: str, **options) -> SearchResult:
        return self.search_bytes(fetch_url(url), url, **options)

    def search_bytes(self, data: bytes, source: str, **options) -> SearchResult:
        """Search with an encoded image (options as in :meth:`search_vector`)."""
        image = prepare_image(data, source, self.image_size, self.max_pixels)
        vector = self._encoder.embed(image)
        return self.search_vector(vector, content_hash(data), source, **options)

    def search_indexed(self, image_id: int, **options) -> SearchResult:
        """Search with an indexed image, by its id (its row in the catalog), using its stored vector."""
        bundle = self.bundle
        return self.search_vector(np.asarray(bundle.embeddings[image_id]), bundle.catalog.hashes[image_id],
                                  bundle.catalog.paths[image_id], **options)

    def search_vector(
        self,
        vector: np.ndarray,
        query_hash: str,
        source: str,
        n: int = 10,
        nprobe: Union[int, str, None] = None,
        exclude_self: bool = False,
        expansion: Optional[int] = None,
        max_distance: Optional[float] = None,
    ) -> SearchResult:
        """The ``n`` indexed images most like a query vector, best first.

        ``nprobe`` is the number of clusters searched (``"all"`` = exact search; default: the
        index's, tuned at fit time). ``expansion`` is the number of first neighbours averaged into
        the query to rank the rest (default: the index's, the fit's ``query_expansion``; 0 = rank
        by distance).
        Each result's ``distance`` is the number it was ranked by (to the expanded query), so the
        list is sorted by it; ``query_distance`` is to the query itself. Indexed copies of the query
        (same content hash) come first at distance 0, with ``same_image=True``, or are left out
        with ``exclude_self``; they are never used for the expansion. With ``max_distance``, only
        results whose ``query_distance`` is at most that are kept (fewer than ``n`` when fewer are
        that close), in the same order.
        """
        if n < 1 or (expansion is not None and expansion < 0) or (max_distance is not None and not max_distance >= 0):
            raise InputError(f"n must be at least 1, expansion and max_distance at least 0, got {n}, {expansion} "
                             f"and {max_distance}")
        bundle, copies_of = self._state
        catalog, index = bundle.catalog, bundle.index
        n = min(n, len(catalog))  # never more results than images: no huge allocation for a huge n
        copies = copies_of.get(query_hash, [])
        nprobe = index.resolve_nprobe(index.nprobe if nprobe is None else nprobe)
        expansion = min(index.expansion if expansion is None else expansion, len(catalog))
        hits = index.search(vector[None], n + len(copies), nprobe, expansion, np.array([copies or [-1]]))
        ranked = [(int(i), float(d)) for i, d in zip(hits.ids[0], hits.distances[0]) if i >= 0 and i not in copies]
        if not exclude_self:
            ranked = [(image_id, 0.0) for image_id in copies] + ranked  # identical images: ranked first, at 0
        ranked = ranked[:n]
        ids = np.array([[image_id for image_id, _ in ranked]], dtype=np.int64)
        query_distances = index.distances_to(vector[None], ids)[0] if ranked else []
        kept = [(image_id, distance, 0.0 if image_id in copies else float(query_distance))
                for (image_id, distance), query_distance in zip(ranked, query_distances)]
        if max_distance is not None:
            kept = [entry for entry in kept if entry[2] <= max_distance]
        results = [
            Neighbor(
                rank=rank,
                id=image_id,
                path=catalog.paths[image_id],
                distance=distance,
                query_distance=query_distance,
                cluster=int(catalog.clusters[image_id]),
                label=catalog.labels[image_id],
                same_image=image_id in copies,
            )
            for rank, (image_id, distance, query_distance) in enumerate(kept, start=1)
        ]
        return SearchResult(query=source, nprobe=nprobe, clusters=hits.probed[0].tolist(), results=results,
                            expansion=expansion)
