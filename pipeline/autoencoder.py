"""Building and training the convolutional autoencoder (Keras)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers  # noqa: E402

from .config import FitConfig  # noqa: E402


def _conv_block(x, filters: int, name: str, transpose: bool = False):
    conv = layers.Conv2DTranspose if transpose else layers.Conv2D
    x = conv(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_autoencoder(config: FitConfig) -> tuple[keras.Model, keras.Model]:
    """The autoencoder (trained on reconstruction) and its encoder (image -> latent vector).

    Shapes with the defaults (64 px, filters 32-64-128-256, latent 128, flatten):
    image (64, 64, 3) -> 4 stride-2 conv blocks -> (4, 4, 256) -> 1x1 conv -> code (4, 4, 128),
    from which the decoder upsamples back to (64, 64, 3). The encoder's vector is the code map
    flattened (2048 values, keeping where things are in the picture), or its global max or
    average over positions (128 values). Both models share their layers.
    """
    size = config.image_size
    image = keras.Input((size, size, 3), name="image")
    features = image
    for i, filters in enumerate(config.filters):
        features = _conv_block(features, filters, f"enc{i}")
    code = layers.Conv2D(config.latent_dim, 1, name="code")(features)
    read_out = {"flatten": layers.Flatten, "max": layers.GlobalMaxPooling2D, "avg": layers.GlobalAveragePooling2D}
    encoder = keras.Model(image, read_out[config.pooling](name="latent")(code), name="encoder")
    to_code = keras.Model(image, code, name="to_code")

    y = to_code(layers.GaussianNoise(config.noise, name="denoise")(image) if config.noise else image)
    for i, filters in enumerate(reversed(config.filters)):
        y = _conv_block(y, filters, f"dec{i}", transpose=True)
    y = layers.Conv2D(3, 3, padding="same", activation=config.output_activation, name="pixels")(y)
    if config.output_activation == "tanh":
        y = layers.Rescaling(0.5, offset=0.5, name="to_unit_range")(y)  # targets lie in [0, 1]
    return keras.Model(image, y, name="autoencoder"), encoder


def train_autoencoder(
    autoencoder: keras.Model,
    train_data: keras.utils.PyDataset,
    validation_data: keras.utils.PyDataset | None,
    config: FitConfig,
    checkpoint_path: str,
) -> dict[str, list[float]]:
    """Train on reconstruction with early stopping; keeps the best epoch's weights.

    The best model (lowest validation loss, or training loss without a validation set) is also
    written to ``checkpoint_path``. Returns the per-epoch history (loss, val_loss).
    """
    optimizer = (
        keras.optimizers.Adam(config.learning_rate)
        if config.optimizer == "adam"
        else keras.optimizers.Adadelta(config.learning_rate)
    )
    loss = "mse" if config.loss == "mse" else "binary_crossentropy"
    autoencoder.compile(optimizer=optimizer, loss=loss)
    monitor = "val_loss" if validation_data is not None else "loss"
    callbacks = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(checkpoint_path, monitor=monitor, save_best_only=True),
    ]
    history = autoencoder.fit(
        train_data, validation_data=validation_data, epochs=config.epochs, callbacks=callbacks, verbose=2
    )
    return {name: [float(v) for v in values] for name, values in history.history.items()}
