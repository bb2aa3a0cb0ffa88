"""The Searcher: loads a fit's artifacts once and answers queries by image bytes, file or URL."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np

from .artifacts import (check_consistent, current_fit, load_catalog, load_embeddings, load_index, load_model,
                        read_manifest)
from .embed import BatchingEncoder
from .errors import InputError
from .fetch import fetch_url
from .images import MAX_PIXELS, content_hash, prepare_image, read_file


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
    """Answers "which indexed images look most like this one?" for a fitted artifacts folder.

    Loads the encoder, index and catalog once; safe to share between threads. With
    ``batch_window_ms`` > 0 (the service), queries arriving together are encoded in one call
    (:class:`pipeline.embed.BatchingEncoder`). ``allow_pickle`` reads a legacy bundle, whose index
    is a pickle (see :func:`pipeline.artifacts.current_fit`).
    """

    def __init__(self, artifacts_dir: Union[str, os.PathLike] = "artifacts", max_pixels: int = MAX_PIXELS,
                 batch_window_ms: float = 0.0, allow_pickle: bool = False):
        self.folder = current_fit(artifacts_dir, allow_pickle)
        self.manifest = read_manifest(self.folder)
        self.embeddings = load_embeddings(self.folder)
        self.catalog = load_catalog(self.folder)
        settings = check_consistent(self.folder, self.manifest, self.catalog, self.embeddings)
        self.image_size = settings.image_size
        self.default_nprobe = self.manifest["nprobe"]
        self.default_expansion = settings.query_expansion
        self.max_pixels = max_pixels
        self.encoder = load_model(self.folder)
        self.index = load_index(self.folder, self.embeddings)
        self._copies: dict[str, list[int]] = defaultdict(list)  # content hash -> ids of the indexed copies
        for image_id, content in enumerate(self.catalog.hashes):
            self._copies[content].append(image_id)
        self._encoder = BatchingEncoder(self.encoder, batch_window_ms)

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
        return self.search_vector(
            np.asarray(self.embeddings[image_id]), self.catalog.hashes[image_id], self.catalog.paths[image_id], **options
        )

    def search_vector(
        self,
        vector: np.ndarray,
        query_hash: str,
        source: str,
        n: int = 10,
        nprobe: Union[int, str, None] = None,
        exclude_self: bool = False,
        expansion: Optional[int] = None,
    ) -> SearchResult:
        """The ``n`` indexed images most like a query vector, best first.

        ``nprobe`` is the number of clusters searched (``"all"`` = exact search; default: the
        value tuned at fit time). ``expansion`` is the number of first neighbours averaged into
        the query to rank the rest (default: the fit's ``query_expansion``; 0 = rank by distance).
        Each result's ``distance`` is the number it was ranked by (to the expanded query), so the
        list is sorted by it; ``query_distance`` is to the query itself. Indexed copies of the query
        (same content hash) come first at distance 0, with ``same_image=True``, or are left out
        with ``exclude_self``; they are never used for the expansion.
        """
        if n < 1 or (expansion is not None and expansion < 0):
            raise InputError(f"n must be at least 1 and expansion at least 0, got {n} and {expansion}")
        n = min(n, len(self.catalog))  # never more results than images: no huge allocation for a huge n
        copies = self._copies.get(query_hash, [])
        nprobe = self.index.resolve_nprobe(self.default_nprobe if nprobe is None else nprobe)
        expansion = min(self.default_expansion if expansion is None else expansion, len(self.catalog))
        hits = self.index.search(vector[None], n + len(copies), nprobe, expansion, np.array([copies or [-1]]))
        ranked = [(int(i), float(d)) for i, d in zip(hits.ids[0], hits.distances[0]) if i >= 0 and i not in copies]
        if not exclude_self:
            ranked = [(image_id, 0.0) for image_id in copies] + ranked  # identical images: ranked first, at 0
        ranked = ranked[:n]
        ids = np.array([[image_id for image_id, _ in ranked]], dtype=np.int64)
        query_distances = self.index.distances_to(vector[None], ids)[0] if ranked else []
        results = [
            Neighbor(
                rank=rank,
                id=image_id,
                path=self.catalog.paths[image_id],
                distance=distance,
                query_distance=0.0 if image_id in copies else float(query_distance),
                cluster=int(self.catalog.clusters[image_id]),
                label=self.catalog.labels[image_id],
                same_image=image_id in copies,
            )
            for rank, ((image_id, distance), query_distance) in enumerate(zip(ranked, query_distances), start=1)
        ]
        return SearchResult(query=source, nprobe=nprobe, clusters=hits.probed[0].tolist(), results=results,
                            expansion=expansion)
