"""The search service: one process that loads the artifacts once, serving a web page and a JSON API.

- ``GET /``: the page (upload, drop or paste a URL; click a result to search by it), with its
  ``/page.js`` and ``/page.css``. Every response carries a strict Content-Security-Policy: no inline
  script or style, scripts and styles from this server only.
- ``POST /api/search``: multipart upload (field ``image``), or JSON ``{"url": ...}`` or ``{"id": ...}``;
  ``n`` and ``nprobe`` as form fields or JSON keys. Returns the ``predict.py --json`` object.
  ``max_distance`` keeps only results at most that far from the query.
- ``GET /api/images/{id}`` (a JPEG thumbnail), ``GET /api/images/{id}/full`` (the original file).
- ``DELETE /api/images/{id}``, ``POST /api/remove`` (JSON ``{"ids": [...]}``): remove images from the
  index (not from the disk). Off unless the server was started with a write token; the request must
  carry it as ``Authorization: Bearer TOKEN``. Every other image keeps its id.
- ``GET /duplicates``: a page of the groups of copies, to review and remove; ``GET
  /api/duplicates?max_distance=D``: the groups as ``imgsim duplicates --json`` prints them (worked
  out once per bundle and distance, then answered from memory).
- ``GET /api/health``, ``GET /api/stats``.

The service follows its artifacts folder: every ``reload_seconds`` it looks whether a fit, add,
sync or removal has committed another bundle there, and serves that one from then on (with the
new fit's encoder after a fit), so deleted photos stop coming back without a restart.

Errors are JSON ``{"error": message}`` with status 400, 401, 403, 404, 409, 413, 415 or 422.
Images are served only by catalog id, never by a path taken from the request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import hmac
import logging
import math
import mimetypes
import os
import stat
import threading
import time
from importlib import resources
from typing import Any, AsyncIterator, Optional, Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .artifacts import Bundle
from .catalog import Catalog
from .errors import ArtifactError, ImageError, InputError, UnknownImage
from .fetch import fetch_url
from .images import content_hash, thumbnail_jpeg
from .collection import is_id, remove_images
from .duplicates import CANDIDATE_DISTANCE, Duplicates, find_duplicates
from .search import Searcher, SearchOptions, parse_distance

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_PIXELS = 40_000_000  # a query (upload or URL) decoding to more is refused (413); files of the collection: images.MAX_IMAGE_PIXELS
MAX_RESULTS = 100
THUMBNAIL = 256
MAX_QUEUE_MS = 500.0  # a search expected to wait longer than this is refused at once (503)
MIN_TOKEN_CHARACTERS = 16
_STATUS_OF_KIND = {"too_large": 413, "not_image": 415}
_M_ARENA_MAX = -8  # glibc's mallopt parameter
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self' blob: data: http: https:; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
_PAGE_FILES = {"index.html": "text/html; charset=utf-8", "page.js": "text/javascript; charset=utf-8",
               "page.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml",
               "duplicates.html": "text/html; charset=utf-8", "duplicates.js": "text/javascript; charset=utf-8"}
# the page's files by route; browsers ask for /favicon.ico whatever the page says
_PAGE_ROUTES = {"/": "index.html", "/page.js": "page.js", "/page.css": "page.css", "/duplicates": "duplicates.html",
                "/duplicates.js": "duplicates.js", "/favicon.svg": "favicon.svg", "/favicon.ico": "favicon.svg"}


def create_app(
    searcher: Searcher,
    allow_private_urls: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    write_token: Optional[str] = None,
    reload_seconds: float = 0.0,
    allowed_hosts: Optional[Sequence[str]] = None,
    max_queue_ms: float = MAX_QUEUE_MS,
) -> FastAPI:
    """The FastAPI application around one shared :class:`Searcher`.

    URL queries may reach loopback and private addresses only with ``allow_private_urls``. Images
    can be deleted only with ``write_token`` set (at least MIN_TOKEN_CHARACTERS long), by requests
    that carry it. With ``reload_seconds`` > 0, a newer bundle committed to the artifacts folder is
    served within that many seconds (while the application runs: under uvicorn, or inside ``with
    TestClient(app)``). With ``allowed_hosts``, a request whose Host header names another host is
    refused (400): a page on another site cannot reach this service through DNS rebinding. A search
    whose expected wait is over ``max_queue_ms`` is refused at once with 503 and Retry-After
    (:class:`Admission`); health and stats are always answered.
    """
    check_write_token(write_token)
    hosts = None if allowed_hosts is None else {host.lower().strip("[]") for host in allowed_hosts}
    admission = Admission(max_queue_ms / 1000)
    _share_malloc_arenas()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = asyncio.create_task(_follow(searcher, reload_seconds)) if reload_seconds > 0 else None
        yield
        if follower is not None:
            follower.cancel()

    app = FastAPI(title="Image similarity search", docs_url=None, redoc_url=None, lifespan=lifespan)
    web = {name: resources.files("pipeline").joinpath(f"web/{name}").read_bytes() for name in _PAGE_FILES}

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if hosts is not None and host.lower() not in hosts:
            response = _error(400, f"host {host[:64]!r} is not served here (serve --allowed-hosts)")
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(ImageError)
    async def image_error(_: Request, exc: ImageError) -> JSONResponse:
        return _error(_STATUS_OF_KIND.get(exc.kind, 400), str(exc))

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(404 if isinstance(exc, UnknownImage) else 422, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    def static_file(name: str):
        return lambda: Response(web[name], media_type=_PAGE_FILES[name])

    for route, name in _PAGE_ROUTES.items():
        app.add_api_route(route, static_file(name), methods=["GET"], response_class=Response, name=route)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:  # on the event loop: it answers while every worker thread is busy
        return {"status": "ok", "images": len(searcher.catalog)}

    @app.get("/api/stats")
    async def stats() -> dict[str, Any]:  # on the event loop too: cheap, answered under any load
        bundle = searcher.bundle  # one bundle for the whole answer
        manifest = bundle.manifest
        return {
            "images": len(bundle.catalog),
            "clusters": bundle.index.nlist,
            "nprobe": bundle.index.nprobe_,
            "skipped": len(manifest.skipped),
            "created": manifest.created,
            "data_dir": manifest.data_dir,
            "labels": searcher.labels,
            "settings": manifest.settings.to_dict(),
            "queue": {"searches": admission.pending, "expected_wait_ms": round(admission.expected_wait() * 1000, 1),
                      "max_queue_ms": max_queue_ms},
        }

    @app.post("/api/search")
    async def search(request: Request) -> Any:
        retry_after = admission.admit()
        if retry_after is not None:  # refused before the body is read: at once, whatever the load
            return JSONResponse({"error": "the server is busy; try again in a moment"}, status_code=503,
                                headers={"Retry-After": str(retry_after)})
        try:
            return await _search(request)
        finally:
            admission.done()

    async def _search(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        declared = request.headers.get("content-length") or "0"
        if not declared.isdecimal():
            raise HTTPException(400, f"Content-Length must be a whole number of bytes, got {declared!r}")
        if len(declared) > 15 or int(declared) > max_upload_bytes:
            raise HTTPException(413, f"request of {declared} bytes is over the {max_upload_bytes}-byte limit")
        request = await _with_capped_body(request, max_upload_bytes)  # chunked bodies declare no length
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "the form needs a file field named 'image'")
            data = await upload.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"upload over the {max_upload_bytes}-byte limit")
            options = SearchOptions.parse(form.get("n"), form.get("nprobe"), form.get("max_distance"), MAX_RESULTS)
            result = await run_in_threadpool(searcher.search_bytes, data, upload.filename or "upload", options)
        elif content_type.startswith("application/json"):
            try:
                body = await request.json()
            except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
                raise HTTPException(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict) or ("url" in body) == ("id" in body):
                raise HTTPException(400, 'send JSON with exactly one of "url" or "id"')
            options = SearchOptions.parse(body.get("n"), body.get("nprobe"), body.get("max_distance"), MAX_RESULTS)
            if "id" in body:
                text = str(body["id"])
                if not is_id(text):
                    raise HTTPException(404, f"no image with id {text[:32]!r}")
                result = await run_in_threadpool(searcher.search_indexed, int(text), options)
            else:
                url = str(body["url"])
                data = await run_in_threadpool(fetch_url, url, allow_private=allow_private_urls,
                                               max_bytes=max_upload_bytes)
                result = await run_in_threadpool(searcher.search_bytes, data, url, options)
        else:
            raise HTTPException(415, "send multipart/form-data with an 'image' file, or JSON with a url or an id")
        return result.to_dict()

    @app.get("/api/images/{image_id}")
    def thumbnail(image_id: str) -> Response:
        bundle = searcher.bundle  # one bundle for the request, even if a newer one is swapped in meanwhile
        row = _row(image_id, bundle.catalog)
        return Response(_thumbnail(bundle, row), media_type="image/jpeg")

    @app.get("/api/images/{image_id}/full")
    def full_image(image_id: str) -> Response:
        bundle = searcher.bundle
        row = _row(image_id, bundle.catalog)
        path = bundle.catalog.paths[row]
        return Response(_indexed_file(bundle, row),
                        media_type=mimetypes.guess_type(path)[0] or "application/octet-stream")

    def authorise(request: Request) -> None:
        if write_token is None:
            raise HTTPException(403, "removing is off: start the server with --write-token-file to allow it")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), write_token.encode()):
            raise HTTPException(401, "removing needs the server's write token: Authorization: Bearer TOKEN")

    def remove(ids: list[str]) -> dict[str, Any]:
        try:  # by id, in the bundle current now: an id that a sync or removal has taken out meanwhile is a 404
            change = remove_images(ids, searcher.bundle.folder.parent)
        except ArtifactError as exc:  # another writer holds the bundle
            raise HTTPException(409, str(exc)) from None
        problem = _refresh(searcher)  # the removal is committed whatever happens here; the follower retries
        if problem is not None:
            log.warning(problem)
        return {"removed": [int(image_id) for image_id in ids], "images": change.images}

    @app.delete("/api/images/{image_id}")
    def delete_image(image_id: str, request: Request) -> dict[str, Any]:
        authorise(request)
        if not is_id(image_id):
            raise HTTPException(404, f"no image with id {image_id[:32]!r}")
        answer = remove([image_id])
        return {"removed": answer["removed"][0], "images": answer["images"]}

    @app.post("/api/remove")
    async def remove_many(request: Request) -> dict[str, Any]:
        authorise(request)
        try:
            body = await request.json()
        except ValueError:
            raise InputError("expected a JSON object {\"ids\": [...]}") from None
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(type(i) is int and i >= 0 for i in ids):
            raise InputError("ids must be a non-empty list of image ids (whole numbers from 0)")
        return await run_in_threadpool(remove, [str(image_id) for image_id in ids])

    groups_by_bundle: dict[tuple[str, float], Duplicates] = {}
    grouping = threading.Lock()

    @app.get("/api/duplicates")
    def duplicates(max_distance: Optional[str] = None) -> dict[str, Any]:
        limit = CANDIDATE_DISTANCE if max_distance in (None, "") else parse_distance(max_distance, "max_distance")
        bundle = searcher.bundle  # one bundle for the whole answer, even if a removal swaps it meanwhile
        with grouping:  # one search at a time; a second request for the same bundle reads the first's answer
            key = (str(bundle.folder), limit)
            if key not in groups_by_bundle:
                groups_by_bundle.clear()  # only the current bundle's answers are worth keeping
                groups_by_bundle[key] = find_duplicates(bundle, limit, progress=False)
            return groups_by_bundle[key].to_dict()

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
    def not_found(path: str) -> None:
        raise HTTPException(404, f"no such page: /{path}")

    return app


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

    def admit(self) -> Optional[int]:
        """None when the search may go on (it is counted until :meth:`done`), else the seconds to
        wait before trying again."""
        with self._lock:
            wait = self.expected_wait()
            if wait > self.budget_s:
                return max(1, math.ceil(wait - self.budget_s))
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


async def _with_capped_body(request: Request, limit: int) -> Request:
    """The request with its body read into memory, refused (413) as soon as it passes ``limit``
    bytes, whatever its Content-Length said; parsing then works on that bounded copy."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"request body over the {limit}-byte limit")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return Request(request.scope, replay)


async def _follow(searcher: Searcher, seconds: float) -> None:
    """Serve each bundle committed to the searcher's artifacts folder, looking every ``seconds``;
    one that cannot be loaded (a commit under way, a corrupt file) is tried again at the next look,
    the service answering from the bundle it has meanwhile. Each new problem is logged once."""
    said = None
    while True:
        await asyncio.sleep(seconds)
        problem = await run_in_threadpool(_refresh, searcher)
        if problem is not None and problem != said:
            log.warning(problem)
        said = problem


def _refresh(searcher: Searcher) -> Optional[str]:
    """:meth:`Searcher.refresh`; what went wrong, as one line, instead of an exception."""
    try:
        searcher.refresh()
    except Exception as exc:  # a background look must never take the service down
        reason = exc if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        return f"still serving {searcher.bundle.folder}: {reason}"
    return None


def _share_malloc_arenas(arenas: int = 2) -> None:
    """Have the service's request threads share a few glibc malloc arenas: memory freed after one
    large decode is then reused by the next instead of kept by each thread's own arena, so the
    decode budget bounds the process's memory (docs/BENCHMARKS.md). No-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
