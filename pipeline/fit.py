"""Fit a folder of images: decode -> (backbone features) -> train -> embed -> cluster -> index -> a bundle.

"Fit" means what it means in scikit-learn: learn from data. Its product is a :class:`Bundle`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import keras
import numpy as np
import sklearn

from . import __version__
from .artifacts import AUTOENCODER, ENCODER, EXPORT, ArtifactWriter, Bundle, load_model
from .catalog import Catalog
from .autoencoder import (FeatureAutoencoder, build_autoencoder, build_feature_autoencoder, pooled_profiles,
                          train_autoencoder)
from .backbone import BACKBONES, build_backbone
from .config import FitConfig
from .dataset import (DecodedImages, EmbeddedImages, RowCache, SkippedImage, TrainingBatches, decode_to_cache,
                      split_indices, to_model_input)
from .descriptor import DescriptorHead, block_weights, build_blocks_model, image_blocks_model
from .distributed import RayEngine, embed_files_on_ray, find_images_on_ray
from .embed import collect, embed_files, map_cache
from .errors import InputError
from .export import CHECK_IMAGES, check_export, export_litert
from .images import IMAGE_EXTENSIONS, file_stat, find_images
from .cluster import build_index
from .manifest import Manifest
from .runtime import LiteRTEncoder

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
    engine: Optional[RayEngine] = None, tensorboard: Optional[str | os.PathLike] = None,
) -> FitSummary:
    """Train the autoencoder on the images under ``data_dir`` and write a searchable bundle of all of them.

    With a backbone: decode -> backbone feature maps (a disk cache) -> train the feature
    autoencoder -> descriptors; with ``backbone="none"``: decode -> train the pixel autoencoder ->
    descriptors. Then cluster and index. Training (and the descriptor's PCA) sees a random sample
    of at most ``config.train_sample`` images; the rest are embedded with the trained encoder, on
    a Ray cluster with ``engine`` (where cluster assignment runs too). ``tensorboard``: a folder
    that receives the training's curves (and, from pixels, reconstructions) for TensorBoard.

    Raises InputError when the folder is missing or holds no decodable image. The previous
    artifacts in ``artifacts_dir`` stay in place unless the whole fit succeeds.
    """
    config = config or FitConfig()
    config.validate()
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()

    records = find_images_on_ray(data_dir, engine) if engine else find_images(data_dir)
    if not records:
        raise InputError(f"{data_dir}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    log.info("found %d image files under %s", len(records), data_dir)
    stats = {record.path: file_stat(record.path) for record in records}  # before reading: a later change shows
    sample = records
    if len(records) > config.train_sample:
        picks = np.sort(np.random.default_rng(config.seed).choice(len(records), config.train_sample, replace=False))
        sample = [records[i] for i in picks]
        log.info("training on a random sample of %d of the %d images", len(sample), len(records))
    clock = FitClock(stage_shares(config.uses_backbone, len(sample), len(records), engine is not None), started)
    seconds = clock.seconds

    with ArtifactWriter(artifacts_dir) as writer:
        with tempfile.TemporaryDirectory(dir=writer.path) as scratch:  # the decoded-image cache
            with clock.stage("decode"):
                decoded = decode_to_cache(
                    sample, os.path.join(scratch, "images.u8"), config.image_size, config.decode_workers,
                    config.max_file_bytes,
                )
            if not decoded.records:
                raise InputError(f"{data_dir}: none of the {len(sample)} image files could be decoded")
            if decoded.skipped:
                log.warning("skipped %d unreadable files (listed in the manifest)", len(decoded.skipped))

            train_rows, val_rows = split_indices(decoded.cache.count, config.validation_split, config.seed)
            backbone, maps, profiles = None, None, None
            if config.uses_backbone:
                with clock.stage("features"):
                    backbone = build_backbone(config.image_size, config.backbone)
                    maps = _feature_maps(backbone, decoded.cache, os.path.join(scratch, "maps.f16"),
                                         config.embedding_batch_size)
                    autoencoder = build_feature_autoencoder(maps.row_shape, config.latent_dim, config.feature_pooling)
                    profiles = pooled_profiles(autoencoder.pool, maps, np.arange(maps.count))
                autoencoder.start_at_pca(profiles[train_rows])
            else:
                autoencoder = build_autoencoder(config)

            with clock.stage("train"):
                epochs = config.training_epochs(len(train_rows))
                log.info("training on %d images (%d for validation), up to %d epochs", len(train_rows),
                         len(val_rows), epochs)
                batches = dict(batch_size=config.batch_size, seed=config.seed, targets=profiles)
                training_rows = maps if maps is not None else decoded.cache
                history = train_autoencoder(
                    autoencoder,
                    TrainingBatches(training_rows, train_rows, **batches),
                    TrainingBatches(training_rows, val_rows, **batches) if len(val_rows) else None,
                    config,
                    epochs,
                    _board(tensorboard, autoencoder, decoded.cache, val_rows if len(val_rows) else train_rows),
                )
                autoencoder.model.save(writer.path / AUTOENCODER)

            with clock.stage("embed"):
                blocks = _blocks(autoencoder.to_latent, config, decoded, maps)
                head = DescriptorHead(blocks, block_weights(config), config.latent_dim, config.whitening, config.seed)
                descriptors = head.apply(blocks)
                encoder = head.encoder(build_blocks_model(autoencoder.to_latent, config, backbone))
                encoder.save(writer.path / ENCODER)
            with clock.stage("export"):  # from the saved file: its layers belong to the encoder alone
                export_litert(load_model(writer.path / ENCODER), writer.path / EXPORT)
                exported = LiteRTEncoder((writer.path / EXPORT).read_bytes())
                checked = np.unique(np.linspace(0, decoded.cache.count - 1, CHECK_IMAGES).astype(int))
                check_export(exported, decoded.cache.read(checked), descriptors[checked], writer.path / EXPORT)
            if engine is not None:
                embedded = embed_files_on_ray(records, writer.path, config, engine, scratch)
            elif sample is not records:  # the images beyond the training sample, through the export
                with clock.stage("embed rest"):
                    embedded = embed_files(records, exported, config, scratch)
            else:  # the training images are all the images: their descriptors are at hand
                embedded = EmbeddedImages(decoded.records, decoded.hashes, decoded.skipped, descriptors)

        with clock.stage("cluster+index"):
            index, curve = build_index(embedded.vectors, config, engine.assign if engine else None)
        manifest = Manifest(
            settings=config,
            data_dir=str(Path(data_dir).resolve()),
            images=len(embedded.records),
            versions=library_versions(),
            backbone_weights_sha256=BACKBONES[config.backbone].sha256 if config.uses_backbone else None,
            export_sha256=hashlib.sha256((writer.path / EXPORT).read_bytes()).hexdigest(),
            skipped=[{"path": s.path, "reason": s.reason} for s in embedded.skipped],
            history=history,
            recall_at_10=curve,
            stage_seconds=seconds,
            next_id=len(embedded.records),
        )
        catalog = Catalog(paths=[r.path for r in embedded.records], labels=[r.label for r in embedded.records],
                          hashes=embedded.hashes, clusters=index.assignments_.tolist(),
                          stats=[stats[r.path] for r in embedded.records], ids=list(range(len(embedded.records))))
        final = Bundle(manifest, catalog, embedded.vectors, index, writer.path).save(writer)

    summary = FitSummary(
        images=len(embedded.records),
        skipped=embedded.skipped,
        clusters=index.nlist,
        nprobe=index.nprobe_,
        recall_at_10=curve.get(index.nprobe_, curve[max(curve)]),
        epochs_run=len(history.get("loss", [])),
        artifacts=final,
        stage_seconds=seconds,
    )
    log.info("wrote the bundle to %s", final)
    return summary


def _board(folder: Optional[str | os.PathLike], autoencoder, images: RowCache, rows: np.ndarray):
    """The TensorBoard writer of ``fit(tensorboard=folder)``, None without a folder; from pixels it
    shows the reconstructions of a few of ``rows``."""
    if folder is None:
        return None
    from .tensorboard import RECONSTRUCTIONS, TrainingBoard

    if isinstance(autoencoder, FeatureAutoencoder):  # it rebuilds features, not pictures
        return TrainingBoard(folder)
    return TrainingBoard(folder, autoencoder, images.read(np.sort(rows[:RECONSTRUCTIONS])))


def _feature_maps(backbone: keras.Model, cache: RowCache, path: str, batch_size: int) -> RowCache:
    """The backbone's feature map of every image of a cache, written row after row (float16) to a
    new cache at ``path``: what the autoencoder trains on and the latent is read from."""
    with open(path, "wb") as out:
        for maps in map_cache(lambda rows: backbone.predict_on_batch(to_model_input(rows)), cache, batch_size,
                              "features"):
            out.write(maps.astype(np.float16).tobytes())
    return RowCache(path, backbone.output_shape[1:], cache.count, np.float16)


def _blocks(to_latent: keras.Model, config: FitConfig, decoded: DecodedImages, maps: Optional[RowCache]
            ) -> dict[str, np.ndarray]:
    """The descriptor's blocks of the decoded images, by name. Over a backbone, the latent is read
    from the feature maps computed for training (the backbone runs once per image), the other
    blocks from the images; from pixels, all of them from the images."""
    batch_size = config.embedding_batch_size

    def over_images(model: keras.Model) -> dict[str, np.ndarray]:
        return collect(list(map_cache(lambda rows: model.predict_on_batch(to_model_input(rows)), decoded.cache,
                                      batch_size, "blocks")), {})

    if maps is None:
        return over_images(build_blocks_model(to_latent, config))
    latent = collect(list(map_cache(lambda rows: to_latent.predict_on_batch(rows.astype(np.float32)), maps,
                                    batch_size, "latent")), np.empty((0, config.latent_dim), np.float32))
    others = image_blocks_model(config)
    return {"latent": latent, **(over_images(others) if others is not None else {})}


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


# Each stage's usual share of a fit's wall time, with a backbone and from pixels (measured on
# clothing10 and in docs/BENCHMARKS.md): what the estimate of the time left goes by.
STAGE_SHARES = {
    True: {"decode": 0.10, "features": 0.50, "train": 0.06, "embed": 0.14, "export": 0.18, "cluster+index": 0.02},
    False: {"decode": 0.02, "train": 0.90, "embed": 0.04, "export": 0.02, "cluster+index": 0.02},
}


def stage_shares(uses_backbone: bool, sampled: int, images: int, on_ray: bool) -> dict[str, float]:
    """The stages a fit will run, in order, each with its expected share of the fit's time (summing
    to 1): images beyond the training sample add "embed rest" (decoded, then run through the
    encoder: as the sample's decode, features and embed per image), unless a Ray cluster embeds them."""
    shares = dict(STAGE_SHARES[uses_backbone])
    if images > sampled and not on_ray:
        per_image = sum(shares.get(name, 0.0) for name in ("decode", "features", "embed")) / sampled
        last = shares.pop("cluster+index")
        shares.update({"embed rest": per_image * (images - sampled), "cluster+index": last})
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}


class FitClock:
    """Times a fit's stages (``seconds``) and logs where the whole fit stands as each one starts:
    stage k of n, the time so far and, from the second stage on, an estimate of the time left
    (the time so far scaled by the shares still to run)."""

    def __init__(self, shares: dict[str, float], started: float):
        self.shares, self.started = shares, started
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        elapsed = time.perf_counter() - self.started
        done = sum(self.shares[finished] for finished in self.seconds)
        left = f", about {_duration(elapsed * (1 - done) / done)} left" if done else ""
        log.info("fit stage %d/%d: %s (%s so far%s)", list(self.shares).index(name) + 1, len(self.shares), name,
                 _duration(elapsed), left)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
