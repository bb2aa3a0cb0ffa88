"""The search service: one process that loads the artifacts once, serving a web page and a JSON API.

- ``GET /``: the page (upload, drop or paste a URL; click a result to search by it), with its
  ``/page.js`` and ``/page.css``. Every response carries a strict Content-Security-Policy: no inline
  script or style, scripts and styles from this server only.
- ``POST /api/search``: multipart upload (field ``image``; repeated, several photos as one query;
  ``like`` fields, indexed ids added to the query; ``unlike`` fields, photos or indexed ids whose
  look counts against a result), or JSON ``{"url": ...}`` or ``{"id": ...}`` (with ``"like"`` and
  ``"unlike"`` lists of indexed ids); ``n``, ``nprobe``, ``max_distance`` and ``box`` (a region of
  the query photo) as form fields, JSON keys or query parameters (any other query parameter, or an
  option given two ways differently, is a 422). Returns the ``predict.py --json`` object.
  ``max_distance`` keeps only results at most that far from the query.
- ``GET /api/images/{id}`` (a JPEG thumbnail), ``GET /api/images/{id}/full`` (the original file).
- ``GET /api/explain?query=ID&id=ID`` (or ``url=URL`` for the query; ``box`` for a region of it),
  ``POST /api/explain`` (multipart: ``image``, ``id``, ``box``): a PNG of why the indexed image
  ``id`` answers the query: the two side by side under heatmaps of where each shows what the other shows.
- ``DELETE /api/images/{id}``, ``POST /api/remove`` (JSON ``{"ids": [...]}``, at most MAX_REMOVE_BYTES): remove images from the
  index (not from the disk). Off unless the server was started with a write token; the request must
  carry it as ``Authorization: Bearer TOKEN``. Every other image keeps its id.
- ``GET /duplicates``: a page of the groups of copies, to review and remove; ``GET
  /api/duplicates?max_distance=D``: the groups as ``imgsim duplicates --json`` prints them (worked
  out once per bundle and distance, then answered from memory).
- ``GET /api/health``, ``GET /api/stats``.

The service follows its artifacts folder: every ``reload_seconds`` it looks whether a fit, add,
sync or removal has committed another bundle there, and serves that one from then on (with the
new fit's encoder after a fit), so deleted photos stop coming back without a restart.

Errors are JSON ``{"error": message}`` with status 400, 401, 403, 404, 408, 409, 413, 415 or 422, and 503
with Retry-After for a search refused under overload (or, served on Ray, one that could not reach
an index shard). A request body must arrive within BODY_GRACE_S
seconds plus one second per MIN_BODY_RATE bytes (else 408): a client that trickles its body holds a
connection, never a search's place. Images are served only by catalog id, never by a path taken from
the request. Each route's work is :class:`pipeline.serve.service.SearchService`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
from importlib import resources
from typing import Any, AsyncIterator, Optional, Sequence
from urllib.parse import urlsplit

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ImageError, InputError, Unavailable, UnknownImage
from ..search.searcher import MAX_QUERY_PHOTOS, QueryPhoto, Searcher
from .service import (MAX_QUEUE_MS, MAX_UPLOAD_BYTES, SEARCH_OPTIONS, Admission, SearchService, indexed_id,
                      indexed_ids, refresh)

log = logging.getLogger(__name__)
# searches run in this many threads at most, the rest wait their turn without running: more threads than this, all
# taking turns on the GIL, starved the event loop under overload (refusals took seconds; docs/BENCHMARKS.md)
SEARCH_THREADS = max(4, 2 * (os.cpu_count() or 1))
BODY_GRACE_S = 10.0  # a request body may take this long, plus a second for each MIN_BODY_RATE bytes
MIN_BODY_RATE = 16 * 1024  # bytes a second: a 20 MB upload has 20 min, a slow-loris client at 1 byte/s 10 s
MAX_REMOVE_BYTES = 1024 * 1024  # the body of POST /api/remove: some 100,000 ids
_STATUS_OF_KIND = {"too_large": 413, "not_image": 415}
_M_ARENA_MAX = -8  # glibc's mallopt parameter
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self' blob: data: http: https:; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
_SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                     (b"x-content-type-options", b"nosniff")]
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
    body_grace_s: float = BODY_GRACE_S,
) -> FastAPI:
    """The FastAPI application around one shared :class:`Searcher`: each route reads its request and
    calls :class:`pipeline.serve.service.SearchService` (which says what the other arguments mean).

    With ``reload_seconds`` > 0, a newer bundle committed to the artifacts folder is served within
    that many seconds (while the application runs: under uvicorn, or inside ``with
    TestClient(app)``). With ``allowed_hosts``, a request whose Host header names another host is
    refused (400): a page on another site cannot reach this service through DNS rebinding. A search
    refused by the admission limit gets 503 with Retry-After before its body is read; an admitted
    one counts once its body has arrived (``body_grace_s``: see BODY_GRACE_S); health and stats are
    always answered.
    """
    service = SearchService(searcher, allow_private_urls, max_upload_bytes, write_token, max_queue_ms)
    hosts = None if allowed_hosts is None else {host.lower().strip("[]") for host in allowed_hosts}
    _share_malloc_arenas()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = asyncio.create_task(_follow(searcher, reload_seconds)) if reload_seconds > 0 else None
        yield
        if follower is not None:
            follower.cancel()

    app = FastAPI(title="Image similarity search", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    web = {name: resources.files("pipeline").joinpath(f"web/{name}").read_bytes() for name in _PAGE_FILES}

    app.add_middleware(_AdmissionGate, admission=service.admission)
    app.add_middleware(_HostAndHeaders, hosts=hosts)  # the outermost: every answer, refusals too, gets the headers
    search_threads = CapacityLimiter(SEARCH_THREADS)

    @app.exception_handler(ImageError)
    async def image_error(_: Request, exc: ImageError) -> JSONResponse:
        return _error(_STATUS_OF_KIND.get(exc.kind, 400), str(exc))

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(404 if isinstance(exc, UnknownImage) else 422, str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})

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
        return service.health()

    @app.get("/api/stats")
    async def stats() -> dict[str, Any]:  # on the event loop too: cheap, answered under any load
        return service.stats()

    @app.post("/api/search")  # admitted by _AdmissionGate
    async def search(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        declared = request.headers.get("content-length") or "0"
        if not declared.isdecimal():
            raise HTTPException(400, f"Content-Length must be a whole number of bytes, got {declared!r}")
        if len(declared) > 15 or int(declared) > max_upload_bytes:
            raise HTTPException(413, f"request of {declared} bytes is over the {max_upload_bytes}-byte limit")
        if not content_type.startswith(("multipart/form-data", "application/json")):
            raise HTTPException(415, "send multipart/form-data with an 'image' file, or JSON with a url or an id")
        request = await _with_capped_body(request, max_upload_bytes, body_grace_s)  # chunked bodies declare no length
        retry_after = service.admission.admit()  # counted from here: its body has arrived, its work starts
        if retry_after is not None:
            return _busy(retry_after)
        try:
            if content_type.startswith("multipart/form-data"):
                form = await request.form(max_files=MAX_QUERY_PHOTOS, max_fields=len(SEARCH_OPTIONS) + MAX_QUERY_PHOTOS)
                photos = await _uploads(form, "image", max_upload_bytes)
                if not photos:
                    raise HTTPException(400, "the form needs a file field named 'image'")
                photos += indexed_ids(form.getlist("like"), "like")
                unlike = await _uploads(form, "unlike", max_upload_bytes, ids=True)
                return await to_thread.run_sync(service.search_upload, photos, unlike, form, request.query_params,
                                                limiter=search_threads)
            return await to_thread.run_sync(service.search_json, await _json(request), request.query_params,
                                            limiter=search_threads)
        finally:
            service.admission.done()

    @app.get("/api/explain")
    def explain(query: str = "", url: str = "", id: str = "", box: str = "") -> Response:  # noqa: A002  (the API's)
        if bool(query) == bool(url):
            raise HTTPException(400, "give the query as exactly one of query=ID or url=URL")
        return Response(service.explain(url or indexed_id(query), id, box), media_type="image/png")

    @app.post("/api/explain")
    async def explain_upload(request: Request) -> Response:
        request = await _with_capped_body(request, max_upload_bytes, body_grace_s)
        form = await request.form(max_files=1, max_fields=4)
        photos = await _uploads(form, "image", max_upload_bytes)
        if len(photos) != 1:
            raise HTTPException(400, "the form needs one file field named 'image'")
        png = await run_in_threadpool(service.explain, photos[0], str(form.get("id", "")), form.get("box"))
        return Response(png, media_type="image/png")

    @app.get("/api/images/{image_id}")
    def thumbnail(image_id: str) -> Response:
        return Response(service.thumbnail(image_id), media_type="image/jpeg")

    @app.get("/api/images/{image_id}/full")
    def full_image(image_id: str) -> Response:
        data, media_type = service.full_image(image_id)
        return Response(data, media_type=media_type)

    @app.delete("/api/images/{image_id}")
    def delete_image(image_id: str, request: Request) -> dict[str, Any]:
        service.authorise(request.headers.get("authorization", ""))
        answer = service.remove([image_id])
        return {"removed": answer["removed"][0], "images": answer["images"]}

    @app.post("/api/remove")
    async def remove_many(request: Request) -> dict[str, Any]:
        service.authorise(request.headers.get("authorization", ""))
        request = await _with_capped_body(request, MAX_REMOVE_BYTES, body_grace_s)
        return await run_in_threadpool(service.remove_listed, await _json(request))

    @app.get("/api/duplicates")
    def duplicates(max_distance: Optional[str] = None) -> dict[str, Any]:
        return service.duplicates(max_distance)

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
    def not_found(path: str) -> None:
        raise HTTPException(404, f"no such page: /{path}")

    return app


class _AdmissionGate:
    """Plain ASGI middleware that refuses a search (``POST /api/search``) that ``admission`` would
    not let in now: 503 with Retry-After, answered before routing and before the body is read, so
    that a refusal costs the service as little as can be. The search handler asks again once the
    body has arrived, and from then on the search counts until its answer is sent."""

    def __init__(self, app: ASGIApp, admission: Admission):
        self.app, self.admission = app, admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/search":
            retry_after = self.admission.retry_after()
            if retry_after is not None:
                return await _busy(retry_after)(scope, receive, send)
        await self.app(scope, receive, send)


def _busy(retry_after: int) -> JSONResponse:
    return JSONResponse({"error": "the server is busy; try again in a moment"}, status_code=503,
                        headers={"Retry-After": str(retry_after)})


class _HostAndHeaders:
    """Plain ASGI middleware (no task or stream per request, unlike ``@app.middleware``): a request
    that names another host than ``hosts`` (None: any) is refused with 400, and every response
    carries the security headers."""

    def __init__(self, app: ASGIApp, hosts: Optional[set[str]]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        host = urlsplit(f"//{Headers(scope=scope).get('host', '')}").hostname or ""
        if self.hosts is not None and host.lower() not in self.hosts:
            refusal = _error(400, f"host {host[:64]!r} is not served here (serve --allowed-hosts)")
            return await refusal(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


async def _uploads(form, field: str, limit: int, ids: bool = False) -> list[QueryPhoto]:
    """The files of a form's ``field`` (repeated for several), each read to at most ``limit`` + 1
    bytes, as (data, filename); with ``ids``, its text values too, as indexed ids (else a text
    value where a file belongs is a 400)."""
    uploads = form.getlist(field)
    texts = [upload for upload in uploads if isinstance(upload, str)]
    if texts and not ids:
        raise HTTPException(400, f"the form's '{field}' fields must be files")
    files = [(await upload.read(limit + 1), upload.filename or "upload") for upload in uploads
             if not isinstance(upload, str)]
    return files + indexed_ids(texts, field)


async def _json(request: Request) -> Any:
    """The request's JSON body; 400 when it is not JSON."""
    try:
        return await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise HTTPException(400, "the request body is not valid JSON") from None


async def _with_capped_body(request: Request, limit: int, grace_s: float) -> Request:
    """The request with its body read into memory, refused (413) as soon as it passes ``limit``
    bytes, whatever its Content-Length said, and (408) when it has not arrived within ``grace_s``
    seconds plus one for every MIN_BODY_RATE bytes; parsing then works on that bounded copy."""
    body = bytearray()
    loop, chunks = asyncio.get_running_loop(), request.stream()
    started = loop.time()
    while True:
        left = started + grace_s + len(body) / MIN_BODY_RATE - loop.time()
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=max(left, 0.0))
        except StopAsyncIteration:
            break
        except ClientDisconnect:  # nobody is left to answer: the shortest answer, and no traceback in the log
            raise HTTPException(400, "the client went away before its request body arrived") from None
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body arrived too slowly (at least {MIN_BODY_RATE} bytes a second "
                                     f"after the first {grace_s:g} s)") from None
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
        problem = await run_in_threadpool(refresh, searcher)
        if problem is not None and problem != said:
            log.warning(problem)
        said = problem


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


