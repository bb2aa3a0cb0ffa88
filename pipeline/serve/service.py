"""What the search service does for each request, apart from HTTP: :class:`SearchService`.

:func:`pipeline.serve.server.create_app` parses a request and calls one method here; each method is
plain Python over one shared :class:`Searcher` (testable without an HTTP client) and says what
went wrong by raising :class:`HTTPException` with the status the client gets, or one of the
project's errors, which the application maps to a status (:mod:`pipeline.serve.server`).
:class:`Admission` keeps the searches' wait under a budget.
"""

from __future__ import annotations

import collections
import hmac
import logging
import math
import mimetypes
import os
import stat
import threading
import time
from typing import Any, Mapping, Optional, Sequence, Union

from starlette.exceptions import HTTPException

from ..bundle.artifacts import Bundle
from ..bundle.catalog import Catalog
from ..collection.changes import is_id, remove_images
from ..collection.duplicates import CANDIDATE_DISTANCE, find_duplicates
from ..collection.groups import Duplicates
from ..data.fetch import fetch_url
from ..data.images import content_hash, thumbnail_jpeg
from ..errors import ArtifactError, ImageError, InputError, shown
from ..search.searcher import MAX_QUERY_PHOTOS, Box, QueryPhoto, Searcher, SearchOptions, parse_box, parse_distance

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_PIXELS = 40_000_000  # a query (upload or URL) decoding to more is refused (413); files of the collection: images.MAX_IMAGE_PIXELS
MAX_RESULTS = 100
THUMBNAIL = 256
MAX_QUEUE_MS = 500.0  # a search expected to wait longer than this is refused at once (503)
MIN_TOKEN_CHARACTERS = 16
MAX_REMOVE_IDS = 100_000
SEARCH_OPTIONS = ("n", "nprobe", "max_distance", "box")  # what a search request may set, in its body or its query string


