"""The streaming loader: image files -> a disk cache of resized images -> shuffled float batches.

Each image is decoded and resized once, in parallel, and written as one row of a flat uint8 file;
training epochs and embedding then read rows back by offset. Peak memory stays at a few batches
whatever the number of images.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from ..errors import ImageError, shown
from .images import MAX_FILE_BYTES, ImageRecord, content_hash, prepare_image, read_file

log = logging.getLogger(__name__)
_DECODE_CHUNK = 256


@dataclass(frozen=True)
class SkippedImage:
    """A file that was found but could not be used, with the reason."""

    path: str
    reason: str


class RowCache:
    """Arrays of one shape and dtype stored row after row in one file; read back by row index.

    The decode pass writes RGB uint8 images (``row_shape`` (size, size, 3)); a backbone fit also
    writes its feature maps (float16) this way.
    """

    def __init__(self, path: str, row_shape: tuple[int, ...], count: int, dtype: np.dtype = np.uint8):
        self.path = path
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.count = count
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    @property
    def image_size(self) -> int:
        return self.row_shape[0]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Rows ``indices`` as an array of shape (len(indices), *row_shape)."""
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        with open(self.path, "rb", buffering=0) as handle:
            for slot, index in enumerate(indices):
                handle.seek(int(index) * self.row_bytes)
                handle.readinto(memoryview(flat[slot]))
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive) in one read."""
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(start * self.row_bytes)
            handle.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        return out


@dataclass
class DecodedImages:
    """The outcome of the decode pass: the cache of usable images and what was skipped."""

    cache: RowCache
    records: list[ImageRecord]  # row i of the cache is records[i]
    hashes: list[str]
    skipped: list[SkippedImage]


@dataclass
class EmbeddedImages:
    """Image files decoded and embedded: row i of ``vectors`` (each output, for a model with
    named outputs) belongs to ``records[i]``; ``skipped`` lists the files that could not be used."""

    records: list[ImageRecord]
    hashes: list[str]
    skipped: list[SkippedImage]
    vectors: Union[np.ndarray, dict[str, np.ndarray]]


def load_image(record: ImageRecord, image_size: int, max_bytes: int) -> tuple[np.ndarray, str] | SkippedImage:
    """One file as the model sees it, with its content hash; or why it cannot be used."""
    try:
        data = read_file(record.path, max_bytes)
        return prepare_image(data, record.path, image_size), content_hash(data)
    except ImageError as exc:
        return SkippedImage(record.path, exc.reason)


def decode_to_cache(
    records: Sequence[ImageRecord], cache_path: str, image_size: int, workers: int = 0,
    max_bytes: int = MAX_FILE_BYTES,
) -> DecodedImages:
    """Decode and resize every image in parallel threads into a cache file at ``cache_path``.

    Unreadable, truncated, empty, non-image and non-regular files and files over ``max_bytes``
    are skipped with a warning, never fatal.
    """
    workers = workers or os.cpu_count() or 1
    kept, hashes, skipped = [], [], []
    with (open(cache_path, "wb") as out, ThreadPoolExecutor(workers) as pool,
          tqdm(total=len(records), desc="decode", unit="img") as progress):  # the bar ends its line on errors too
        for start in range(0, len(records), _DECODE_CHUNK):
            chunk = records[start : start + _DECODE_CHUNK]
            for record, result in zip(chunk, pool.map(lambda r: load_image(r, image_size, max_bytes), chunk)):
                if isinstance(result, SkippedImage):
                    log.debug("skipped %s: %s", shown(result.path), result.reason)
                    skipped.append(result)
                else:
                    out.write(result[0].tobytes())
                    kept.append(record)
                    hashes.append(result[1])
            progress.update(len(chunk))
    return DecodedImages(RowCache(cache_path, (image_size, image_size, 3), len(kept)), kept, hashes, skipped)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]: the model's input scaling, at fit and query time."""
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def split_indices(count: int, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic shuffled train/validation split; no validation set below 10 images."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = int(round(count * validation_split)) if count >= 10 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class TrainingBatches:
    """Batches of some cache rows (images or feature maps), reshuffled each epoch.

    Images come as model input (float32 in [0, 1]); feature maps as stored (float16: the model casts
    them, faster than numpy does). With ``targets`` (one row per cache row), a batch is the pair
    (rows, their targets); else the rows alone, and the trainer makes its views and targets from them.
    """

    def __init__(self, cache: RowCache, indices: np.ndarray, batch_size: int, seed: int,
                 targets: Optional[np.ndarray] = None):
        self.cache = cache
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.targets = targets
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(self.indices)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, batch: int) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        rows = np.sort(self.order[batch * self.batch_size : (batch + 1) * self.batch_size])
        data = self.cache.read(rows)
        data = to_model_input(data) if data.dtype == np.uint8 else data
        return data if self.targets is None else (data, self.targets[rows])

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(self.indices)
