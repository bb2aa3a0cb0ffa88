"""Running the fitted encoder: its LiteRT export (the default) or its Keras model, behind one interface.

A fit saves the encoder twice: as a Keras model, and exported for LiteRT, TensorFlow's own
inference runtime (:mod:`pipeline.train.export`). Every command but the fit runs the export: LiteRT's
interpreter loads it in a fraction of a second and never imports TensorFlow, so a query, a sync or
a service starts fast and small. The Keras model runs where LiteRT has no wheel, on GPUs (in mixed
precision) and for comparison (``--runtime keras``). Both take uint8 images as the decoder makes
them (:func:`pipeline.data.images.prepare_image`) and give the same descriptors (checked at every fit).

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

from ..config import MAX_BATCH_WINDOW_MS, MAX_IMAGE_SIZE, RUNTIMES
from ..data.dataset import to_model_input
from ..errors import ArtifactError, InputError
from ..quiet import native_stderr_silenced

log = logging.getLogger(__name__)
DESCRIPTOR = "descriptor"  # the output that is indexed and searched; the others are its blocks (and the backbone's)
FEATURE_MAP = "feature_map"  # the identity layer that marks the backbone's feature map in an encoder, and that output


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

    def __init__(self, model: bytes, threads: Optional[int] = None, expected: Optional[tuple[int, int]] = None,
                 source: str = "the encoder's export"):
        """``expected``: the (image size, descriptor values) the export must declare, checked before
        it runs. ArtifactError naming ``source`` for anything LiteRT cannot run or that is not such an
        encoder: no flatbuffer, no single image input of a fixed square size, no ``descriptor`` output,
        other sizes than ``expected``, or descriptors that are not finite."""
        if litert_installed():
            from ai_edge_litert.interpreter import Interpreter
        else:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        self._turn = threading.Lock()
        with native_stderr_silenced(), warnings.catch_warnings():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            warnings.simplefilter("ignore")  # TensorFlow's copy says it is deprecated in favour of LiteRT
            try:  # nothing is allocated or run here: a crafted export can cost no memory before it is checked
                self._interpreter = Interpreter(model_content=model, num_threads=threads or os.cpu_count() or 1)
                self._signature = self._interpreter.get_signature_runner()
                inputs, outputs = self._signature.get_input_details(), self._signature.get_output_details()
            except Exception as exc:  # LiteRT raises assorted types for a file that is no model of its own
                raise ArtifactError(f"{source}: not a LiteRT model that can be run ({_one_line(exc)})") from None
            self._input, self.image_size, self.dims = _declared_shape(inputs, outputs, source)
            self.outputs = tuple(outputs)
            if expected is not None and (self.image_size, self.dims) != tuple(expected):
                raise ArtifactError(f"{source}: the export takes {self.image_size} px images to {self.dims} values, the "
                                    f"bundle says {expected[0]} px and {expected[1]} values")
            try:  # the delegate starts
                probe = self.encode(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
            except Exception as exc:
                raise ArtifactError(f"{source}: the export fails to run ({_one_line(exc)})") from None
        if not np.isfinite(probe).all():
            raise ArtifactError(f"{source}: the export gives descriptors that are not finite (NaN or infinity)")

    def encode_outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self._turn:
            outputs = self._signature(**{self._input: np.ascontiguousarray(images, dtype=np.uint8)})
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.encode_outputs(images)[DESCRIPTOR]


def _declared_shape(inputs: dict, outputs: dict, source: str) -> tuple[str, int, int]:
    """(input name, image size, descriptor values) that an export declares; ArtifactError naming
    ``source`` unless it takes one uint8 image batch of a fixed square size, at most MAX_IMAGE_SIZE,
    and gives a ``descriptor`` of a fixed length."""
    if len(inputs) != 1:
        raise ArtifactError(f"{source}: the export takes {len(inputs)} inputs, not one image batch")
    name, details = next(iter(inputs.items()))
    shape = [int(value) for value in details["shape_signature"]]
    if (len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not 0 < shape[1] <= MAX_IMAGE_SIZE
            or details["dtype"] != np.uint8):
        raise ArtifactError(f"{source}: the export takes {np.dtype(details['dtype']).name} input of shape {shape}, not "
                            f"uint8 images (batch, size, size, 3) of a fixed size up to {MAX_IMAGE_SIZE} px")
    descriptor = outputs.get(DESCRIPTOR)
    dims = [int(value) for value in descriptor["shape_signature"]] if descriptor is not None else []
    if len(dims) != 2 or dims[1] <= 0:
        raise ArtifactError(f"{source}: the export has no '{DESCRIPTOR}' output of a fixed length "
                            f"(its outputs: {', '.join(sorted(outputs))[:200]})")
    return name, shape[1], dims[1]


def _one_line(exc: BaseException) -> str:
    """An exception's message as one short line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


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
            self._outputs = encoder_outputs(self.model)
        outputs = self._outputs.predict_on_batch(to_model_input(images))
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def block_tensors(encoder) -> dict:
    """The descriptor's blocks inside a saved encoder, by name: the inputs of its head's first
    layer for each block (``whiten_NAME``, or ``unit_NAME`` for a block too small to project)."""
    layers = {layer.name: layer for layer in encoder.layers}
    names = [name[len("unit_"):] for name in layers if name.startswith("unit_")]
    return {name: layers.get(f"whiten_{name}", layers[f"unit_{name}"]).input for name in names}


def encoder_outputs(encoder):
    """A saved Keras ``encoder`` as the model of every output the export gives and commands read:
    image (float in [0, 1]) -> {"descriptor", each block by name, and, where the encoder has a
    backbone, "backbone": its feature map averaged over positions, and "feature_map" itself (what
    :mod:`pipeline.search.explain` shows a match with)}."""
    import keras

    outputs = {DESCRIPTOR: encoder.output, **block_tensors(encoder)}
    if FEATURE_MAP in {layer.name for layer in encoder.layers}:
        pooled = keras.layers.GlobalAveragePooling2D(name="backbone_pooled")
        outputs["backbone"] = pooled(encoder.get_layer(FEATURE_MAP).output)
        outputs[FEATURE_MAP] = encoder.get_layer(FEATURE_MAP).output
    return keras.Model(encoder.input, outputs, name="encoder_outputs")


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
        if not 0 <= window_ms <= MAX_BATCH_WINDOW_MS:  # also refuses nan
            raise InputError(f"the batching window must lie between 0 and {MAX_BATCH_WINDOW_MS:g} ms, got {window_ms}")
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
