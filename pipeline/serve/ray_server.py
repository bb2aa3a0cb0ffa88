"""``imgsim serve --ray``: the search service as a Ray Serve application, past one machine.

Three deployments behind the same HTTP API and page as the one-process server (:mod:`pipeline.serve.server`):

- **encoder** (:class:`EncoderReplica`): the fit's LiteRT export; its replicas autoscale between
  the bounds given, and a router's queries arriving together are encoded in one call, as today;
- **shard-0 ... shard-N-1** (:class:`ShardReplica`): each holds whole clusters of the index, spread
  so that every shard holds about the same number of vectors (:func:`pipeline.search.shards.shard_plan`),
  read from the bundle's vector file into its own memory; each shard may have several replicas;
- **router** (:class:`Router`, the ingress): the catalog, the centroids and the service; a query is
  routed, sent only to the shards owning its ``nprobe`` clusters, and their answers merged
  (:class:`pipeline.search.shards.ShardedIndex`): the one-process server's answer, ids and distances.

One bundle version per query: the router reads one bundle for the whole query (as the one-process
server does, :class:`pipeline.search.searcher.Searcher`) and names that bundle's folder in every call to an
encoder or a shard; a shard replica answers from exactly that folder, loading it on the first call
that names it and keeping the LOADED_VERSIONS newest (so a replica's memory is twice its share of the
vectors while a new version comes in). A commit (fit, add, sync, remove, restore)
writes a new folder and never touches the old ones, so a query in flight finishes on the version
it started on while the next queries use the new one.

Faults: a call to a shard or an encoder that fails (its replica died, say) is tried again, on
whichever replica Ray Serve routes it to, up to ATTEMPTS times; Ray Serve restarts dead replicas.
A query that still cannot reach every shard it needs gets 503 (:class:`pipeline.errors.Unavailable`),
never fewer results.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from ray import serve

from ..bundle.artifacts import Bundle
from ..bundle.layout import ENCODER, EXPORT
from ..errors import ArtifactError, InputError, Unavailable
from ..index.clustered import ClusteredIndex
from ..model.runtime import LiteRTEncoder
from ..search.searcher import Searcher
from ..search.shards import FanOut, ShardedIndex, ShardScanner, default_shards

log = logging.getLogger(__name__)
APP_NAME = "imgsim"
ATTEMPTS = 4  # tries of a call to a shard or an encoder before the query gets 503
RETRY_PAUSE_S = 0.25  # between tries: time for Ray Serve to route around a dead replica
CALL_TIMEOUT_S = 30.0
LOADED_VERSIONS = 2  # bundle versions a shard replica holds: the current and the one before (queries in flight)
# a shard replica runs its scans on Ray Serve's own event loop, not on a second loop in a thread of its own:
# a quarter less CPU time a call (1.5 vs 2.0 ms, measured side by side); its scans never block for long
SHARD_ACTOR_OPTIONS = {"runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}}


@dataclass
class RayServeOptions:
    """How the application is laid out: ``shards`` index shards (None: one per SHARD_BYTES of
    vectors) of ``shard_replicas`` replicas each; encoder replicas between ``encoder_replicas``
    (min, max), autoscaled, each with ``encoder_gpus`` of a GPU (then on Keras in mixed precision);
    ``service``: create_app's keyword arguments."""

    artifacts: str
    shards: Optional[int] = None
    shard_replicas: int = 1
    encoder_replicas: tuple[int, int] = (1, 1)
    batch_window_ms: float = 5.0
    max_pixels: Optional[int] = None
    service: dict[str, Any] = field(default_factory=dict)
    encoder_gpus: float = 0.0


def direct(handle):
    """``handle`` with its calls sent to a replica by value over gRPC rather than as Ray tasks with
    their arguments in the object store: about half the CPU time and half the latency of a query's
    calls to its shards, measured side by side (docs/SCALE.md)."""
    return handle.options(_by_reference=False)


def _call(what: str, send, sent=None):
    """The answer to ``send()`` (a Ray Serve call; ``sent``: its first try, already sent), tried
    ATTEMPTS times; Unavailable naming ``what``."""
    for attempt in range(ATTEMPTS):
        try:
            return (sent if attempt == 0 and sent is not None else send()).result(timeout_s=CALL_TIMEOUT_S)
        except Exception as exc:  # a dead replica, a timeout, an error in the replica: all the same to a client
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            if attempt + 1 < ATTEMPTS:
                time.sleep(RETRY_PAUSE_S)
    raise Unavailable(f"{what} did not answer ({reason}); no partial answer is given, try again")


