"""Running the fitted encoder: its LiteRT export (the default) or its Keras model, behind one interface.

A fit saves the encoder twice: as a Keras model, and exported for LiteRT, TensorFlow's own
inference runtime (:mod:`pipeline.export`). Every command but the fit runs the export: LiteRT's
interpreter loads it in a fraction of a second and never imports TensorFlow, so a query, a sync or
a service starts fast and small. The Keras model runs where LiteRT has no wheel, on GPUs (in mixed
precision) and for comparison (``--runtime keras``). Both take uint8 images as the decoder makes
them (:func:`pipeline.images.prepare_image`) and give the same descriptors (checked at every fit).

:class:`BatchingEncoder` encodes single images from many threads in shared calls (the service).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
import warnings
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from .config import RUNTIMES
from .dataset import to_model_input
from .errors import ArtifactError, InputError
from .quiet import native_stderr_silenced

log = logging.getLogger(__name__)
DESCRIPTOR = "descriptor"  # the output that is indexed and searched; the others are its blocks (and the backbone's)


class Encoder(Protocol):
    """The fitted encoder, ready to run: uint8 images (batch, size, size, 3) in."""

    runtime: str
    image_size: int
    dims: int  # values of a descriptor
    batch_size: int  # images a call that embed fastest

    def encode(self, images: np.ndarray) -> np.ndarray:
        """The descriptors (batch, dims), float32."""

    def encode_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name: the descriptor, each of its blocks, and "backbone" (the backbone's
        pooled features) where the encoder has one."""


def litert_installed() -> bool:
    """Whether LiteRT (``ai-edge-litert``, which has wheels for some platforms only) is installed."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def resolve_runtime(runtime: Optional[str]) -> str:
    """The runtime to use: ``runtime``, or by default LiteRT where it is installed, else Keras.
    InputError for LiteRT asked for where it is not installed."""
    if runtime is None:
        return "litert" if litert_installed() else "keras"
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "litert" and not litert_installed():
        raise InputError("--runtime litert: LiteRT (ai-edge-litert) is not installed, and has no wheel for some "
                         "platforms; use --runtime keras")
    return runtime


class LiteRTEncoder:
    """The LiteRT export run by LiteRT's interpreter on the CPU (XNNPACK), ``threads`` wide.

    Where LiteRT is not installed, TensorFlow's own copy of the interpreter runs it (a fit, which
    has TensorFlow, checks its export that way). The interpreter is not thread-safe: calls take
    turns (a service's :class:`BatchingEncoder` makes them from one thread anyway)."""

    runtime = "litert"
    batch_size = 8  # images a call when embedding many: XNNPACK was fastest at 8 (docs/BENCHMARKS.md)

    def __init__(self, model: bytes, threads: Optional[int] = None):
        if litert_installed():
            from ai_edge_litert.interpreter import Interpreter
        else:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        self._turn = threading.Lock()
        with native_stderr_silenced(), warnings.catch_warnings():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            warnings.simplefilter("ignore")  # TensorFlow's copy says it is deprecated in favour of LiteRT
            self._interpreter = Interpreter(model_content=model, num_threads=threads or os.cpu_count() or 1)
            self._signature = self._interpreter.get_signature_runner()
            self._input, details = next(iter(self._signature.get_input_details().items()))
            self.image_size = int(details["shape_signature"][1])
            outputs = self._signature.get_output_details()
            self.outputs, self.dims = tuple(outputs), int(outputs[DESCRIPTOR]["shape_signature"][-1])
            self.encode_outputs(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))  # the delegate starts

    def encode_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self._turn:
            outputs = self._signature(**{self._input: np.ascontiguousarray(images, dtype=np.uint8)})
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.encode_outputs(images)[DESCRIPTOR]


class KerasEncoder:
    """The Keras encoder run by TensorFlow; with ``float16`` its convolutions compute in float16
    (for GPUs: :func:`mixed_precision`)."""

    runtime = "keras"
    batch_size = 32  # images a call when embedding many: larger batches keep TensorFlow's threads busy

    def __init__(self, model, float16: bool = False):
        self.model = mixed_precision(model) if float16 else model
        self.image_size, self.dims = int(model.input_shape[1]), int(model.output_shape[-1])
        self._outputs = None

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(to_model_input(images)), dtype=np.float32)

    def encode_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self._outputs is None:
            from .export import encoder_outputs

            self._outputs = encoder_outputs(self.model)
        outputs = self._outputs.predict_on_batch(to_model_input(images))
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def load_keras_model(path: Path):
    """A fit's saved Keras model (the encoder or the autoencoder), with the project's own layers that
    it holds (histograms, pooling, resizing) registered first; ArtifactError when it cannot be loaded."""
    import keras

    from . import histograms, pooling, resize  # noqa: F401  (importing them registers their layers with Keras)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises assorted types for corrupt or foreign files
        raise ArtifactError(f"{path}: cannot load the model ({exc})") from None


def mixed_precision(encoder):
    """A copy of a Keras ``encoder`` whose convolutions and residual additions compute in float16
    (their weights kept in float32), every other layer as saved: for encoders on a GPU, where
    float16 runs on the tensor cores. Setting Keras's global policy before loading would not do it,
    since a saved model keeps each layer's own policy. Descriptors stay float32, within a cosine of
    0.9999 of the float32 encoder's (tested on a CPU)."""
    import keras

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
    power of two, so that the encoder sees a handful of shapes only (Keras compiles each, LiteRT
    plans its memory for each). ``window_ms=0`` encodes each image alone, in the calling thread.
    The batching thread ends once this object is no longer referenced (a service that swapped in
    another fit's encoder frees the old one).
    """

    def __init__(self, encoder: Encoder, window_ms: float = 5.0, max_batch: int = 16):
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
                return self.encoder.encode(image[None])[0]
        done: Future = Future()
        self._queue.put((image, done))
        return done.result()


def _serve_batches(owner: weakref.ref, jobs: queue.Queue, encoder: Encoder, window_s: float, max_batch: int) -> None:
    """The batching thread of a :class:`BatchingEncoder` (``owner``): run each batch shape once,
    then encode the queued images batch after batch; return once the owner is gone and nothing is queued."""
    for size in {_next_power_of_two(count) for count in range(1, max_batch + 1)}:
        encoder.encode(np.zeros((size, encoder.image_size, encoder.image_size, 3), np.uint8))
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
            vectors = encoder.encode(padded)
        except Exception as exc:  # every waiting request gets the error, the thread lives on
            for _, done in batch:
                done.set_exception(exc)
            continue
        for (_, done), vector in zip(batch, vectors):
            done.set_result(vector)


def _next_power_of_two(count: int) -> int:
    return 1 << (count - 1).bit_length()
