"""The Searcher: loads a fit's artifacts once and answers queries by image bytes, file or URL."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

from .artifacts import current_fit, load_catalog, load_model, load_index, read_manifest
from .embed import embed_images
from .images import content_hash, fetch_url, prepare_image, read_file


@dataclass
class Neighbor:
    """One result: an indexed image, its distance to the query and where it lives."""

    rank: int
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
    """Answers "which indexed images look most like this one?" for a fitted artifacts folder."""

    def __init__(self, artifacts_dir: Union[str, os.PathLike] = "artifacts"):
        self.folder = current_fit(artifacts_dir)
        self.manifest = read_manifest(self.folder)
        self.image_size = int(self.manifest["settings"]["image_size"])
        self.default_nprobe = int(self.manifest["nprobe"])
        self.encoder = load_model(self.folder)
        self.index = load_index(self.folder)
        self.catalog = load_catalog(self.folder)
        self._copies = Counter(self.catalog.hashes)

    def search_file(self, path: Union[str, os.PathLike], **options) -> SearchResult:
        return self.search_bytes(read_file(path), str(path), **options)

    def search_url(self, url: str, **options) -> SearchResult:
        return self.search_bytes(fetch_url(url), url, **options)

    def search_bytes(
        self,
        data: bytes,
        source: str,
        n: int = 10,
        nprobe: Union[int, str, None] = None,
        exclude_self: bool = False,
    ) -> SearchResult:
        """The ``n`` nearest indexed images to an encoded image, nearest first.

        ``nprobe`` is the number of clusters searched (``"all"`` = exact search; default: the
        value tuned at fit time). An indexed copy of the query (same bytes) is reported with
        ``same_image=True``, or left out with ``exclude_self``.
        """
        image = prepare_image(data, source, self.image_size)
        vector = embed_images(self.encoder, image[None])
        query_hash = content_hash(data)
        extra = self._copies.get(query_hash, 0) if exclude_self else 0
        nprobe = self.index.resolve_nprobe(self.default_nprobe if nprobe is None else nprobe)
        hits = self.index.search(vector, n + extra, nprobe)
        results = []
        for distance, index in zip(hits.distances[0], hits.ids[0]):
            if index < 0 or len(results) == n:
                break
            same = self.catalog.hashes[index] == query_hash
            if same and exclude_self:
                continue
            results.append(
                Neighbor(
                    rank=len(results) + 1,
                    path=self.catalog.paths[index],
                    distance=float(distance),
                    cluster=int(self.catalog.clusters[index]),
                    label=self.catalog.labels[index],
                    same_image=same,
                )
            )
        return SearchResult(query=source, nprobe=nprobe, clusters=hits.probed[0].tolist(), results=results)
