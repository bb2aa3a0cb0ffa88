"""Images to vectors: the decoded images of a cache, batch by batch, through a model.

:func:`embed_files` is the images-to-vectors step of this process's engine
(:class:`pipeline.engines.engine.LocalEngine`) and of evaluate: decode as at fit time, then the fitted
encoder (:mod:`pipeline.model.runtime`); a fit's training runs its two halves with training in between. :func:`map_cache` is the loop under all of them, a Keras model's at fit time
included. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Iterator, Optional, Sequence, TypeVar, Union

import numpy as np
from tqdm import tqdm

from ..config import FitConfig
from ..data.dataset import DecodedImages, EmbeddedImages, RowCache, decode_to_cache
from ..data.images import ImageRecord
from .runtime import Encoder

Outputs = TypeVar("Outputs", np.ndarray, dict)


def each_output(outputs: Union[np.ndarray, dict], change: Callable[[np.ndarray], np.ndarray]):
    """``change`` applied to an array, or to every array of a dict of named outputs."""
    return {name: change(value) for name, value in outputs.items()} if isinstance(outputs, dict) else change(outputs)


def map_cache(run: Callable[[np.ndarray], Outputs], cache: RowCache, batch_size: int, desc: str) -> Iterator[Outputs]:
    """``run(rows)`` for each batch of a cache's rows (uint8 images or float16 feature maps, as
    stored), in row order, with a progress bar.

    The rows are split into as few batches of at most ``batch_size`` as possible, of one size
    (:func:`even_batch_size`: 100 rows by 32 are four of 25, not 32, 32, 32 and 4), and a last,
    smaller batch is padded to that size: a new batch shape makes Keras trace its model again and
    LiteRT plan its memory again, which costs more than a few padded rows."""
    batch_size = even_batch_size(cache.count, batch_size)
    with tqdm(total=cache.count, desc=desc, unit="img") as progress:
        for number, start in enumerate(range(0, cache.count, batch_size)):
            batch = cache.read_range(start, min(start + batch_size, cache.count))
            rows = len(batch)
            if number and rows < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - rows, axis=0)])
            yield each_output(run(batch), lambda out: np.asarray(out, dtype=np.float32)[:rows])
            progress.update(rows)


def even_batch_size(count: int, largest: int) -> int:
    """The size that splits ``count`` rows into as few batches of at most ``largest`` as possible,
    all of one size but a last one that is smaller by less than the number of batches."""
    batches = max(1, math.ceil(count / largest))
    return max(1, math.ceil(count / batches))


def collect(parts: list, empty: Outputs) -> Outputs:
    """The batches of :func:`map_cache` joined row after row (``empty`` when there were none)."""
    if not parts:
        return empty
    if isinstance(parts[0], dict):
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return np.concatenate(parts)


def embed_decoded(encoder: Encoder, decoded: DecodedImages, outputs: bool = False) -> EmbeddedImages:
    """The descriptors of the images of a decode pass (with ``outputs``, every vector output of the
    encoder, by name: not the backbone's feature map, which would take 250 KB an image)."""
    def every_vector(images: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value for name, value in encoder.encode_outputs(images).items() if value.ndim == 2}

    run = every_vector if outputs else encoder.encode
    parts = list(map_cache(run, decoded.cache, encoder.batch_size, "embed"))
    vectors = collect(parts, {} if outputs else np.empty((0, 0), np.float32))
    return EmbeddedImages(decoded.records, decoded.hashes, decoded.skipped, vectors)


def embed_files(records: Sequence[ImageRecord], encoder: Encoder, config: FitConfig,
                scratch_dir: Optional[str | os.PathLike] = None, outputs: bool = False) -> EmbeddedImages:
    """Decode image files as ``config`` says (into a temporary cache in ``scratch_dir``) and embed
    them with ``encoder``; unreadable files are skipped and listed."""
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        decoded = decode_to_cache(records, os.path.join(scratch, "images.u8"), config.image_size,
                                  config.decode_workers, config.max_file_bytes)
        return embed_decoded(encoder, decoded, outputs)
