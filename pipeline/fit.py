"""Fit a folder of images: decode -> (backbone features) -> train -> embed -> cluster -> index -> artifacts."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import sklearn

from . import __version__
from .artifacts import ArtifactWriter, Catalog, save_catalog, save_index
from .autoencoder import build_autoencoder, build_feature_autoencoder, train_autoencoder
from .backbone import WEIGHTS_SHA256, build_backbone
from .cluster import choose_cluster_count, fit_kmeans
from .config import FitConfig
from .dataset import SkippedImage, TrainingBatches, decode_to_cache, split_indices
from .embed import (DescriptorHead, apply_head, block_encoder, block_weights, channel_profiles, embed_cache_blocks,
                    embed_to_cache)
from .errors import InputError
from .images import IMAGE_EXTENSIONS, find_images
from .index import ClusteredIndex, prepare_vectors, recall_curve, smallest_nprobe

log = logging.getLogger(__name__)
RECALL_QUERIES = 500  # indexed vectors used as queries to measure recall against exact search
EXACT_SEARCH_BELOW = 2000  # "--nprobe auto" searches every cluster below this many images


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
    data_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts", config: FitConfig | None = None
) -> FitSummary:
    """Train the autoencoder on every image under ``data_dir`` and write a searchable bundle.

    With a backbone: decode -> backbone feature maps (a disk cache) -> train the feature
    autoencoder -> descriptors; with ``backbone="none"``: decode -> train the pixel autoencoder ->
    descriptors. Then cluster and index.

    Raises InputError when the folder is missing or holds no decodable image. The previous
    artifacts in ``artifacts_dir`` stay in place unless the whole fit succeeds.
    """
    config = config or FitConfig()
    config.validate()
    keras.utils.set_random_seed(config.seed)
    seconds: dict[str, float] = {}

    records = find_images(data_dir)
    if not records:
        raise InputError(f"{data_dir}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    log.info("found %d image files under %s", len(records), data_dir)

    with ArtifactWriter(artifacts_dir) as writer:
        with tempfile.TemporaryDirectory(dir=writer.path) as scratch:  # the decoded-image cache
            with _stage("decode", seconds):
                decoded = decode_to_cache(
                    records, os.path.join(scratch, "images.u8"), config.image_size, config.decode_workers,
                    config.max_file_bytes,
                )
            if not decoded.records:
                raise InputError(f"{data_dir}: none of the {len(records)} image files could be decoded")
            if decoded.skipped:
                log.warning("skipped %d unreadable files (listed in the manifest)", len(decoded.skipped))

            train_rows, val_rows = split_indices(decoded.cache.count, config.validation_split, config.seed)
            if config.uses_backbone:
                with _stage("features", seconds):
                    backbone = build_backbone(config.image_size)
                    training_rows = embed_to_cache(backbone, decoded.cache, os.path.join(scratch, "maps.f16"),
                                                   config.embedding_batch_size)
                autoencoder = build_feature_autoencoder(training_rows.row_shape, config.latent_dim,
                                                        channel_profiles(training_rows, train_rows))
                latent_encoder = keras.Model(backbone.input, autoencoder.encoder(backbone.output), name="latent")
            else:
                training_rows = decoded.cache
                autoencoder = build_autoencoder(config)
                latent_encoder = autoencoder.encoder

            with _stage("train", seconds):
                epochs = config.training_epochs(len(train_rows))
                log.info("training on %d images (%d for validation), up to %d epochs", len(train_rows),
                         len(val_rows), epochs)
                batches = dict(batch_size=config.batch_size, seed=config.seed)
                history = train_autoencoder(
                    autoencoder,
                    TrainingBatches(training_rows, train_rows, **batches),
                    TrainingBatches(training_rows, val_rows, **batches) if len(val_rows) else None,
                    config,
                    epochs,
                )
                autoencoder.model.save(writer.path / "autoencoder.keras")

            with _stage("embed", seconds):
                blocks_model = block_encoder(latent_encoder, config)
                blocks = embed_cache_blocks(blocks_model, decoded.cache, config.embedding_batch_size)
                head = DescriptorHead(blocks, block_weights(config), config.latent_dim, config.whitening, config.seed)
                embeddings = apply_head(head.model(), blocks)
                head.encoder(blocks_model).save(writer.path / "encoder.keras")

        with _stage("cluster+index", seconds):
            index, nprobe, curve = index_embeddings(embeddings, config)
            save_index(writer.path, index, embeddings)
            save_catalog(
                writer.path,
                Catalog(
                    paths=[r.path for r in decoded.records],
                    labels=[r.label for r in decoded.records],
                    hashes=decoded.hashes,
                    clusters=index.assignments_.tolist(),
                ),
            )

        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_dir": str(Path(data_dir).resolve()),
            "settings": config.to_dict(),
            "versions": library_versions(),
            "backbone_weights_sha256": WEIGHTS_SHA256 if config.uses_backbone else None,
            "images": len(decoded.records),
            "skipped": [{"path": s.path, "reason": s.reason} for s in decoded.skipped],
            "history": history,
            "clusters": index.nlist,
            "nprobe": nprobe,
            "recall_at_10": {str(k): v for k, v in curve.items()},
            "stage_seconds": seconds,
        }
        final = writer.commit(manifest)

    summary = FitSummary(
        images=len(decoded.records),
        skipped=decoded.skipped,
        clusters=index.nlist,
        nprobe=nprobe,
        recall_at_10=curve.get(nprobe, curve[max(curve)]),
        epochs_run=len(history.get("loss", [])),
        artifacts=final,
        stage_seconds=seconds,
    )
    log.info("wrote artifacts to %s", final)
    return summary


def index_embeddings(embeddings: np.ndarray, config: FitConfig) -> tuple[ClusteredIndex, int, dict[int, float]]:
    """Cluster the embeddings, index them, and pick nprobe: (index, nprobe, recall@10 curve)."""
    vectors = prepare_vectors(embeddings, config.metric)
    n_clusters = choose_cluster_count(len(vectors), config.clusters)
    index = ClusteredIndex(config.metric).fit(vectors, fit_kmeans(vectors, n_clusters, config.seed))
    return (index, *choose_nprobe(index, vectors, config))


def choose_nprobe(index: ClusteredIndex, vectors: np.ndarray, config: FitConfig) -> tuple[int, dict[int, float]]:
    """The nprobe to search with, and the recall@10 curve it was chosen from.

    The curve is measured on up to RECALL_QUERIES indexed vectors used as queries. With
    ``nprobe="auto"`` the smallest nprobe reaching ``target_recall`` is kept, or every cluster
    (exact search) below EXACT_SEARCH_BELOW images, where routing cannot pay off.
    """
    sample = np.random.default_rng(config.seed).permutation(len(vectors))[:RECALL_QUERIES]
    curve = recall_curve(index, vectors[sample], sample)
    if config.nprobe != "auto":
        return index.resolve_nprobe(config.nprobe), curve
    if len(vectors) < EXACT_SEARCH_BELOW:
        return index.nlist, curve
    return smallest_nprobe(curve, config.target_recall), curve


def library_versions() -> dict[str, str]:
    import cv2
    import PIL
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


@contextmanager
def _stage(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Log the start of a stage and record its wall time in ``seconds``."""
    log.info("stage %s ...", name)
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 3)
