"""Fit a folder of images: train the encoder -> embed every image -> cluster and index -> a bundle.

"Fit" means what it means in scikit-learn: learn from data. Its product is a :class:`Bundle`.
The encoder's training is :mod:`pipeline.train.encoder`; where images are listed and embedded, this
process or a Ray cluster, is the engine's affair (:mod:`pipeline.engines.engine`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .bundle.artifacts import Bundle, all_finite
from .bundle.catalog import Catalog
from .bundle.layout import EXPORT
from .bundle.manifest import Manifest
from .bundle.writer import ArtifactWriter, read_next_id
from .clock import FitClock
from .config import FitConfig
from .data.dataset import DecodedImages, EmbeddedImages, SkippedImage, decode_to_cache
from .data.images import IMAGE_EXTENSIONS, ImageRecord, file_stat
from .engines.engine import Engine, LocalEngine, StagedEncoder
from .errors import ArtifactError, InputError
from .index.cluster import build_index
from .index.clustered import ClusteredIndex
from .model.runtime import litert_installed
from .pretrained import BACKBONES

log = logging.getLogger(__name__)


@dataclass
class FitSummary:
    """What a fit did and where it went."""

    images: int
    skipped: list[SkippedImage]
    clusters: int
    nprobe: int
    recall_at_10: float
    epochs_run: int
    artifacts: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.stage_seconds.values())


def fit(
    data_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts", config: FitConfig | None = None,
    engine: Optional[Engine] = None, tensorboard: Optional[str | os.PathLike] = None,
) -> FitSummary:
    """Train the autoencoder on the images under ``data_dir`` and write a searchable bundle of all of them.

    Training (and the descriptor's PCA) sees a random sample of at most ``config.train_sample``
    images; every image is embedded by the trained encoder where ``engine`` runs (default: here),
    then clustered and indexed. ``tensorboard``: a folder that receives the training's curves
    (and, from pixels, reconstructions) for TensorBoard.

    Raises InputError when the folder is missing or holds no decodable image, before TensorFlow
    loads. The previous artifacts in ``artifacts_dir`` stay in place unless the whole fit succeeds.
    """
    config = config or FitConfig()
    config.validate()
    if config.precision == "int8" and not litert_installed():
        raise InputError("--precision int8: queries would run the int8 export on LiteRT (ai-edge-litert), which is not "
                         "installed here; fit with --precision fp32")
    engine = engine or LocalEngine()
    started = time.perf_counter()
    records = engine.find_images(data_dir, config.image_extensions)
    if not records:
        looked_for = (f"{', '.join(sorted(IMAGE_EXTENSIONS))}, and any other file that opens as an image"
                      if config.image_extensions is None else f"{', '.join(config.extensions)} alone (--extensions)")
        raise InputError(f"{data_dir}: no image files found (looked for {looked_for})")
    log.info("found %d image files under %s", len(records), data_dir)
    stats = {record.path: file_stat(record.path) for record in records}  # before reading: a later change shows
    sample = _training_sample(records, config)
    clock = FitClock(stage_shares(config.uses_backbone, len(sample), len(records)), started)

    with ArtifactWriter(artifacts_dir) as writer:
        with tempfile.TemporaryDirectory(dir=writer.path) as scratch:  # the decoded-image cache
            decoded = _decode_sample(sample, data_dir, config, scratch, clock)
            from .train.encoder import train_encoder  # TensorFlow takes seconds to load: only once some image decodes

            trained = train_encoder(decoded, config, writer.path, scratch, clock, tensorboard)
            if sample is records:  # the training images are all the images: their descriptors are at hand
                embedded = EmbeddedImages(decoded.records, decoded.hashes, decoded.skipped, trained.descriptors)
            else:  # every image through the export, the sample's again: one encoder for all
                with clock.stage("embed rest"):
                    embedded = engine.embed(records, StagedEncoder(writer.path), config, scratch)
        if not all_finite(embedded.vectors):
            raise ArtifactError(f"{data_dir}: the encoder gave descriptors that are not finite (NaN or infinity); "
                                f"nothing was written")
        with clock.stage("cluster+index"):
            index, curve = build_index(embedded.vectors, config, engine.assign)
        first_id = read_next_id(artifacts_dir)  # a new fit into the folder hands out no id of an earlier one again
        manifest = _manifest(config, data_dir, embedded, writer.path, trained.history, curve, clock.seconds, first_id)
        final = Bundle(manifest, _catalog(embedded, index, stats, first_id), embedded.vectors, index,
                       writer.path).save(writer)

    log.info("wrote the bundle to %s", final)
    return FitSummary(
        images=len(embedded.records),
        skipped=embedded.skipped,
        clusters=index.nlist,
        nprobe=index.nprobe_,
        recall_at_10=curve.get(index.nprobe_, curve[max(curve)]),
        epochs_run=len(trained.history.get("loss", [])),
        artifacts=final,
        stage_seconds=clock.seconds,
    )


def _training_sample(records: list[ImageRecord], config: FitConfig) -> list[ImageRecord]:
    """The images training sees: all of them, or a random sample of ``config.train_sample`` in folder order."""
    if len(records) <= config.train_sample:
        return records
    picks = np.sort(np.random.default_rng(config.seed).choice(len(records), config.train_sample, replace=False))
    log.info("training on a random sample of %d of the %d images", config.train_sample, len(records))
    return [records[i] for i in picks]


def _decode_sample(sample: list[ImageRecord], data_dir: str | os.PathLike, config: FitConfig,
                   scratch: str, clock: FitClock) -> DecodedImages:
    """The training sample decoded into a cache in ``scratch``; InputError when none of it decodes."""
    with clock.stage("decode"):
        decoded = decode_to_cache(sample, os.path.join(scratch, "images.u8"), config.image_size,
                                  config.decode_workers, config.max_file_bytes)
    if not decoded.records:
        raise InputError(f"{data_dir}: none of the {len(sample)} image files could be decoded")
    if decoded.skipped:
        log.warning("skipped %d unreadable files (listed in the manifest)", len(decoded.skipped))
    return decoded


def _manifest(config: FitConfig, data_dir: str | os.PathLike, embedded: EmbeddedImages, folder: Path,
              history: dict, curve: dict[int, float], seconds: dict[str, float], first_id: int) -> Manifest:
    """The new bundle's manifest: the settings, where the images came from, what was skipped, how
    training went, the export's hash, the recall curve and the stages' times."""
    return Manifest(
        settings=config,
        data_dir=str(Path(data_dir).resolve()),
        images=len(embedded.records),
        versions=library_versions(),
        backbone_weights_sha256=BACKBONES[config.backbone].sha256 if config.uses_backbone else None,
        export_sha256=hashlib.sha256((folder / EXPORT).read_bytes()).hexdigest(),
        skipped=[{"path": s.path, "reason": s.reason} for s in embedded.skipped],
        history=history,
        recall_at_10=curve,
        stage_seconds=seconds,
        next_id=first_id + len(embedded.records),
    )


def _catalog(embedded: EmbeddedImages, index: ClusteredIndex, stats: dict[str, Optional[list[int]]],
             first_id: int) -> Catalog:
    """The new bundle's catalog: each image's path, label, content hash, cluster, file stat and id
    (from ``first_id`` on)."""
    records = embedded.records
    return Catalog([r.path for r in records], [r.label for r in records], embedded.hashes,
                   [stats[r.path] for r in records], clusters=index.assignments_).numbered(first_id)


def library_versions() -> dict[str, str]:
    import cv2
    import keras
    import PIL
    import sklearn
    import tensorflow as tf

    return {
        "pipeline": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
    }


# Each stage's usual share of a fit's wall time, with a backbone and from pixels (measured on
# clothing10 and in docs/BENCHMARKS.md): what the estimate of the time left goes by.
STAGE_SHARES = {
    True: {"decode": 0.10, "features": 0.50, "train": 0.06, "embed": 0.14, "export": 0.18, "cluster+index": 0.02},
    False: {"decode": 0.02, "train": 0.90, "embed": 0.04, "export": 0.02, "cluster+index": 0.02},
}


def stage_shares(uses_backbone: bool, sampled: int, images: int) -> dict[str, float]:
    """The stages a fit will run, in order, each with its expected share of the fit's time (summing
    to 1): images beyond the training sample add "embed rest" (decoded, then run through the
    encoder: as the sample's decode, features and embed per image)."""
    shares = dict(STAGE_SHARES[uses_backbone])
    if images > sampled:
        per_image = sum(shares.get(name, 0.0) for name in ("decode", "features", "embed")) / sampled
        last = shares.pop("cluster+index")
        shares.update({"embed rest": per_image * (images - sampled), "cluster+index": last})
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}
