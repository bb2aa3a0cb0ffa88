"""The Searcher: loads a fit's artifacts once and answers queries by image bytes, file or URL."""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np

from .artifacts import current_fit, load_catalog, load_model, load_index, read_manifest
from .embed import embed_images
from .fetch import fetch_url
from .images import MAX_PIXELS, content_hash, prepare_image, read_file


@dataclass
class Neighbor:
    """One result: an indexed image, its distance to the query and where it lives."""

    rank: int
    id: int  # the image's row in the catalog: how the server names it
    path: str
    distance: float
    cluster: int
    label: Optional[str]
    same_image: bool  # byte-identical to the query (the query itself, when it is indexed)


@dataclass
class SearchResult:
    query: str
    nprobe: int
    clusters: list[int]  # the clusters probed, nearest first
    results: list[Neighbor]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Answers "which indexed images look most like this one?" for a fitted artifacts folder.

    Loads the encoder, index and catalog once; safe to share between threads.
    """

    def __init__(self, artifacts_dir: Union[str, os.PathLike] = "artifacts", max_pixels: int = MAX_PIXELS):
        self.folder = current_fit(artifacts_dir)
        self.manifest = read_manifest(self.folder)
        self.image_size = int(self.manifest["settings"]["image_size"])
        self.default_nprobe = int(self.manifest["nprobe"])
        self.max_pixels = max_pixels
        self.encoder = load_model(self.folder)
        self.index = load_index(self.folder)
        self.catalog = load_catalog(self.folder)
        self.embeddings = np.load(self.folder / "embeddings.npy", mmap_mode="r")
        self._copies = Counter(self.catalog.hashes)
        self._encoder_lock = threading.Lock()

    def search_file(self, path: Union[str, os.PathLike], **options) -> SearchResult:
        return self.search_bytes(read_file(path), str(path), **options)

    def search_url(self, url: str, **options) -> SearchResult:
        return self.search_bytes(fetch_url(url), url, **options)

    def search_bytes(self, data: bytes, source: str, **options) -> SearchResult:
        """Search with an encoded image (options as in :meth:`search_vector`)."""
        image = prepare_image(data, source, self.image_size, self.max_pixels)
        with self._encoder_lock:
            vector = embed_images(self.encoder, image[None])[0]
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
    ) -> SearchResult:
        """The ``n`` nearest indexed images to a query vector, nearest first.

        ``nprobe`` is the number of clusters searched (``"all"`` = exact search; default: the
        value tuned at fit time). An indexed copy of the query (same content hash) is reported
        with ``same_image=True``, or left out with ``exclude_self``.
        """
        extra = self._copies.get(query_hash, 0) if exclude_self else 0
        nprobe = self.index.resolve_nprobe(self.default_nprobe if nprobe is None else nprobe)
        hits = self.index.search(vector[None], n + extra, nprobe)
        results = []
        for distance, image_id in zip(hits.distances[0], hits.ids[0]):
            if image_id < 0 or len(results) == n:
                break
            same = self.catalog.hashes[image_id] == query_hash
            if same and exclude_self:
                continue
            results.append(
                Neighbor(
                    rank=len(results) + 1,
                    id=int(image_id),
                    path=self.catalog.paths[image_id],
                    distance=float(distance),
                    cluster=int(self.catalog.clusters[image_id]),
                    label=self.catalog.labels[image_id],
                    same_image=same,
                )
            )
        return SearchResult(query=source, nprobe=nprobe, clusters=hits.probed[0].tolist(), results=results)
