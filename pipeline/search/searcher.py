"""The Searcher: answers queries by image bytes, file, URL or indexed id over a loaded bundle."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..bundle.artifacts import Bundle
from ..bundle.catalog import Catalog
from ..bundle.layout import pointed_folder
from ..data.images import MAX_IMAGE_PIXELS, content_hash, prepare_image, read_file
from ..errors import InputError, UnknownImage, shown
from ..index.clustered import ClusteredIndex
from ..model.runtime import BatchingEncoder
from .explain import Explanation, explain

Box = tuple[float, float, float, float]  # x, y, width, height: fractions of a photo's width and height
QueryPhoto = Union[tuple[bytes, str], int]  # a photo of a query: an upload (data, source), or an indexed image's id
UNLIKE_WEIGHT = 0.5  # how much an unlike photo's look counts against a result (Rocchio's beta)
MAX_QUERY_PHOTOS = 8  # photos, liked and unlike, in one query
_DECIMAL = re.compile(r"[+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # what a distance may look like

log = logging.getLogger(__name__)


@dataclass
class Neighbor:
    """One result: an indexed image, its distance to the query and where it lives."""

    rank: int
    id: int  # the image's id, which it keeps for life: how the command line, the API and the page name it
    path: str
    score: float  # the one number results are in the order of (never decreasing): see Searcher.search_vector
    distance: float  # the distance it was ranked by: to the query, or to the expanded query (ranked_by)
    query_distance: float  # to the query itself
    cluster: int
    label: Optional[str]
    same_image: bool  # byte-identical to the query (the query itself, when it is indexed)
    ranked_by: str  # "query": copies of the query and, with expansion, the image nearest to it, which come first;
    # "expanded query": the others, ranked by their distance to the query averaged with its nearest images


@dataclass
class SearchResult:
    query: str
    nprobe: int
    clusters: list[int]  # the clusters probed, nearest first
    results: list[Neighbor]
    expansion: int = 0  # first neighbours averaged into the query to rank the others
    combined: Optional[str] = None  # for several photos or unlike ones: how their descriptors made the query
    box: Optional[tuple[float, float, float, float]] = None  # the region of the query photo searched by, as fractions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """How one query is searched, checked once, when made (InputError naming the option).

    ``n`` results; ``nprobe`` clusters searched: a count, ``"all"`` (exact search), or None for the
    index's tuned ``nprobe_``; ``expansion`` nearest neighbours averaged into the query to rank the
    rest (None: the fit's ``query_expansion``; 0 ranks by distance to the query alone);
    ``exclude_self`` leaves out indexed copies of the query; ``max_distance`` keeps only results at
    most that far from the query itself.
    """

    n: int = 10
    nprobe: Union[int, str, None] = None
    expansion: Optional[int] = None
    exclude_self: bool = False
    max_distance: Optional[float] = None

    def __post_init__(self) -> None:
        if type(self.n) is not int or self.n < 1:
            raise InputError(f"n must be a whole number from 1, got {self.n!r}")
        if not (self.nprobe is None or self.nprobe == "all" or (type(self.nprobe) is int and self.nprobe >= 1)):
            raise InputError(f"nprobe must be a positive whole number or 'all', got {self.nprobe!r}")
        if self.expansion is not None and (type(self.expansion) is not int or self.expansion < 0):
            raise InputError(f"expansion must be a whole number from 0, got {self.expansion!r}")
        if self.max_distance is not None and not 0 <= self.max_distance < math.inf:
            raise InputError(f"max_distance must be a finite number from 0, got {self.max_distance!r}")

    @classmethod
    def parse(cls, n: Any = None, nprobe: Any = None, max_distance: Any = None,
              max_n: Optional[int] = None) -> "SearchOptions":
        """Options from a request's text fields (None or empty: the default; nprobe "auto" too),
        ``n`` at most ``max_n``."""
        text = {name: None if value in (None, "") else str(value)[:32]
                for name, value in (("n", n), ("nprobe", nprobe), ("max_distance", max_distance))}
        if text["n"] is not None and not (text["n"].isascii() and text["n"].isdecimal()):
            raise InputError(f"n must be a whole number, got {text['n']!r}")
        count = 10 if text["n"] is None else int(text["n"])
        if max_n is not None and not 1 <= count <= max_n:
            raise InputError(f"n must lie between 1 and {max_n}, got {count}")
        probe = None if text["nprobe"] in (None, "auto") else text["nprobe"]
        if probe not in (None, "all") and not (probe.isascii() and probe.isdecimal() and len(probe) <= 9):
            raise InputError(f"nprobe must be a positive whole number, 'all' or 'auto', got {probe!r}")
        distance = None if text["max_distance"] is None else parse_distance(text["max_distance"], "max_distance")
        return cls(n=count, nprobe=int(probe) if probe not in (None, "all") else probe, max_distance=distance)


def combined_query(photos: np.ndarray, unlike: np.ndarray, beta: float = UNLIKE_WEIGHT) -> np.ndarray:
    """One query vector for several photos (m, d) less like others (u, d): the mean of the photos'
    unit descriptors less ``beta`` times the mean of the unlike ones' (Rocchio), of unit length.
    Measured on the four dev sets (docs/QUALITY.md, bench_multi_query)."""
    def unit(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), np.float32(1e-12))

    query = unit(photos).mean(axis=0)
    if len(unlike):
        query = query - beta * unit(unlike).mean(axis=0)
    return unit(query)


def _row_of(catalog: Catalog, image_id: int) -> int:
    """The catalog row of the indexed image ``image_id``; UnknownImage when none has that id."""
    row = catalog.row_of(image_id)
    if row is None:
        raise UnknownImage(f"no indexed image has id {image_id}")
    return row


def _scores(ranked: list[tuple[int, float, str]]) -> list[float]:
    """The score of each ranked result, in their order, never decreasing: its distance, but where a
    result kept early on purpose (the nearest to the query, at its distance to the query) is further
    than the next one (at its distance to the expanded query), the next one's."""
    scores = [distance for _, distance, _ in ranked]
    for position in range(len(scores) - 2, -1, -1):
        scores[position] = min(scores[position], scores[position + 1])
    return scores


def parse_box(text: Any) -> Box:
    """A region of a photo from its text ``X,Y,W,H``: fractions of the width and height, the box
    inside the photo and not empty; InputError saying what is wrong."""
    parts = str(text)[:100].split(",")
    if len(parts) != 4 or not all(_DECIMAL.fullmatch(part.strip()) for part in parts):
        raise InputError(f"box must be X,Y,W,H, four fractions of the photo's width and height, got "
                         f"{shown(str(text), 40)!r}")
    x, y, width, height = (float(part) for part in parts)
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < width and 0 < height and x + width <= 1.000001
            and y + height <= 1.000001):
        raise InputError(f"box {x:g},{y:g},{width:g},{height:g} must lie inside the photo: X and Y from 0, W and H "
                         f"above 0, X+W and Y+H at most 1")
    return x, y, min(width, 1 - x), min(height, 1 - y)


