"""The convolutional autoencoders (Keras) and their training.

Over a backbone (the default), :func:`build_feature_autoencoder` learns a bottleneck over the
frozen backbone's feature map, starting from PCA of the training images' channel profiles (the
map averaged over positions); its decoder reconstructs that profile from the latent. So the
latent keeps what is in the picture, not where: reconstructing the whole map's layout scored
lower (docs/QUALITY.md).

From pixels (``backbone="none"``), :func:`build_autoencoder`'s training minimises reconstruction
error plus, weighted by ``consistency``, a view-consistency term (NT-Xent, as in SimCLR) that asks two random views of one photo (crop, mirror, colour jitter; see
:mod:`pipeline.train.augment`) to have similar latents and different photos to have different ones. A
plain reconstruction loss spends the latents on what varies most in pixels (background, colour);
the consistency term spends them on what survives those changes. See docs/QUALITY.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from tqdm import tqdm

from ..config import FitConfig
from ..data.dataset import RowCache
from ..model.pooling import MapPooling
from .augment import ViewAugmentation
from .early_stopping import EarlyStopping

if TYPE_CHECKING:
    from .tensorboard import TrainingBoard

log = logging.getLogger(__name__)
PROJECTION_DIM = 128  # width of the head that the consistency term compares (not part of the encoder)
FEATURE_WIDTH = 32  # channels of the feature autoencoder's convolution
DENSE_UNITS = (1024, 512)  # hidden layers of the dense pixel autoencoder, from the image down


@dataclass
class Autoencoder:
    """The models of one autoencoder; they share their layers.

    - ``model``: image (image_size) -> reconstruction (autoencoder_size), saved for the report.
    - ``to_latent``: image -> the learned latent (the code map flattened, or its global max or average).
    - ``downscale``: image -> the image at autoencoder size (area average; identity at equal size).
    - ``maps``: autoencoder-size image -> (deepest conv map, code map); what training works on
      (dense: the last hidden layer and the latent).
    - ``decoder``: code map (dense: the latent) -> reconstruction.
    """

    model: keras.Model
    to_latent: keras.Model
    downscale: keras.Model
    maps: keras.Model
    decoder: keras.Model


def _conv_block(x, filters: int, name: str, transpose: bool = False):
    conv = layers.Conv2DTranspose if transpose else layers.Conv2D
    x = conv(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_autoencoder(config: FitConfig) -> Autoencoder:
    """Build the pixel autoencoder for ``config`` (``architecture`` conv or dense).

    Shapes with the defaults (input 64 px, autoencoder 32 px, filters 32-64-128-256, latent 128):
    image (64, 64, 3) -> area-downscaled to (32, 32, 3) -> 4 stride-2 conv blocks -> (2, 2, 256)
    -> 1x1 conv -> code (2, 2, 128), from which the decoder upsamples back to (32, 32, 3).
    Dense: (32, 32, 3) flattened -> DENSE_UNITS with ReLU -> the latent (linear), and back.
    """
    size, small = config.image_size, config.learned_size
    image = keras.Input((size, size, 3), name="image")
    downscale = keras.Model(
        image, layers.AveragePooling2D(size // small, name="area_average")(image) if small < size else image,
        name="downscale",
    )
    small_image = keras.Input((small, small, 3), name="small_image")
    if config.architecture == "dense":
        maps, decoder = _dense_halves(small_image, config)
    else:
        maps, decoder = _conv_halves(small_image, config)
    code_map = maps(downscale(image))[1]
    if config.architecture == "dense":
        latent = layers.Identity(name="latent")(code_map)
    else:
        read_out = {"flatten": layers.Flatten, "max": layers.GlobalMaxPooling2D, "avg": layers.GlobalAveragePooling2D}
        latent = read_out[config.pooling](name="latent")(code_map)
    to_latent = keras.Model(image, latent, name="to_latent")
    autoencoder = keras.Model(image, decoder(code_map), name="autoencoder")
    return Autoencoder(autoencoder, to_latent, downscale, maps, decoder)


def _conv_halves(small_image, config: FitConfig) -> tuple[keras.Model, keras.Model]:
    """(maps, decoder) of the convolutional autoencoder: stride-2 blocks down, transposed ones up."""
    features = small_image
    for i, filters in enumerate(config.filters):
        features = _conv_block(features, filters, f"enc{i}")
    code = layers.Conv2D(config.latent_dim, 1, name="code")(features)
    code_input = keras.Input(code.shape[1:], name="code_map")
    y = code_input
    for i, filters in enumerate(reversed(config.filters)):
        y = _conv_block(y, filters, f"dec{i}", transpose=True)
    y = layers.Conv2D(3, 3, padding="same", activation=config.output_activation, name="pixels")(y)
    return keras.Model(small_image, [features, code], name="maps"), keras.Model(code_input, _unit_range(y, config),
                                                                                 name="decoder")


def _dense_halves(small_image, config: FitConfig) -> tuple[keras.Model, keras.Model]:
    """(maps, decoder) of the deep, fully connected autoencoder: the image flattened, dense layers
    with ReLU down to a linear latent, and the mirror image of them back up to the pixels."""
    features = layers.Flatten(name="flatten")(small_image)
    for i, units in enumerate(DENSE_UNITS):
        features = layers.Dense(units, activation="relu", name=f"enc{i}_dense")(features)
    code = layers.Dense(config.latent_dim, name="code")(features)
    code_input = keras.Input(code.shape[1:], name="code_vector")
    y = code_input
    for i, units in enumerate(reversed(DENSE_UNITS)):
        y = layers.Dense(units, activation="relu", name=f"dec{i}_dense")(y)
    y = layers.Dense(int(np.prod(small_image.shape[1:])), activation=config.output_activation, name="pixels")(y)
    y = layers.Reshape(small_image.shape[1:], name="image_shape")(y)
    return keras.Model(small_image, [features, code], name="maps"), keras.Model(code_input, _unit_range(y, config),
                                                                                 name="decoder")


def _unit_range(pixels, config: FitConfig):
    """The reconstruction in [0, 1], where the targets lie (tanh's [-1, 1] rescaled)."""
    if config.output_activation == "tanh":
        return layers.Rescaling(0.5, offset=0.5, name="to_unit_range")(pixels)
    return pixels


@dataclass
class FeatureAutoencoder:
    """The models of an autoencoder over a backbone's feature map; they share their layers.

    - ``model``: feature map -> reconstructed profile, saved with the fit.
    - ``to_latent``: feature map -> the learned latent.
    - ``decoder``: latent -> profile.
    - ``pool``: feature map -> its profile, the map pooled (:class:`pipeline.model.pooling.MapPooling`):
      what the decoder reconstructs.
    - ``trained``: (feature map, its profile) -> reconstruction: what training runs, the profiles
      pooled once beforehand (:func:`pooled_profiles`; the backbone is frozen, so a map's profile
      never changes) instead of at every epoch.
    """

    model: keras.Model
    to_latent: keras.Model
    decoder: keras.Model
    pool: keras.Model
    trained: keras.Model

    def start_at_pca(self, profiles: np.ndarray) -> None:
        """Set the projection and the decoder to PCA's solution for ``profiles`` (the training
        images' profiles), the residual staying at zero: training starts where PCA of the pooled
        features is, and the reconstruction error only falls from there."""
        if len(profiles) > 1:
            kernel, mean = _pca_basis(profiles, self.to_latent.output_shape[-1])
            self.to_latent.get_layer("latent_linear").set_weights([kernel, -mean @ kernel])
            self.decoder.get_layer("profile").set_weights([kernel.T, mean])


def build_feature_autoencoder(map_shape: tuple[int, int, int], latent_dim: int,
                              pooling: str = "regional") -> FeatureAutoencoder:
    """The autoencoder over a feature map of ``map_shape``.

    Shapes at 224 px input (EfficientNet-Lite0's 7 x 7 x 1280 map, latent 128): the latent is a
    linear projection of the map's profile (the map pooled by ``pooling``, 1280 values) plus a
    learned residual (1x1 conv + batch norm + ReLU (7, 7, FEATURE_WIDTH), averaged, dense to 128);
    a linear decoder (128 -> 1280) reconstructs the profile. Started at PCA's solution
    (:meth:`FeatureAutoencoder.start_at_pca`; docs/QUALITY.md: trained from random weights, the
    latent stayed up to 0.014 under PCA's precision).
    """
    feature_map = keras.Input(map_shape, name="feature_map")
    profile = MapPooling(pooling, name="profile_pool")(feature_map)
    linear = layers.Dense(latent_dim, name="latent_linear")
    convolution = layers.Conv2D(FEATURE_WIDTH, 1, use_bias=False, name="enc_conv")
    norm, relu = layers.BatchNormalization(name="enc_bn"), layers.ReLU(name="enc_relu")
    average = layers.GlobalAveragePooling2D(name="enc_pool")
    residual = layers.Dense(latent_dim, kernel_initializer="zeros", name="latent_residual")

    def latent_of(maps, profiles, name: str):
        return layers.Add(name=name)([linear(profiles), residual(average(relu(norm(convolution(maps)))))])

    to_latent = keras.Model(feature_map, latent_of(feature_map, profile, "latent"), name="to_latent")
    code = keras.Input((latent_dim,), name="code")
    decoder = keras.Model(code, layers.Dense(map_shape[-1], name="profile")(code), name="decoder")
    given = keras.Input((map_shape[-1],), name="given_profile")
    trained = keras.Model([feature_map, given], decoder(latent_of(feature_map, given, "latent_of_given")), name="trained")
    return FeatureAutoencoder(keras.Model(feature_map, decoder(to_latent(feature_map)), name="feature_autoencoder"),
                              to_latent, decoder, keras.Model(feature_map, profile, name="pool"), trained)


def pooled_profiles(pool: keras.Model, maps: RowCache, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The profiles (``pool`` of the feature map) of rows ``rows`` of a cache of maps: (len(rows), channels)."""
    return np.concatenate([np.asarray(pool.predict_on_batch(maps.read(rows[start : start + batch_size])
                                                            .astype(np.float32)), dtype=np.float32)
                           for start in range(0, len(rows), batch_size)] or [np.empty((0, maps.row_shape[-1]))])


def _pca_basis(profiles: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA's orthonormal basis (channels, dims) of ``profiles`` and their mean; unused axes zero."""
    from sklearn.decomposition import PCA

    components = min(dims, profiles.shape[1], len(profiles) - 1)
    pca = PCA(components, random_state=0).fit(profiles)
    kernel = np.zeros((profiles.shape[1], dims), dtype=np.float32)
    kernel[:, :components] = pca.components_.T
    return kernel, pca.mean_.astype(np.float32)


class ProfileTrainer(keras.Model):
    """Trains a :class:`FeatureAutoencoder` on batches of (feature maps, their profiles): mean
    squared error between the decoded latent and the profile."""

    def __init__(self, autoencoder: FeatureAutoencoder):
        super().__init__(name="profile_trainer")
        self.trained = autoencoder.trained
        self.trackers = {"loss": keras.metrics.Mean(name="loss")}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def _loss(self, batch: tuple[tf.Tensor, tf.Tensor], training: bool) -> tf.Tensor:
        maps, profiles = batch
        reconstruction = self.trained([tf.cast(maps, tf.float32), profiles], training=training)
        return tf.reduce_mean(tf.square(reconstruction - profiles))

    def train_step(self, batch: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self._loss(batch, training=True)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.trackers["loss"].update_state(loss)
        return {"loss": self.trackers["loss"].result()}

    def test_step(self, batch: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        self.trackers["loss"].update_state(self._loss(batch, training=False))
        return {"loss": self.trackers["loss"].result()}


def nt_xent(first: tf.Tensor, second: tf.Tensor, temperature: float) -> tf.Tensor:
    """NT-Xent loss: row i of ``first`` must pick row i of ``second`` (and vice versa) among all rows."""
    z = tf.math.l2_normalize(tf.concat([first, second], axis=0), axis=1)
    count = tf.shape(first)[0]
    similarity = tf.matmul(z, z, transpose_b=True) / temperature - tf.eye(2 * count) * 1e9  # never itself
    partner = tf.concat([tf.range(count, 2 * count), tf.range(count)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partner, similarity))


class ViewConsistencyTrainer(keras.Model):
    """Trains an :class:`Autoencoder` on two random views of each batch image.

    loss = reconstruction(view 1) + consistency * NT-Xent(head(view 1), head(view 2)), where the
    head is a small MLP on the globally pooled deepest conv map, used only during training (and
    not built when ``consistency`` is 0).
    """

    def __init__(self, autoencoder: Autoencoder, config: FitConfig):
        super().__init__(name="view_consistency_trainer")
        self.downscale = autoencoder.downscale
        self.maps = autoencoder.maps
        self.decoder = autoencoder.decoder
        deep_shape = self.maps.outputs[0].shape[1:]
        self.head = keras.Sequential(
            [keras.Input(deep_shape), *([layers.GlobalAveragePooling2D()] if len(deep_shape) == 3 else []),
             layers.Dense(256, activation="relu"), layers.Dense(PROJECTION_DIM)],
            name="projection_head",
        ) if config.consistency else None
        self.views = ViewAugmentation(config.min_crop, config.flip_augment, config.color_jitter)
        self.validation_seed = config.seed + 1
        self.train_rng = tf.random.Generator.from_seed(config.seed)
        self.validation_rng = tf.random.Generator.from_seed(self.validation_seed)
        self.noise = layers.GaussianNoise(config.noise) if config.noise else None
        self.consistency = config.consistency
        self.temperature = config.temperature
        self.reconstruction_loss = keras.losses.get("mse" if config.loss == "mse" else "binary_crossentropy")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "consistency")}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def call(self, images, training=False):
        return self.decoder(self.maps(self.downscale(images), training=training)[1], training=training)

    def reset_validation_views(self) -> None:
        """Make the next validation pass see the same views as every other (a comparable loss)."""
        self.validation_rng.reset_from_seed(self.validation_seed)

    def _loss_terms(self, images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        rng = self.train_rng if training else self.validation_rng
        small = self.downscale(images)
        first = self.views(small, rng)
        encoder_input = self.noise(first, training=training) if self.noise else first
        deep, code = self.maps(encoder_input, training=training)
        reconstruction = tf.reduce_mean(self.reconstruction_loss(first, self.decoder(code, training=training)))
        consistency = tf.constant(0.0)
        if self.consistency:
            second_deep, _ = self.maps(self.views(small, rng), training=training)
            consistency = nt_xent(
                self.head(deep, training=training), self.head(second_deep, training=training), self.temperature
            )
        return {"loss": reconstruction + self.consistency * consistency, "reconstruction": reconstruction,
                "consistency": consistency}

    def _report(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            losses = self._loss_terms(images, training=True)
        gradients = tape.gradient(losses["loss"], self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._report(losses)

    def test_step(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._report(self._loss_terms(images, training=False))


def train_autoencoder(
    autoencoder: Autoencoder | FeatureAutoencoder,
    train_data: keras.utils.PyDataset,
    validation_data: keras.utils.PyDataset | None,
    config: FitConfig,
    epochs: int,
    board: Optional[TrainingBoard] = None,
) -> dict[str, list[float]]:
    """Train for up to ``epochs`` epochs (pixels: on pairs of views; feature maps: on their
    profiles); keeps the best epoch's weights.

    Stops early when the validation loss (the training loss without a validation set) has not
    improved for ``config.patience`` epochs (:class:`EarlyStopping`). Returns the per-epoch history: loss (for pixels also
    reconstruction and consistency) and their ``val_`` twins; ``board`` receives them for TensorBoard.
    (A plain loop of compiled steps: Keras's ``fit`` costs about a fifth more time per image here.)
    """
    optimizer = (
        keras.optimizers.Adam(config.learning_rate)
        if config.optimizer == "adam"
        else keras.optimizers.Adadelta(config.learning_rate)
    )
    trainer = (ProfileTrainer(autoencoder) if isinstance(autoencoder, FeatureAutoencoder)
               else ViewConsistencyTrainer(autoencoder, config))
    trainer.compile(optimizer=optimizer, jit_compile=False)  # XLA cannot compile crop_and_resize
    optimizer.build(trainer.trainable_variables)
    train_step = tf.function(trainer.train_step, reduce_retracing=True)
    test_step = tf.function(trainer.test_step, reduce_retracing=True)
    history: dict[str, list[float]] = {}
    stopping, best_weights = EarlyStopping(config.patience), trainer.get_weights()
    watched = "val_loss" if validation_data is not None else "loss"
    with tqdm(total=epochs, desc="train", unit="epoch") as epoch_bar:  # ends its line on errors too
        for epoch in range(1, epochs + 1):
            logs = _run_epoch(trainer, train_step, train_data)
            if validation_data is not None:
                if isinstance(trainer, ViewConsistencyTrainer):
                    trainer.reset_validation_views()
                validation = _run_epoch(trainer, test_step, validation_data)
                logs.update({f"val_{name}": value for name, value in validation.items()})
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            log.info("epoch %d/%d: %s", epoch, epochs, ", ".join(f"{name} {value:.4f}" for name, value in logs.items()))
            if board is not None:
                board.epoch(epoch, logs, float(optimizer.learning_rate))
            epoch_bar.update()
            if stopping.better(logs[watched]):
                best_weights = trainer.get_weights()
            elif stopping.should_stop:
                epoch_bar.set_postfix_str(f"stopped early, kept epoch {stopping.best_epoch}")
                log.info("early stop: no better loss for %d epochs; keeping epoch %d", config.patience,
                         stopping.best_epoch)
                break
            train_data.on_epoch_end()
    trainer.set_weights(best_weights)
    if board is not None:
        board.finish(stopping.best_epoch, watched, history[watched][stopping.best_epoch - 1])
    return history


def _run_epoch(trainer: keras.Model, step, batches: keras.utils.PyDataset) -> dict[str, float]:
    """One pass of ``step`` over ``batches``; the mean of each loss term."""
    for tracker in trainer.metrics:
        tracker.reset_state()
    logs = {}
    for index in range(len(batches)):
        logs = step(tf.nest.map_structure(tf.constant, batches[index]))
    return {name: float(value) for name, value in logs.items()}
