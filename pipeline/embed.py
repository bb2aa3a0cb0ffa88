"""The encoder turns images into descriptors, the same way at fit and query time.

A descriptor is made of blocks: the learned latent, and optionally the orientation histogram
(:mod:`pipeline.orientations`) and the colour histogram (:mod:`pipeline.color`). The encoder (the
bundle's ``encoder.keras``) is ``descriptor_head(blocks_model(image))``: every step is a layer of
one Keras model. :func:`embed_files` is the images-to-vectors step of add, sync and evaluate;
a fit runs its two halves (decode, then :func:`embed_decoded`) with training in between.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Iterator, Optional, Sequence, Union

import keras
import numpy as np
from sklearn.decomposition import PCA
from tqdm import tqdm

from .color import ColorHistogram
from .config import DESCRIPTOR_BLOCK_SIZE, ORIENTATION_CELLS, FitConfig
from .dataset import DecodedImages, EmbeddedImages, RowCache, decode_to_cache, iter_batches, to_model_input
from .images import ImageRecord
from .orientations import OrientationHistogram


def embed_images(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """Latent vectors (float32) of uint8 images shaped (count, size, size, 3)."""
    return np.asarray(encoder.predict_on_batch(to_model_input(images)), dtype=np.float32)


def mixed_precision(encoder: keras.Model) -> keras.Model:
    """A copy of ``encoder`` whose convolutions and residual additions compute in float16 (their
    weights kept in float32), every other layer as saved: for encoders on a GPU, where float16
    runs on the tensor cores. Setting Keras's global policy before loading would not do it, since a
    saved model keeps each layer's own policy. Descriptors stay float32, within a cosine of
    0.9999 of the float32 encoder's (tested on a CPU)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Add)):
            config["dtype"] = "mixed_float16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(encoder, clone_function=clone, recursive=True)
    copy.set_weights(encoder.get_weights())
    return copy


class BatchingEncoder:
    """Encodes single images from many threads, running one encoder call for the queries that
    arrive within ``window_ms`` of the first (at most ``max_batch``), first come first served.

    Under load, one call for many images costs far less than a call for each (the backbone's work
    is better spread over the cores, and the per-call overhead is paid once), and a FIFO queue
    serves every waiting request in turn instead of whoever wins a lock. Batches are padded to a
    power of two so that the model compiles for a handful of shapes only. ``window_ms=0`` encodes
    each image alone, in the calling thread. The batching thread ends once this object is no
    longer referenced (a service that swapped in another fit's encoder frees the old one).
    """

    def __init__(self, encoder: keras.Model, window_ms: float = 5.0, max_batch: int = 16):
        self.encoder = encoder
        self.window_s = window_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        if self.window_s > 0:
            threading.Thread(target=_serve_batches, args=(weakref.ref(self), self._queue, encoder, self.window_s,
                                                          max_batch), name="encoder-batches", daemon=True).start()

    def embed(self, image: np.ndarray) -> np.ndarray:
        """The descriptor of one uint8 image (size, size, 3); blocks until its batch has run."""
        if self.window_s <= 0:
            with self._lock:
                return embed_images(self.encoder, image[None])[0]
        done: Future = Future()
        self._queue.put((image, done))
        return done.result()


def _serve_batches(owner: weakref.ref, jobs: queue.Queue, encoder: keras.Model, window_s: float,
                   max_batch: int) -> None:
    """The batching thread of a :class:`BatchingEncoder` (``owner``): compile each batch shape, then
    encode the queued images batch after batch; return once the owner is gone and nothing is queued."""
    shape = encoder.input_shape[1:]
    for size in {_next_power_of_two(count) for count in range(1, max_batch + 1)}:
        embed_images(encoder, np.zeros((size, *shape), np.uint8))  # compile each batch shape before serving
    while True:
        try:
            batch = [jobs.get(timeout=1.0)]
        except queue.Empty:
            if owner() is None:  # nobody can queue an image any more
                return
            continue
        deadline = time.monotonic() + window_s
        while len(batch) < max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                batch.append(jobs.get(timeout=left))
            except queue.Empty:
                break
        images = np.stack([image for image, _ in batch])
        padded = np.concatenate([images, np.repeat(images[:1], _next_power_of_two(len(batch)) - len(batch), 0)])
        try:
            vectors = embed_images(encoder, padded)
        except Exception as exc:  # every waiting request gets the error, the thread lives on
            for _, done in batch:
                done.set_exception(exc)
            continue
        for (_, done), vector in zip(batch, vectors):
            done.set_result(vector)


