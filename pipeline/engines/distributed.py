"""The engine on a Ray cluster (Ray Data), for folders one machine cannot embed in time.

:class:`RayEngine` does what :class:`pipeline.engines.engine.LocalEngine` does, spread over a cluster: the
folder is listed by tasks (one a first-level folder), the file paths become a Ray Dataset;
decoding (the project's own :func:`pipeline.data.images.prepare_image`) runs in CPU tasks; embedding
runs in a pool of actors that each load the fitted encoder once (its LiteRT export on CPUs, its
Keras model in mixed precision on GPUs); the vectors come back in shards, written to disk as they
arrive and put back in input order. A file that cannot be decoded is skipped and listed exactly as
on one machine. Ray Data retries a task whose worker dies and restarts a dead actor (its default
for actor pools), so a killed worker costs time, not images; the rows are checked to come back
exactly once. Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..config import FitConfig
from ..data.dataset import EmbeddedImages, SkippedImage, load_image
from ..data.images import ImageRecord, find_images, list_images
from ..errors import InputError, shown
from ..index.clustered import nearest_centroids
from ..model.runtime import KerasEncoder, LiteRTEncoder, load_keras_model, resolve_runtime
from .engine import EncoderSource

log = logging.getLogger(__name__)
DECODE_BATCH = 32  # images per decode task


@dataclass
class RayEngine:
    """Where and how wide to run: ``address`` of a running cluster (None: start a local one),
    ``workers`` encoder actors (None: one per two CPUs of the cluster), each reserving
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (fractions allowed; GPUs only where the
    cluster has them). Actors on CPUs run the encoder on ``runtime`` (None: LiteRT where
    installed), actors with a GPU on Keras."""

    address: Optional[str] = None
    workers: Optional[int] = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    runtime: Optional[str] = None

    @property
    def encoder_runtime(self) -> str:
        """What the encoder actors run the encoder on."""
        return "keras" if self.gpus_per_worker > 0 else resolve_runtime(self.runtime)

    def connect(self):
        """The ``ray`` module, connected to the cluster (started here when there is no address)."""
        try:
            import ray
        except ImportError:
            raise InputError('--ray needs the Ray extra: pip install -e ".[ray]"') from None
        logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's start-up notices are not the user's concern
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
            log.info("Ray cluster: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU", 0),
                     ray.cluster_resources().get("GPU", 0))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours instead: one bar, nothing else on the terminal
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data sets its own level when imported
        return ray

    def assign(self, vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
        """The nearest centroid of each (prepared) vector, found by tasks on the cluster, in order."""
        ray = self.connect()
        options = ray.data.DataContext.get_current().execution_options
        options.preserve_order, ordered = True, options.preserve_order
        try:
            data = ray.data.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
            nearest = data.map_batches(_nearest_centroid, fn_kwargs={"centroids": centroids, "metric": metric},
                                       batch_size=16_384, num_cpus=0.5)
            return np.concatenate([batch["cluster"] for batch in nearest.iter_batches(batch_size=None,
                                                                                      batch_format="numpy")])
        finally:
            options.preserve_order = ordered

    def find_images(self, root: str | os.PathLike, extensions: Optional[Collection[str]] = None) -> list[ImageRecord]:
        """:func:`pipeline.data.images.find_images` with each first-level folder listed by a task on the cluster:
        the same records in the same order (the files of ``root`` itself first, then each folder's, sorted;
        a folder linked twice, listed once)."""
        if not Path(root).is_dir():
            raise InputError(f"{root}: not a folder")
        folder = Path(os.path.realpath(root))
        ray = self.connect()
        top = find_images(folder, recursive=False, extensions=extensions)
        subfolders, seen = [], {str(folder)}
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
        for name in names:
            real = os.path.realpath(folder / name)
            if real not in seen:
                seen.add(real)
                subfolders.append(name)
        if not subfolders:
            return top
        named = "" if extensions is None else ",".join(sorted(extensions))  # "": every image, by name or content
        listed = ray.data.from_items([{"folder": str(folder / name), "root": str(folder), "extensions": named}
                                      for name in subfolders],
                                     override_num_blocks=len(subfolders))
        found = listed.map_batches(_list_folder, batch_size=1, num_cpus=0.25)
        position = {name: number for number, name in enumerate(subfolders)}
        rows = sorted(found.iter_rows(), key=lambda row: (position[row["label"]], row["order"]))
        return top + [ImageRecord(row["path"], row["label"]) for row in rows]

    def embed(self, records: Sequence[ImageRecord], source: EncoderSource, config: FitConfig,
              scratch_dir: Optional[str | os.PathLike] = None) -> EmbeddedImages:
        """Decode and embed image files on the cluster with the encoder of ``source`` (a bundle, or
        a fit's staging folder), as ``config`` says; the vectors arrive in shards under
        ``scratch_dir``. The encoder's file travels to the actors in Ray's object store."""
        runtime = self.encoder_runtime
        if runtime == "keras" and config.precision == "int8":
            raise InputError("an int8 fit describes images by its int8 export, which the float encoder of GPU workers "
                             "or --runtime keras would not match: run the workers on CPUs with LiteRT")
        ray = self.connect()
        model = source.model_bytes(runtime)
        rows = ray.data.from_items([{"row": row, "path": record.path} for row, record in enumerate(records)],
                                   override_num_blocks=max(1, min(len(records) // DECODE_BATCH, 1000)))
        decoded = rows.map_batches(_decode_batch, batch_size=DECODE_BATCH, num_cpus=0.25,
                                   fn_kwargs={"image_size": config.image_size, "max_bytes": config.max_file_bytes})
        vectors = decoded.map_batches(
            EncoderActor, fn_constructor_kwargs={"model": model, "runtime": runtime,
                                                 "threads": max(1, round(self.cpus_per_worker)),
                                                 "gpu": self.gpus_per_worker > 0},
            batch_size=(LiteRTEncoder if runtime == "litert" else KerasEncoder).batch_size,
            compute=ray.data.ActorPoolStrategy(size=self.pool_size()),
            # three quarters of a worker's CPUs are reserved, so that decode tasks (a quarter each) always find room
            num_cpus=self.cpus_per_worker * 0.75, num_gpus=self.gpus_per_worker or None)
        with tempfile.TemporaryDirectory(prefix="imgsim-shards-", dir=scratch_dir) as shards:
            with tqdm(total=len(records), desc="embed (ray)", unit="img") as progress:
                for number, batch in enumerate(vectors.iter_batches(batch_size=None, batch_format="numpy")):
                    plain = {name: column.astype(str) if column.dtype == object else column
                             for name, column in batch.items()}
                    np.savez(Path(shards) / f"{number:06d}.npz", **plain)  # the driver holds one batch at a time
                    progress.update(len(batch["row"]))
            return _read_shards(Path(shards), records)

    def pool_size(self) -> int:
        """The number of encoder actors. Actors that ask for more GPUs than the cluster has would
        wait for them: an InputError on a local cluster, which cannot grow; a warning on another,
        whose autoscaler may yet add GPU nodes."""
        resources = self.connect().cluster_resources()
        gpus = resources.get("GPU", 0)
        if self.gpus_per_worker > gpus:
            message = (f"--ray-gpus-per-worker {self.gpus_per_worker:g} is more than the cluster's GPUs ({gpus:g})")
            if self.address is None:
                raise InputError(f"{message}; leave it at 0 to embed on CPUs")
            log.warning("%s: the encoder actors wait until GPU nodes join", message)
        return self.workers or max(1, int(resources.get("CPU", 2) // 2))


def _list_folder(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The image files under one first-level folder, labelled with its name, in find_images' order."""
    folder, root = Path(str(batch["folder"][0])), Path(str(batch["root"][0]))
    extensions = None if batch["extensions"][0] == "" else str(batch["extensions"][0]).split(",")
    paths = [record.path for record in list_images(folder, root, extensions=extensions)]
    return {"path": np.array(paths, dtype=str), "label": np.array([folder.name] * len(paths), dtype=str),
            "order": np.arange(len(paths))}


def _nearest_centroid(batch: dict[str, np.ndarray], centroids: np.ndarray, metric: str) -> dict[str, np.ndarray]:
    """The nearest centroid of each vector of a batch, as the index routes a query."""
    return {"cluster": nearest_centroids(batch["data"], centroids, metric).astype(np.int32)}


def _decode_batch(batch: dict[str, np.ndarray], image_size: int, max_bytes: int) -> dict[str, np.ndarray]:
    """Decode a batch of paths as a fit does; an unreadable file gets a black image and its reason."""
    images = np.zeros((len(batch["path"]), image_size, image_size, 3), np.uint8)
    hashes, errors = [], []
    for slot, path in enumerate(batch["path"]):
        loaded = load_image(ImageRecord(str(path), None), image_size, max_bytes)
        if isinstance(loaded, SkippedImage):
            hashes.append("")
            errors.append(loaded.reason)
        else:
            images[slot] = loaded[0]
            hashes.append(loaded[1])
            errors.append("")
    return {"row": batch["row"], "image": images, "hash": np.array(hashes), "error": np.array(errors)}


class EncoderActor:
    """A Ray actor holding the encoder, loaded once from ``model`` (the bytes of its LiteRT export,
    or of its Keras file for ``runtime`` "keras"): decoded images in, descriptors out. An actor
    given a GPU computes in mixed precision (:func:`pipeline.model.runtime.mixed_precision`)."""

    def __init__(self, model: bytes, runtime: str, threads: int, gpu: bool):
        if runtime == "litert":
            self.encoder = LiteRTEncoder(model, threads)
            return
        import tensorflow as tf  # quiet: importing the package silenced it

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        with tempfile.TemporaryDirectory() as scratch:  # Keras loads a model from a file only
            (Path(scratch) / "encoder.keras").write_bytes(model)
            self.encoder = KerasEncoder(load_keras_model(Path(scratch) / "encoder.keras"), float16=gpu)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode(batch["image"])
        vectors[batch["error"] != ""] = 0.0
        return {"row": batch["row"], "vector": vectors.astype(np.float32), "hash": batch["hash"],
                "error": batch["error"]}


def _read_shards(folder: Path, records: Sequence[ImageRecord]) -> EmbeddedImages:
    """The shards' rows in input order, the unreadable files apart."""
    shards = [np.load(path, allow_pickle=False) for path in sorted(folder.glob("*.npz"))]
    rows = np.concatenate([shard["row"] for shard in shards]) if shards else np.empty(0, np.int64)
    order = np.argsort(rows)
    if not np.array_equal(rows[order], np.arange(len(records))):  # lost or duplicated rows: never a silent gap
        raise RuntimeError(f"the cluster returned {len(rows)} rows ({len(np.unique(rows))} distinct) "
                           f"for {len(records)} images")
    errors, hashes, vectors = (np.concatenate([shard[name] for shard in shards])[order]
                               for name in ("error", "hash", "vector"))
    ok = errors == ""
    skipped = [SkippedImage(records[row].path, str(errors[row])) for row in np.flatnonzero(~ok)]
    for item in skipped:
        log.debug("skipped %s: %s", shown(item.path), item.reason)
    return EmbeddedImages([records[row] for row in np.flatnonzero(ok)], [str(h) for h in hashes[ok]], skipped,
                          vectors[ok].astype(np.float32))
