"""The fit's first stage: train the encoder on the decoded sample and save it, with its LiteRT export.

With a backbone: backbone feature maps (a disk cache) -> the feature autoencoder (started at the
PCA of the pooled features) -> the descriptor head; from pixels: the pixel autoencoder -> the
descriptor head. The encoder (the blocks model and the head) is saved as a Keras model and exported
for LiteRT, and the export is checked to give the Keras encoder's descriptors. With ``precision``
"int8", the export's backbone is quantized and the export describes the sample (what is indexed is
what queries get).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from ..bundle.artifacts import save_probes
from ..bundle.layout import AUTOENCODER, ENCODER, EXPORT
from ..clock import FitClock
from ..config import FitConfig
from ..data.dataset import DecodedImages, RowCache, TrainingBatches, split_indices, to_model_input
from ..model.backbone import build_backbone
from ..model.descriptor import DescriptorHead, block_weights, build_blocks_model, image_blocks_model
from ..model.embed import collect, map_cache
from ..model.runtime import LiteRTEncoder, load_keras_model
from .autoencoder import (FeatureAutoencoder, build_autoencoder, build_feature_autoencoder, pooled_profiles,
                          train_autoencoder)
from .export import CALIBRATION_IMAGES, CHECK_IMAGES, check_export, export_litert, probe_rows, spread_rows


log = logging.getLogger(__name__)


@dataclass
class TrainedEncoder:
    """What training left besides the saved files: the descriptors of the decoded sample (by the
    Keras encoder, in its order) and the training's history (loss per epoch)."""

    descriptors: np.ndarray
    history: dict[str, list[float]]


def train_encoder(decoded: DecodedImages, config: FitConfig, folder: Path, scratch: str | os.PathLike,
                  clock: FitClock, tensorboard: Optional[str | os.PathLike] = None) -> TrainedEncoder:
    """Train the autoencoder on ``decoded`` (the fit's sample) and save the autoencoder, the encoder
    and its LiteRT export into ``folder``; caches go to ``scratch``; ``tensorboard``, a folder that
    receives the training's curves (and, from pixels, reconstructions)."""
    keras.utils.set_random_seed(config.seed)
    train_rows, val_rows = split_indices(decoded.cache.count, config.validation_split, config.seed)
    backbone, maps, profiles = None, None, None
    if config.uses_backbone:
        with clock.stage("features"):
            backbone = build_backbone(config.image_size, config.backbone)
            maps = _feature_maps(backbone, decoded.cache, os.path.join(scratch, "maps.f16"), config.embedding_batch_size)
            autoencoder = build_feature_autoencoder(maps.row_shape, config.latent_dim, config.feature_pooling)
            profiles = pooled_profiles(autoencoder.pool, maps, np.arange(maps.count))
        autoencoder.start_at_pca(profiles[train_rows])
    else:
        autoencoder = build_autoencoder(config)

    with clock.stage("train"):
        epochs = config.training_epochs(len(train_rows))
        log.info("training on %d images (%d for validation), up to %d epochs", len(train_rows), len(val_rows), epochs)
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
        autoencoder.model.save(folder / AUTOENCODER)

    with clock.stage("embed"):
        blocks = _blocks(autoencoder.to_latent, config, decoded, maps)
        head = DescriptorHead(blocks, block_weights(config), config.latent_dim, config.whitening, config.seed)
        descriptors = head.apply(blocks)
        head.encoder(build_blocks_model(autoencoder.to_latent, config, backbone)).save(folder / ENCODER)
    with clock.stage("export"):  # from the saved file: its layers belong to the encoder alone
        int8 = config.precision == "int8"
        export_litert(load_keras_model(folder / ENCODER), folder / EXPORT, config.backbone if int8 else None,
                      decoded.cache.read(spread_rows(decoded.cache.count, CALIBRATION_IMAGES)) if int8 else None)
        exported = LiteRTEncoder((folder / EXPORT).read_bytes())
        checked = spread_rows(decoded.cache.count, CHECK_IMAGES)
        images = decoded.cache.read(checked)
        cosine = check_export(exported, images, descriptors[checked], folder / EXPORT, int8)
        if int8:
            log.info("int8 backbone: its descriptors of %d images at a median cosine of %.4f to the float encoder's",
                     len(checked), cosine)
        if int8:  # the index holds what queries get: every image described by the int8 export
            descriptors = collect(list(map_cache(exported.encode, decoded.cache, exported.batch_size, "embed (int8)")),
                                  descriptors[:0])
        probes = probe_rows(len(checked))
        save_probes(folder, images[probes], descriptors[checked[probes]], [decoded.hashes[checked[i]] for i in probes])
    return TrainedEncoder(descriptors, history)


def _board(folder: Optional[str | os.PathLike], autoencoder, images: RowCache, rows: np.ndarray):
    """The TensorBoard writer of ``train_encoder(tensorboard=folder)``, None without a folder; from
    pixels it shows the reconstructions of a few of ``rows``."""
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