class SearchService:
    """Each request's work over one shared :class:`Searcher`. URL queries may reach loopback and
    private addresses only with ``allow_private_urls``; uploads and fetched images are capped at
    ``max_upload_bytes``; images can be removed only with ``write_token`` set (at least
    MIN_TOKEN_CHARACTERS long), by requests that carry it; a search whose expected wait is over
    ``max_queue_ms`` is refused (:class:`Admission`)."""

    def __init__(self, searcher: Searcher, allow_private_urls: bool = False, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 write_token: Optional[str] = None, max_queue_ms: float = MAX_QUEUE_MS):
        check_write_token(write_token)
        self.searcher = searcher
        self.allow_private_urls = allow_private_urls
        self.max_upload_bytes = max_upload_bytes
        self.write_token = write_token
        self.max_queue_ms = max_queue_ms
        self.admission = Admission(max_queue_ms / 1000)
        self._groups: dict[tuple[str, float], Duplicates] = {}  # the current bundle's answers only
        self._grouping = threading.Lock()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "images": len(self.searcher.catalog)}

    def stats(self) -> dict[str, Any]:
        bundle = self.searcher.bundle  # one bundle for the whole answer
        manifest = bundle.manifest
        return {
            "images": len(bundle.catalog),
            "clusters": bundle.index.nlist,
            "nprobe": bundle.index.nprobe_,
            "skipped": self.searcher.skipped,
            "created": manifest.created,
            "data_dir": manifest.data_dir,
            "labels": self.searcher.labels,
            **self.searcher.serving_stats(),
            "settings": manifest.settings.to_dict(),
            "queue": {"searches": self.admission.pending,
                      "expected_wait_ms": round(self.admission.expected_wait() * 1000, 1),
                      "max_queue_ms": self.max_queue_ms},
        }

    def search_upload(self, photos: Sequence[QueryPhoto], unlike: Sequence[QueryPhoto], fields: Mapping[str, Any],
                      query: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The answer to a form: one uploaded photo, or several photos (uploads, or indexed ids from
        its ``like`` fields) as one query less like the ``unlike`` ones (:meth:`Searcher.search_photos`),
        with the options of the form's ``fields`` and of the request's ``query`` string (:func:`search_options`)."""
        if any(len(photo[0]) > self.max_upload_bytes for photo in [*photos, *unlike] if not isinstance(photo, int)):
            raise HTTPException(413, f"upload over the {self.max_upload_bytes}-byte limit")
        options, box = search_options(fields, query or {}), _box(fields, query or {})
        if len(photos) > 1 or unlike:
            if box is not None:
                raise InputError("a box is a region of one photo: search several photos without it")
            return self.searcher.search_photos(photos, unlike, options).to_dict()
        return self.searcher.search_bytes(*photos[0], options, box).to_dict()

    def search_json(self, body: Any, query: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The answer to a JSON query: ``{"url": ...}`` or ``{"id": ...}``, with its options (in the
        body or the ``query`` string); ``"like"`` and ``"unlike"``, lists of indexed ids, make it
        one query of several photos (:meth:`Searcher.search_photos`)."""
        if not isinstance(body, dict) or ("url" in body) == ("id" in body):
            raise HTTPException(400, 'send JSON with exactly one of "url" or "id"')
        options, box = search_options(body, query or {}), _box(body, query or {})
        like, unlike = indexed_ids(body.get("like", []), "like"), indexed_ids(body.get("unlike", []), "unlike")
        if (like or unlike) and box is not None:
            raise InputError("a box is a region of one photo: search several photos without it")
        if "id" in body:
            image_id = indexed_id(body["id"])
            if like or unlike:
                return self.searcher.search_photos([image_id, *like], unlike, options).to_dict()
            return self.searcher.search_indexed(image_id, options, box).to_dict()
        url = str(body["url"])
        data = fetch_url(url, allow_private=self.allow_private_urls, max_bytes=self.max_upload_bytes)
        if like or unlike:
            return self.searcher.search_photos([(data, url), *like], unlike, options).to_dict()
        return self.searcher.search_bytes(data, url, options, box).to_dict()

    def explain(self, query: Union[QueryPhoto, str], image_id: str, box: Optional[str] = None) -> bytes:
        """A PNG of why the indexed image ``image_id`` answers ``query`` (an upload (data, source),
        an indexed id, or a URL), or its region ``box`` (:func:`pipeline.search.explain.explain`): the two
        side by side under their heatmaps."""
        from ..report.plots import explain_png  # Matplotlib: only when asked

        result_id, region = indexed_id(image_id), None if box in (None, "") else parse_box(box)
        if isinstance(query, str):
            name, data = query, fetch_url(query, allow_private=self.allow_private_urls, max_bytes=self.max_upload_bytes)
        elif isinstance(query, int):
            name, data = f"query {query}", self.searcher.indexed_file(query)
        else:
            data, name = query
            if len(data) > self.max_upload_bytes:
                raise HTTPException(413, f"upload over the {self.max_upload_bytes}-byte limit")
        explanation = self.searcher.explain(self.searcher.prepared(data, name, region), [result_id])[0]
        return explain_png(explanation, (shown(name, 60) + (" (the region)" if region else ""), f"result {result_id}"))

    def thumbnail(self, image_id: str) -> bytes:
        """A JPEG thumbnail of an indexed image."""
        bundle = self.searcher.bundle  # one bundle for the request, even if a newer one is swapped in meanwhile
        return _thumbnail(bundle, _row(image_id, bundle.catalog))

    def full_image(self, image_id: str) -> tuple[bytes, str]:
        """The indexed image's file, as it was indexed, and its media type."""
        bundle = self.searcher.bundle
        row = _row(image_id, bundle.catalog)
        media_type = mimetypes.guess_type(bundle.catalog.paths[row])[0] or "application/octet-stream"
        return _indexed_file(bundle, row), media_type

    def authorise(self, authorization: str) -> None:
        """Let a write through only with the write token in its Authorization header (403 when
        writing is off, 401 without a token or with a wrong one, each said apart)."""
        if self.write_token is None:
            raise HTTPException(403, "removing is off: start the server with --write-token-file to allow it")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(401, "removing needs the server's write token: Authorization: Bearer TOKEN")
        if not hmac.compare_digest(given.encode(), self.write_token.encode()):
            raise HTTPException(401, "the write token is wrong: it is not the one the server was started with")

    def remove(self, ids: list[str]) -> dict[str, Any]:
        """Remove images by id from the index (not from the disk) and serve the new bundle; the
        ids removed, each once."""
        for image_id in ids:
            if not is_id(image_id):
                raise HTTPException(404, f"no image with id {image_id[:32]!r}")
        ids = list(dict.fromkeys(ids))
        try:  # by id, in the bundle current now: an id that a sync or removal has taken out meanwhile is a 404
            change = remove_images(ids, self.searcher.bundle.folder.parent)
        except ArtifactError as exc:  # another writer holds the bundle: said in the log, not to the client
            log.warning("a removal waits: %s", exc)
            raise HTTPException(409, "another fit, add, sync or remove is changing the collection; try again when "
                                     "it has finished") from None
        problem = refresh(self.searcher)  # the removal is committed whatever happens here; the follower retries
        if problem is not None:
            log.warning(problem)
        return {"removed": [int(image_id) for image_id in ids], "images": change.images}

    def remove_listed(self, body: Any) -> dict[str, Any]:
        """:meth:`remove` for a JSON body ``{"ids": [...]}`` (at most MAX_REMOVE_IDS)."""
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(type(i) is int and i >= 0 for i in ids):
            raise InputError("ids must be a non-empty list of image ids (whole numbers from 0)")
        if len(ids) > MAX_REMOVE_IDS:
            raise InputError(f"at most {MAX_REMOVE_IDS:,} ids a request, got {len(ids):,}")
        return self.remove([str(image_id) for image_id in ids])

    def duplicates(self, max_distance: Optional[str] = None) -> dict[str, Any]:
        """The groups of copies, worked out once per bundle and distance, then answered from memory."""
        limit = CANDIDATE_DISTANCE if max_distance in (None, "") else parse_distance(max_distance, "max_distance")
        bundle = self.searcher.bundle  # one bundle for the whole answer, even if a removal swaps it meanwhile
        with self._grouping:  # one search at a time; a second request for the same bundle reads the first's answer
            key = (str(bundle.folder), limit)
            if key not in self._groups:
                self._groups.clear()
                self._groups[key] = find_duplicates(bundle, limit, progress=False)
            return self._groups[key].to_dict()


def refresh(searcher: Searcher) -> Optional[str]:
    """:meth:`Searcher.refresh`; what went wrong, as one line, instead of an exception."""
    try:
        searcher.refresh()
    except Exception as exc:  # a background look must never take the service down
        reason = exc if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        return f"still serving {searcher.bundle.folder}: {reason}"
    return None


def search_options(fields: Mapping[str, Any], query: Mapping[str, str]) -> SearchOptions:
    """A search's options from its body's ``fields`` and its URL's ``query`` string, either of which
    may give each one; InputError (422) for a query parameter that is no option, or an option given
    both ways differently."""
    unknown = sorted(set(query) - set(SEARCH_OPTIONS))
    if unknown:
        raise InputError(f"unknown query parameter {shown(unknown[0], 40)!r}: a search takes "
                         f"{', '.join(SEARCH_OPTIONS)}")
    return SearchOptions.parse(_given(fields, query, "n"), _given(fields, query, "nprobe"),
                               _given(fields, query, "max_distance"), MAX_RESULTS)


def _given(fields: Mapping[str, Any], query: Mapping[str, str], name: str) -> Any:
    """The value of ``name`` in the request's body ``fields`` or its ``query`` string (None where
    neither gives it); InputError when both give it differently."""
    given = [value for value in (fields.get(name), query.get(name)) if value not in (None, "")]
    if len(given) == 2 and str(given[0]) != str(given[1]):
        raise InputError(f"{name} is given twice, as {shown(str(given[0]), 32)!r} and {shown(str(given[1]), 32)!r}")
    return given[0] if given else None


def _box(fields: Mapping[str, Any], query: Mapping[str, str]) -> Optional[Box]:
    """The region of the query photo a request searches by (``box``: "X,Y,W,H" fractions), or None."""
    text = _given(fields, query, "box")
    return None if text is None else parse_box(text)


def indexed_ids(values: Any, name: str) -> list[int]:
    """The indexed ids a request lists under ``name`` (a list, or one id); InputError (422) for one
    that is not an id, or for more than a query holds."""
    values = values if isinstance(values, list) else [values]
    if len(values) > MAX_QUERY_PHOTOS:
        raise InputError(f"at most {MAX_QUERY_PHOTOS} photos a query, got {len(values)} in {name!r}")
    texts = [str(value) for value in values if not isinstance(value, bool)]
    bad = [text for text in texts if not is_id(text)] + (["true/false"] if len(texts) < len(values) else [])
    if bad:
        raise InputError(f"{name!r} lists indexed image ids, got {shown(bad[0], 32)!r}")
    return [int(text) for text in texts]


def indexed_id(value: Any) -> int:
    """An indexed image's id given by a request; 404 for what cannot be one."""
    text = str(value)
    if isinstance(value, bool) or not is_id(text):
        raise HTTPException(404, f"no image with id {shown(text, 32)!r}")
    return int(text)


def check_write_token(token: Optional[str]) -> None:
    """InputError for a write token too short to resist guessing (None: deleting is off)."""
    if token is not None and len(token) < MIN_TOKEN_CHARACTERS:
        raise InputError(f"the write token must be at least {MIN_TOKEN_CHARACTERS} characters long")


class Admission:
    """Keeps a search's wait under a budget: a search that would wait longer is refused at once.

    The expected wait of a new search is the searches already admitted and not yet answered times
    the time a search costs the service, measured as the mean interval between answers while
    searches were waiting (the service's own throughput, whatever the machine), so the estimate
    follows the load without a setting. A refused search costs nothing but this check, made before
    its body is read: under any overload, the accepted searches keep their latency and the rest hear
    "busy" within milliseconds, with a Retry-After of the seconds the queue needs to drain to the budget.
    """

    def __init__(self, budget_s: float, first_cost_s: float = 0.02, smoothing: float = 0.05):
        self.budget_s = budget_s
        self.cost_s = first_cost_s  # until measured: a search at 50 a second
        self.smoothing = smoothing
        self.pending = 0
        self._last_answer: Optional[float] = None
        self._lock = threading.Lock()

    def expected_wait(self) -> float:
        return self.pending * self.cost_s

    def retry_after(self) -> Optional[int]:
        """None when a search would be let in now, else the seconds to wait before trying again."""
        wait = self.expected_wait()
        return max(1, math.ceil(wait - self.budget_s)) if wait > self.budget_s else None

    def admit(self) -> Optional[int]:
        """None when the search may go on (it is counted until :meth:`done`), else the seconds to
        wait before trying again (:meth:`retry_after`)."""
        with self._lock:
            refused = self.retry_after()
            if refused is not None:
                return refused
            if self.pending == 0:
                self._last_answer = time.monotonic()  # a busy spell starts: an idle one is not service time
            self.pending += 1
            return None

    def done(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last_answer is not None:
                self.cost_s += self.smoothing * (now - self._last_answer - self.cost_s)
            self.pending -= 1
            self._last_answer = now if self.pending else None


def _row(text: str, catalog: Catalog) -> int:
    """The catalog row of the image a request names by id (plain ASCII digits), else 404."""
    row = catalog.row_of(int(text)) if is_id(text) else None
    if row is None:
        raise HTTPException(404, f"no image with id {text[:32]!r}")
    return row


def _indexed_file(bundle: Bundle, row: int) -> bytes:
    """The bytes of the image indexed in ``row``, only while the file at its path is that image:
    the path resolved (links and all) lies under one of the collection's folders, the file is opened
    without following a link, is a regular file, and holds the bytes that were indexed (content
    hash); else 404. A photo replaced by a link to another file, or a tampered path, serves nothing."""
    path, expected = bundle.catalog.paths[row], bundle.catalog.hashes[row]
    real = os.path.realpath(path)
    roots = [os.path.realpath(root) for root in bundle.manifest.roots]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise HTTPException(404, f"image {bundle.catalog.ids[row]} is not inside the collection's folders")
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise HTTPException(404, f"image {bundle.catalog.ids[row]} is no longer on disk") from None
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        data = handle.read(bundle.settings.max_file_bytes + 1) if stat.S_ISREG(status.st_mode) else b""
    if content_hash(data) != expected:
        raise HTTPException(404, f"image {bundle.catalog.ids[row]} is no longer the file that was indexed")
    return data


class _Thumbnails:
    """The most recent thumbnails by (path, content hash): a photo that a sync re-indexed with new bytes gets
    a new one. Shared by the request threads."""

    def __init__(self, size: int = 4096):
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __call__(self, bundle: Bundle, row: int) -> bytes:
        key = (bundle.catalog.paths[row], bundle.catalog.hashes[row])
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            thumbnail = thumbnail_jpeg(_indexed_file(bundle, row), key[0], THUMBNAIL)
        except ImageError:
            raise HTTPException(404, f"image {bundle.catalog.ids[row]} is no longer readable") from None
        with self._lock:
            self._items[key] = thumbnail
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        return thumbnail


_thumbnail = _Thumbnails()
