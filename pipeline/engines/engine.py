"""Where image files become vectors: this process (:class:`LocalEngine`) or a Ray cluster
(:class:`pipeline.engines.distributed.RayEngine`), chosen once by the caller.

A fit, an add and a sync ask their engine to list a folder's images, to embed image files with a
fitted encoder, and to find each vector's nearest centroid; they never ask which engine it is
(clip-retrieval's distributors are the model). Both engines give the same records in the same
order, skip and list the same unreadable files, and give the same vectors to float precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional, Protocol, Sequence

import numpy as np

from ..bundle.layout import ENCODER, EXPORT
from ..config import FitConfig
from ..data.dataset import EmbeddedImages
from ..data.images import ImageRecord, find_images
from ..index.clustered import nearest_centroids
from ..model.embed import embed_files
from ..model.runtime import Encoder, KerasEncoder, LiteRTEncoder, load_keras_model, resolve_runtime


class EncoderSource(Protocol):
    """A fitted encoder's files: a :class:`pipeline.bundle.artifacts.Bundle` (checked against its manifest)
    or the staging folder of a fit that has just saved them (:class:`StagedEncoder`)."""

    def encoder(self, runtime: Optional[str] = None) -> Encoder:
        """The encoder loaded here, ready to run on ``runtime`` (None: LiteRT where installed)."""

    def model_bytes(self, runtime: str) -> bytes:
        """The file that ``runtime`` loads, for workers elsewhere to load."""


@dataclass(frozen=True)
class StagedEncoder:
    """The encoder a fit has just saved into its staging ``folder`` (and checked itself)."""

    folder: Path

    def encoder(self, runtime: Optional[str] = None) -> Encoder:
        runtime = resolve_runtime(runtime)
        if runtime == "litert":
            return LiteRTEncoder(self.model_bytes(runtime))
        return KerasEncoder(load_keras_model(self.folder / ENCODER))

    def model_bytes(self, runtime: str) -> bytes:
        return (self.folder / (EXPORT if runtime == "litert" else ENCODER)).read_bytes()


class Engine(Protocol):
    """What fit, add and sync need from where they run."""

    def find_images(self, root: str | os.PathLike, extensions: Optional[Collection[str]] = None) -> list[ImageRecord]:
        """:func:`pipeline.data.images.find_images`: every image file under ``root`` (of ``extensions`` alone,
        when given), labelled, sorted."""

    def embed(self, records: Sequence[ImageRecord], source: EncoderSource, config: FitConfig,
              scratch_dir: Optional[str | os.PathLike] = None) -> EmbeddedImages:
        """The files decoded as ``config`` says and embedded by the encoder of ``source``;
        unreadable files skipped and listed."""

    def assign(self, vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
        """The nearest centroid of each (prepared) vector, in order."""


@dataclass(frozen=True)
class LocalEngine:
    """This process: the encoder on ``runtime`` (None: LiteRT where installed, else Keras), decoding
    in threads (``config.decode_workers``)."""

    runtime: Optional[str] = None

    def find_images(self, root: str | os.PathLike, extensions: Optional[Collection[str]] = None) -> list[ImageRecord]:
        return find_images(root, extensions=extensions)

    def embed(self, records: Sequence[ImageRecord], source: EncoderSource, config: FitConfig,
              scratch_dir: Optional[str | os.PathLike] = None) -> EmbeddedImages:
        return embed_files(records, source.encoder(self.runtime), config, scratch_dir)

    def assign(self, vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
        return nearest_centroids(vectors, centroids, metric)