def parse_distance(value: Any, name: str) -> float:
    """A distance from a request's text: a finite number from 0, in plain ASCII decimal notation
    (no digits of other scripts, no underscores, which Python's ``float`` would take)."""
    text = str(value)[:33]
    if len(text) > 32 or not _DECIMAL.fullmatch(text):
        raise InputError(f"{name} must be a number, got {shown(text, 32)!r}")
    number = float(text)
    if not 0 <= number < math.inf:  # also refuses nan
        raise InputError(f"{name} must be a finite number from 0, got {str(value)[:32]}")
    return number


@dataclass(frozen=True)
class _Served:
    """What one query reads, all of a piece: a bundle, the encoder of its fit, and the labels of
    its images."""

    bundle: Bundle
    index: ClusteredIndex  # the bundle's, or what searches it (the shards of serve --ray)
    encoder: BatchingEncoder
    encoder_sha256: str
    labels: list[str]  # the labels of the indexed images, sorted

    @cached_property
    def skipped(self) -> int:
        """The files the fit or a later change could not read and not indexed since: counted on first
        use (a pass over every indexed path, which a query never needs), then kept with the bundle."""
        return len(self.bundle.manifest.unreadable_files(self.bundle.catalog.indexed_paths))


class Searcher:
    """Answers "which indexed images look most like this one?" for a fitted :class:`Bundle`.

    Safe to share between threads. Queries are encoded on ``runtime`` (:mod:`pipeline.model.runtime`;
    default: LiteRT where installed). With ``batch_window_ms`` > 0 (the service), queries arriving
    together are encoded in one call (:class:`pipeline.model.runtime.BatchingEncoder`). :meth:`refresh`
    and :meth:`use` swap in another bundle while queries run (after an add, sync or removal, or a
    new fit into the same artifacts folder); each query reads one bundle and its encoder, the old
    pair or the new.
    """

    def __init__(self, bundle: Bundle, max_pixels: int = MAX_IMAGE_PIXELS, batch_window_ms: float = 0.0,
                 runtime: Optional[str] = None):
        self.max_pixels = max_pixels
        self.batch_window_ms = batch_window_ms
        self.runtime = runtime
        self._swapping = threading.Lock()
        self._served = self._serving(bundle, None)

    def _serving(self, bundle: Bundle, now: Optional[_Served]) -> _Served:
        """``bundle`` ready to serve: with the encoder already served when it is the same fit's
        (add, sync and remove keep it), else with its own, loaded here."""
        digest = bundle.encoder_sha256()
        if now is not None and now.encoder_sha256 == digest:
            encoder = now.encoder
        else:
            encoder = BatchingEncoder(self._encoder_for(bundle), self.batch_window_ms)
        bundle.catalog.hash_order()  # sorted here, not at the first query: the indexed copies of a query's photo
        return _Served(bundle, self._index_for(bundle), encoder, digest, bundle.catalog.label_names())

    def _encoder_for(self, bundle: Bundle):
        """The encoder that runs ``bundle``'s queries (:class:`pipeline.model.runtime.Encoder`)."""
        return bundle.encoder(self.runtime)

    def _index_for(self, bundle: Bundle) -> ClusteredIndex:
        """What searches ``bundle``'s index."""
        return bundle.index

    def serving_stats(self) -> dict[str, Any]:
        """How the searches are served, for the service's stats: nothing to say in one process."""
        return {}

    def use(self, bundle: Bundle) -> None:
        """Answer from ``bundle`` from now on."""
        with self._swapping:
            self._served = self._serving(bundle, self._served)

    def refresh(self) -> bool:
        """Answer from the bundle that the artifacts folder now names, if another one was committed
        since this one was loaded; whether it changed. ArtifactError when it cannot be loaded (the
        bundle served stays)."""
        root = self.bundle.folder.parent
        if pointed_folder(root) in (None, self.bundle.folder):  # cheap enough to ask every second
            return False
        with self._swapping:  # one swap at a time, each to what CURRENT names then: never back to an older one
            bundle = Bundle.load(root)
            if bundle.folder == self.bundle.folder:
                return False
            self._served = self._serving(bundle, self._served)
        log.info("serving %s (%d images)", bundle.folder, len(bundle.catalog))
        return True

    @property
    def bundle(self) -> Bundle:
        return self._served.bundle

    @property
    def catalog(self) -> Catalog:
        return self._served.bundle.catalog

    @property
    def labels(self) -> list[str]:
        """The labels of the served bundle's images, sorted."""
        return self._served.labels

    @property
    def skipped(self) -> int:
        """How many files the served bundle's fit or later changes could not read and did not index since."""
        return self._served.skipped

    @property
    def index(self) -> ClusteredIndex:
        return self._served.index

    @property
    def encoder(self) -> BatchingEncoder:
        """The encoder that queries go through: the served bundle's fit's."""
        return self._served.encoder

    @property
    def image_size(self) -> int:
        return self._served.bundle.settings.image_size

    def search_file(self, path: Union[str, os.PathLike], options: SearchOptions = SearchOptions()) -> SearchResult:
        return self.search_bytes(read_file(path), str(path), options)

    def search_url(self, url: str, options: SearchOptions = SearchOptions()) -> SearchResult:
        from ..data.fetch import fetch_url  # requests: only for a query by URL

        return self.search_bytes(fetch_url(url), url, options)

    def search_bytes(self, data: bytes, source: str, options: SearchOptions = SearchOptions(),
                     box: Optional[Box] = None) -> SearchResult:
        """Search with an encoded image (see :meth:`search_vector`), or with the region ``box`` of
        it (x, y, width, height as fractions: :func:`parse_box`), cropped and embedded as a photo of
        its own (docs/QUALITY.md, bench_region); indexed copies of the whole photo are then results
        like any other."""
        served = self._served
        image = prepare_image(data, source, served.bundle.settings.image_size, self.max_pixels, box)
        result = self._search(served, served.encoder.embed(image), {content_hash(data)} if box is None else set(),
                              source, options)
        result.box = box
        return result

    def search_indexed(self, image_id: int, options: SearchOptions = SearchOptions(),
                       box: Optional[Box] = None) -> SearchResult:
        """Search with an indexed image, by its id, using its stored vector (with ``box``, that region
        of its file, while the file is the one indexed); UnknownImage when no indexed image has that id
        (it was removed, say)."""
        served = self._served
        catalog = served.bundle.catalog
        row = _row_of(catalog, image_id)
        if box is not None:
            return self.search_bytes(self.indexed_file(image_id), catalog.paths[row], options, box)
        return self._search(served, np.asarray(served.bundle.embeddings[row]), {catalog.hashes[row]}, catalog.paths[row],
                            options)

    def search_photos(self, photos: Sequence[QueryPhoto], unlike: Sequence[QueryPhoto] = (),
                      options: SearchOptions = SearchOptions()) -> SearchResult:
        """Search with several photos as one query, less like the ``unlike`` ones
        (:func:`combined_query`). Each photo is an upload, (data, source), encoded here (all in one
        encoder call), or an indexed image's id, whose stored vector is used as it is: adding a
        result to a query costs no encoding. Indexed copies of any liked photo count as the query's
        copies; UnknownImage for an id that no indexed image has."""
        if not photos:
            raise InputError("a search needs at least one photo to look like")
        if len(photos) + len(unlike) > MAX_QUERY_PHOTOS:
            raise InputError(f"at most {MAX_QUERY_PHOTOS} photos a query, got {len(photos) + len(unlike)}")
        served = self._served
        catalog, size = served.bundle.catalog, served.bundle.settings.image_size
        everyone = [*photos, *unlike]
        rows = [_row_of(catalog, photo) if isinstance(photo, int) else None for photo in everyone]
        uploads = [photo for photo in everyone if not isinstance(photo, int)]
        encoded = iter(served.encoder.encoder.encode(np.stack([
            prepare_image(data, source, size, self.max_pixels) for data, source in uploads])) if uploads else [])
        vectors = np.stack([np.asarray(served.bundle.embeddings[row]) if row is not None else next(encoded)
                            for row in rows])
        vector = combined_query(vectors[: len(photos)], vectors[len(photos):])
        described = (f"the mean of {len(photos)} photos' unit descriptors" if len(photos) > 1 else "the photo's unit "
                     "descriptor") + (f", less {UNLIKE_WEIGHT} times the mean of {len(unlike)} unlike photos'"
                                      if unlike else "")
        names = [f"id {photo}" if isinstance(photo, int) else photo[1] for photo in everyone]
        source = " + ".join(names[: len(photos)]) + "".join(f" - {name}" for name in names[len(photos):])
        hashes = {catalog.hashes[row] if row is not None else content_hash(photo[0])
                  for photo, row in zip(photos, rows)}
        result = self._search(served, vector, hashes, source, options)
        result.combined = described
        return result

    def indexed_file(self, image_id: int) -> bytes:
        """The bytes of the indexed image ``image_id``, while its file is the one indexed; UnknownImage otherwise."""
        bundle = self._served.bundle
        row = _row_of(bundle.catalog, image_id)
        data = read_file(bundle.catalog.paths[row], bundle.settings.max_file_bytes)
        if content_hash(data) != bundle.catalog.hashes[row]:
            raise UnknownImage(f"image {image_id} is no longer the file that was indexed")
        return data

    def prepared(self, data: bytes, source: str, box: Optional[Box] = None) -> np.ndarray:
        """A query photo (or its region ``box``) as the encoder sees it."""
        return prepare_image(data, source, self._served.bundle.settings.image_size, self.max_pixels, box)

    def explain(self, query: np.ndarray, image_ids: Sequence[int]) -> list[Explanation]:
        """Why each indexed image of ``image_ids`` answers ``query`` (a photo as :meth:`prepared`
        gives it): :func:`pipeline.search.explain.explain`, the query encoded once."""
        served = self._served
        catalog = served.bundle.catalog
        results = [self.prepared(self.indexed_file(image_id), catalog.paths[_row_of(catalog, image_id)])
                   for image_id in image_ids]
        return explain(served.encoder.encoder, query, results)

    def search_vector(self, vector: np.ndarray, query_hash: str, source: str,
                      options: SearchOptions = SearchOptions()) -> SearchResult:
        """The ``options.n`` indexed images most like a query vector, best first (see :class:`SearchOptions`).

        The results are in the order of one number, their ``score``. Each is ranked by a
        ``distance``, and ``ranked_by`` says to what: indexed copies of the query (same content
        hash) come first at distance 0, with ``same_image=True`` (or are left out with
        ``exclude_self``; they are never used for the expansion); with expansion, the image nearest
        to the query itself comes next, at its distance to the query ("query"), since expansion
        would otherwise cost the best hit its place (docs/QUALITY.md, bench_ranking: precision@1 up
        to 0.016 higher than with every result sorted by its distance to the expanded query); the
        others follow, sorted by their distance to the expanded query ("expanded query"). The score
        is that distance, but for a result kept early on purpose whose distance is larger than the
        next one's: it scores as the next one does. ``query_distance`` is always to the query itself. With ``max_distance``, only
        results whose ``query_distance`` is at most that are kept (fewer than ``n`` when fewer are
        that close), in the same order.
        """
        return self._search(self._served, vector, {query_hash}, source, options)

    @staticmethod
    def _search(served: _Served, vector: np.ndarray, query_hashes: set[str], source: str,
                options: SearchOptions) -> SearchResult:
        """:meth:`search_vector` against the bundle of ``served``; the indexed images with any of
        ``query_hashes`` are the query's copies."""
        catalog, index = served.bundle.catalog, served.index
        n = min(options.n, len(catalog))  # never more results than images: no huge allocation for a huge n
        copies = sorted(row for digest in query_hashes for row in catalog.rows_with_hash(digest))
        nprobe = index.resolve_nprobe(index.nprobe_ if options.nprobe is None else options.nprobe)
        expansion = min(index.expansion if options.expansion is None else options.expansion, len(catalog))
        hits = index.search(vector[None], n + len(copies), nprobe, expansion, np.array([copies or [-1]]))
        by_expanded = "expanded query" if expansion else "query"
        ranked = [(int(i), float(d), "query" if position == 0 else by_expanded)  # the index keeps the nearest first
                  for position, (i, d) in enumerate(zip(hits.ids[0], hits.distances[0])) if i >= 0 and i not in copies]
        if not options.exclude_self:
            ranked = [(row, 0.0, "query") for row in copies] + ranked  # identical images: ranked first, at 0
        ranked = ranked[:n]
        rows = np.array([[row for row, _, _ in ranked]], dtype=np.int64)
        query_distances = index.distances_to(vector[None], rows)[0] if ranked else []
        kept = [(row, score, distance, 0.0 if row in copies else float(query_distance), by)
                for (row, distance, by), score, query_distance in zip(ranked, _scores(ranked), query_distances)]
        if options.max_distance is not None:
            kept = [entry for entry in kept if entry[3] <= options.max_distance]
        results = [
            Neighbor(
                rank=rank,
                id=catalog.ids[row],
                path=catalog.paths[row],
                score=score,
                distance=distance,
                query_distance=query_distance,
                cluster=int(catalog.clusters[row]),
                label=catalog.labels[row],
                same_image=row in copies,
                ranked_by=by,
            )
            for rank, (row, score, distance, query_distance, by) in enumerate(kept, start=1)
        ]
        return SearchResult(query=source, nprobe=nprobe, clusters=hits.probed[0].tolist(), results=results,
                            expansion=expansion)