def _next_power_of_two(count: int) -> int:
    return 1 << (count - 1).bit_length()


def _predicted_batches(model: keras.Model, cache: RowCache, batch_size: int, desc: str) -> Iterator:
    """``model``'s output for each batch of a cache, in row order, with a progress bar.

    The rows are split into as few batches of at most ``batch_size`` as possible, of one size
    (:func:`even_batch_size`: 100 rows by 32 are four of 25, not 32, 32, 32 and 4), and a last,
    smaller batch is padded to that size: a new batch shape would make TensorFlow trace the
    model again, which costs more than a few padded rows."""
    batch_size = even_batch_size(cache.count, batch_size)
    with tqdm(total=cache.count, desc=desc, unit="img") as progress:
        for number, batch in enumerate(iter_batches(cache, batch_size)):
            rows = len(batch)
            if number and rows < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - rows, axis=0)])
            yield keras.tree.map_structure(lambda out: np.asarray(out)[:rows], model.predict_on_batch(batch))
            progress.update(rows)


def even_batch_size(count: int, largest: int) -> int:
    """The size that splits ``count`` rows into as few batches of at most ``largest`` as possible,
    all of one size but a last one that is smaller by less than the number of batches."""
    batches = max(1, math.ceil(count / largest))
    return max(1, math.ceil(count / batches))


def embed_cache(model: keras.Model, cache: RowCache, batch_size: int) -> Union[np.ndarray, dict[str, np.ndarray]]:
    """``model``'s output (float32) for every image in a cache, in row order, streamed batch by
    batch: one array, or a dict of arrays for a model with named outputs."""
    parts = [keras.tree.map_structure(lambda out: out.astype(np.float32, copy=False), outputs)
             for outputs in _predicted_batches(model, cache, batch_size, "embed")]
    if not parts:
        return keras.tree.map_structure(lambda out: np.empty((0, out.shape[-1]), np.float32), model.output)
    return keras.tree.map_structure(lambda *outs: np.concatenate(outs), *parts)


def embed_decoded(model: keras.Model, decoded: DecodedImages, batch_size: int) -> EmbeddedImages:
    """The vectors of the images of a decode pass."""
    return EmbeddedImages(decoded.records, decoded.hashes, decoded.skipped,
                          embed_cache(model, decoded.cache, batch_size))


def embed_files(records: Sequence[ImageRecord], model: keras.Model, config: FitConfig,
                scratch_dir: Optional[str | os.PathLike] = None) -> EmbeddedImages:
    """Decode image files as ``config`` says (into a temporary cache in ``scratch_dir``) and embed
    them with ``model``; unreadable files are skipped and listed."""
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        decoded = decode_to_cache(records, os.path.join(scratch, "images.u8"), config.image_size,
                                  config.decode_workers, config.max_file_bytes)
        return embed_decoded(model, decoded, config.embedding_batch_size)


def embed_to_cache(model: keras.Model, cache: RowCache, path: str, batch_size: int) -> RowCache:
    """``model``'s output for every image in a cache, written row after row (float16) to a new cache at ``path``."""
    with open(path, "wb") as out:
        for outputs in _predicted_batches(model, cache, batch_size, "features"):
            out.write(outputs.astype(np.float16).tobytes())
    return RowCache(path, model.output_shape[1:], cache.count, np.float16)