class EncoderReplica:
    """Runs fitted encoders, each loaded once from its bundle folder: the LiteRT export, checked
    against the SHA-256 the router gives (the bundle's manifest's); with ``gpu``, the Keras model in
    mixed precision (LiteRT has no GPU path here). The router checks either on the bundle's probe
    images before it serves a query with it."""

    def __init__(self, gpu: bool = False):
        self.gpu = gpu
        self._loaded: dict[str, Any] = {}

    def _encoder(self, folder: str, sha256: str):
        if sha256 not in self._loaded:
            if self.gpu:
                from ..model.runtime import KerasEncoder, load_keras_model

                self._loaded[sha256] = KerasEncoder(load_keras_model(Path(folder) / ENCODER), float16=True)
            else:
                import hashlib

                path = Path(folder) / EXPORT
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise ArtifactError(f"{path}: the encoder's export is not the one this bundle was made with")
                self._loaded[sha256] = LiteRTEncoder(data, source=str(path))
        return self._loaded[sha256]

    def encode(self, folder: str, sha256: str, images: np.ndarray) -> np.ndarray:
        return self._encoder(folder, sha256).encode(images)

    def encode_outputs(self, folder: str, sha256: str, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._encoder(folder, sha256).encode_outputs(images)


class RemoteEncoder:
    """The router's encoder (:class:`pipeline.model.runtime.Encoder`): the encoder deployment, told which
    bundle's export to run."""

    def __init__(self, handle, bundle: Bundle, gpu: bool):
        self.handle, self.folder, self.sha256 = handle, str(bundle.folder), bundle.encoder_sha256()
        self.runtime = "keras" if gpu else "litert"
        self.image_size, self.dims = bundle.settings.image_size, int(bundle.embeddings.shape[1])
        self.batch_size = 16

    def encode(self, images: np.ndarray) -> np.ndarray:
        return _call("the encoder", lambda: self.handle.encode.remote(self.folder, self.sha256, images))

    def encode_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return _call("the encoder", lambda: self.handle.encode_outputs.remote(self.folder, self.sha256, images))


class ShardReplica:
    """Shard ``shard`` of ``shards``: scans its clusters of the bundle each call names (see the
    module's docstring), keeping the LOADED_VERSIONS newest bundles open."""

    def __init__(self, shard: int, shards: int):
        self.shard, self.shards = shard, shards
        self._loaded: OrderedDict[str, ShardScanner] = OrderedDict()
        self._loading = threading.Lock()

    def _scanner(self, folder: str) -> ShardScanner:
        """The scanner of ``folder``, loaded on first use (one load at a time; the oldest loaded
        version dropped past LOADED_VERSIONS); one already loaded is returned without waiting."""
        scanner = self._loaded.get(folder)
        if scanner is None:
            with self._loading:
                if folder not in self._loaded:
                    self._loaded[folder] = ShardScanner(folder, self.shard, self.shards)
                    while len(self._loaded) > LOADED_VERSIONS:
                        self._loaded.popitem(last=False)
                scanner = self._loaded[folder]
        return scanner

    async def scan(self, folder: str, queries: np.ndarray, probed: np.ndarray,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
        """A scan (about a millisecond) runs on the replica's event loop: a sync method would hop to
        Ray Serve's thread pool and back, which cost about 7 ms a query of four shards, measured side
        by side on the 2-core machine of docs/BENCHMARKS.md. Loading a bundle (seconds) runs in a
        thread, so queries on the version already loaded go on meanwhile."""
        scanner = self._loaded.get(folder) or await asyncio.to_thread(self._scanner, folder)
        return scanner.scan(queries, probed, n)

    def memory(self) -> dict[str, Any]:
        """This replica's process, resident memory (anonymous, and the mapped files' pages) and the
        bundle versions it holds open."""
        status = Path("/proc/self/status").read_text()
        resident = {kind: int(status.split(f"{kind}:")[1].split()[0]) / 1024
                    for kind in ("VmRSS", "RssAnon", "RssFile")}
        return {"pid": os.getpid(), "rss_mb": resident["VmRSS"], "anonymous_mb": resident["RssAnon"],
                "file_pages_mb": resident["RssFile"], "versions": list(self._loaded)}


def fan_out(handles: list) -> FanOut:
    """The router's calls to the shard deployments (``handles``, by shard): every shard asked at
    once, then each answer awaited (a failed call sent again, see :func:`_call`)."""
    def ask(folder: str, queries: np.ndarray, n: int, asked: dict[int, np.ndarray]):
        def send(shard: int):
            return lambda: handles[shard].scan.remote(folder, queries, asked[shard], n)

        sent = {}
        for shard in asked:  # every shard at once
            try:
                sent[shard] = send(shard)()
            except Exception:  # tried again below
                sent[shard] = None
        return {shard: _call(f"shard {shard} of {len(handles)}", send(shard), sent[shard]) for shard in asked}
    return ask


class ShardedSearcher(Searcher):
    """A :class:`Searcher` whose encoder is the encoder deployment and whose index is sharded over
    the shard deployments; everything else (ranking, copies, expansion) is the one-process one's."""

    def __init__(self, bundle: Bundle, encoder, shards: list, max_pixels: Optional[int], batch_window_ms: float,
                 gpu: bool = False):
        self._encoder_handle, self._shard_handles, self._gpu = encoder, shards, gpu
        options = {} if max_pixels is None else {"max_pixels": max_pixels}
        super().__init__(bundle, batch_window_ms=batch_window_ms, runtime="litert", **options)

    def _encoder_for(self, bundle: Bundle):
        if self._gpu and bundle.settings.precision == "int8":
            raise InputError(f"{bundle.folder}: its images were described by its int8 export, which the float "
                             f"encoder of a GPU would not match; serve it without --encoder-gpus")
        encoder = RemoteEncoder(self._encoder_handle, bundle, self._gpu)
        bundle.check_encoder(encoder)  # its probe images, as a bundle checks every encoder it loads
        return encoder

    def _index_for(self, bundle: Bundle) -> ClusteredIndex:
        return ShardedIndex(bundle.index, bundle.folder, len(self._shard_handles), fan_out(self._shard_handles))

    def serving_stats(self) -> dict[str, Any]:
        """The shards (their clusters, vectors and running replicas) and the encoder's replicas."""
        index = self.index
        try:
            deployments = serve.status().applications[APP_NAME].deployments
            running = {name: deployment.replica_states.get("RUNNING", 0) for name, deployment in deployments.items()}
        except Exception:  # the controller is busy or restarting: the layout still holds
            running = {}
        return {"shards": [{**sizes, "replicas": running.get(f"shard-{sizes['shard']}")}
                           for sizes in index.shard_sizes()],
                "encoder_replicas": running.get("encoder")}


@serve.deployment(name="router")
@serve.ingress()
class Router:
    """The ingress: the service's HTTP API over a :class:`ShardedSearcher`."""

    def __init__(self, options: RayServeOptions, encoder, *shards):
        from concurrent.futures import ThreadPoolExecutor

        self.options = options
        with ThreadPoolExecutor(1) as thread:  # the encoder's probe check waits on a call: not on the event loop
            self.searcher = thread.submit(
                ShardedSearcher, Bundle.load(options.artifacts), direct(encoder), [direct(shard) for shard in shards],
                options.max_pixels, options.batch_window_ms, options.encoder_gpus > 0).result()

    def __serve_build_asgi_app__(self):
        from .server import create_app

        return create_app(self.searcher, **self.options.service)


def application(options: RayServeOptions):
    """The Ray Serve application: the router bound to the encoder and the shard deployments."""
    bundle = Bundle.load(options.artifacts)  # checked here, before any replica starts: one clear error
    bundle.check_export_file()
    shards = options.shards or default_shards(bundle.index)
    low, high = options.encoder_replicas
    scaling = ({"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": low}}
               if high > low else {"num_replicas": low})
    if options.encoder_gpus > 0:
        scaling["ray_actor_options"] = {"num_cpus": 1, "num_gpus": options.encoder_gpus}
    encoder = serve.deployment(EncoderReplica, name="encoder").options(**scaling)
    replicas = [serve.deployment(ShardReplica, name=f"shard-{shard}")
                .options(num_replicas=options.shard_replicas, ray_actor_options=SHARD_ACTOR_OPTIONS)
                .bind(shard, shards) for shard in range(shards)]
    return Router.bind(options, encoder.bind(options.encoder_gpus > 0), *replicas), shards


def run(options: RayServeOptions, address: Optional[str], host: str, port: int) -> None:
    """Start (or join, at ``address``) a Ray cluster, deploy the application on ``host``:``port``
    and serve until interrupted."""
    import ray

    app, shards = application(options)
    low, high = options.encoder_replicas
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's start-up notices are not the user's concern
    # a local cluster gets a CPU slot for every replica, beyond this machine's cores if need be (they share them)
    slots = None if address else max(os.cpu_count() or 1, 1 + high + shards * options.shard_replicas)
    ray.init(address=address, num_cpus=slots, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=False)
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # Serve's notices of each step, on the driver
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # again: starting Serve sets its logger's level
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
    print(f"serving {options.artifacts} on http://{host}:{port}/ (Ray Serve: {shards} shards, {options.shard_replicas} "
          f"replica(s) each; {low}-{high} encoder replicas)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # how a server is stopped: not an error, and a second Ctrl-C does not cut the shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:  # the application leaves the cluster it joined; a cluster started here stops with it
        if address:
            serve.delete(APP_NAME)
        ray.shutdown()