def channel_profiles(maps: RowCache, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Feature maps of a cache (rows ``rows``) averaged over positions: (len(rows), channels), float32."""
    return np.concatenate([maps.read(rows[start : start + batch_size]).astype(np.float32).mean(axis=(1, 2))
                           for start in range(0, len(rows), batch_size)] or [np.empty((0, maps.row_shape[-1]))])


def fit_whitening(latents: np.ndarray, dims: int, whitening: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A PCA whitening learned on ``latents`` as an affine map: ``latents @ kernel + bias``.

    It centres, rotates onto the principal axes, keeps at most ``dims`` of them and divides each by
    its variance ** (whitening / 2): 1 gives unit variance on every axis (full whitening), 0 keeps
    PCA's scale.
    """
    pca = PCA(min(dims, latents.shape[1], len(latents) - 1), random_state=seed).fit(latents)
    kernel = (pca.components_.T / np.maximum(pca.explained_variance_, 1e-12) ** (whitening / 2)).astype(np.float32)
    return kernel, (-pca.mean_ @ kernel).astype(np.float32)


def build_blocks_model(to_latent: keras.Model, config: FitConfig) -> keras.Model:
    """image -> the descriptor's blocks, by name: the learned latent of ``to_latent``, then
    the orientation histogram (at DESCRIPTOR_BLOCK_SIZE px at most, area-downscaled) and the
    colour histogram, each when its weight in ``config`` is above 0."""
    image = keras.Input(to_latent.input_shape[1:], name="image")
    blocks = {"latent": to_latent(image)}
    if config.orientation_weight > 0:
        size = min(config.image_size, DESCRIPTOR_BLOCK_SIZE)
        small = (keras.layers.Resizing(size, size, interpolation="area", name="orientation_size")(image)
                 if size < config.image_size else image)
        blocks["orientations"] = OrientationHistogram(ORIENTATION_CELLS, name="orientations")(small)
    if config.color_weight > 0:
        blocks["colors"] = ColorHistogram(name="colors")(image)
    return keras.Model(image, blocks, name="blocks")


def block_weights(config: FitConfig) -> dict[str, float]:
    """The weight of each block that :func:`build_blocks_model` makes for ``config``."""
    weights = {"latent": 1 - config.orientation_weight - config.color_weight,
               "orientations": config.orientation_weight, "colors": config.color_weight}
    return {name: weight for name, weight in weights.items() if name == "latent" or weight > 0}


class DescriptorHead:
    """The descriptor from its blocks: each block through a PCA whitening layer
    (:func:`fit_whitening`, learned on the blocks of the fitted images), given unit length times
    its weight, and the blocks side by side. Fixed layers, shared by :meth:`model` (blocks in) and
    :meth:`encoder` (images in): a saved encoder applies them to queries exactly as to the fitted
    images, and its layer ``whiten_NAME`` (or ``unit_NAME``) reads block NAME.
    """

    def __init__(self, blocks: dict[str, np.ndarray], weights: dict[str, float], dims: int, whitening: float,
                 seed: int = 0):
        self.names = list(blocks)
        self.widths = {name: block.shape[1] for name, block in blocks.items()}
        self.steps: dict[str, list[keras.layers.Layer]] = {}
        for name, latents in blocks.items():
            steps = []
            if min(latents.shape[1], len(latents) - 1) >= 1:
                kernel, bias = fit_whitening(latents, dims, whitening, seed)
                project = keras.layers.Dense(kernel.shape[1], name=f"whiten_{name}", trainable=False)
                project.build((None, latents.shape[1]))
                project.set_weights([kernel, bias])
                steps.append(project)
            steps += [keras.layers.UnitNormalization(name=f"unit_{name}"),
                      keras.layers.Rescaling(float(weights[name]), name=f"weight_{name}")]
            self.steps[name] = steps
        self.concatenate = keras.layers.Concatenate(name="descriptor") if len(blocks) > 1 else None

    def __call__(self, tensors: dict) -> keras.KerasTensor:
        outputs = []
        for name in self.names:
            x = tensors[name]
            for step in self.steps[name]:
                x = step(x)
            outputs.append(x)
        return self.concatenate(outputs) if self.concatenate else outputs[0]

    def model(self) -> keras.Model:
        """blocks (a dict of arrays) -> descriptors."""
        inputs = {name: keras.Input((width,), name=name) for name, width in self.widths.items()}
        return keras.Model(inputs, self(inputs), name="descriptor_head")

    def encoder(self, blocks: keras.Model) -> keras.Model:
        """image -> descriptor: the saved encoder."""
        return keras.Model(blocks.input, self(blocks.output), name="encoder")


def blocks_of(encoder: keras.Model) -> keras.Model:
    """A saved encoder's blocks before its head: image -> {name: block}."""
    names = [layer.name[len("unit_"):] for layer in encoder.layers if layer.name.startswith("unit_")]
    first = {name: encoder.get_layer(f"whiten_{name}" if f"whiten_{name}" in {l.name for l in encoder.layers}
                                     else f"unit_{name}") for name in names}
    return keras.Model(encoder.input, {name: layer.input for name, layer in first.items()})


def apply_head(head: keras.Model, blocks: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """The descriptors of precomputed blocks (row i of each block is image i)."""
    count = len(next(iter(blocks.values())))
    parts = [np.asarray(head.predict_on_batch({name: b[start : start + batch_size] for name, b in blocks.items()}),
                        dtype=np.float32) for start in range(0, count, batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, head.output_shape[-1]), np.float32)
