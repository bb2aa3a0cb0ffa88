"""Model shapes for every latent choice, and a real fit at 512 px."""

import numpy as np
import pytest

from conftest import copy_subset, tiny_config
from pipeline.autoencoder import build_autoencoder
from pipeline.errors import InputError


@pytest.mark.parametrize("pooling", ["flatten", "max", "avg"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_shapes_and_output_range(pooling, activation):
    config = tiny_config(pooling=pooling, output_activation=activation, latent_dim=12)
    autoencoder, encoder = build_autoencoder(config)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    reconstruction = autoencoder.predict_on_batch(images)
    assert reconstruction.shape == images.shape
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0  # targets are in [0, 1] for tanh too
    grid = 32 // 4  # two stride-2 blocks
    assert encoder.predict_on_batch(images).shape == (3, grid * grid * 12 if pooling == "flatten" else 12)


def test_encoder_shares_the_trained_weights():
    autoencoder, encoder = build_autoencoder(tiny_config())
    shared = {id(w) for w in encoder.weights}
    assert shared and shared <= {id(w) for w in autoencoder.weights}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=30), "multiple of 4"),
        (dict(loss="bce", output_activation="tanh"), "needs output_activation 'sigmoid'"),
        (dict(pooling="median"), "pooling must be one of"),
        (dict(optimizer="sgd"), "optimizer must be one of"),
        (dict(noise=1.5), "noise must lie"),
        (dict(whitening=2.0), "whitening must lie"),
        (dict(clusters=0), "clusters must be"),
    ],
)
def test_bad_settings_are_input_errors(overrides, message):
    with pytest.raises(InputError, match=message):
        tiny_config(**overrides)


def test_fit_at_512_pixels_with_the_default_architecture(tmp_path):
    from pipeline.config import FitConfig
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=3)
    summary = fit(photos, tmp_path / "artifacts", FitConfig(image_size=512, epochs=1, batch_size=6))
    assert summary.images == 6 and summary.epochs_run == 1


def test_whitening_is_part_of_the_saved_encoder(tmp_path):
    import keras

    from pipeline.embed import embed_images, whitened_encoder

    _, encoder = build_autoencoder(tiny_config(pooling="flatten", latent_dim=4))
    images = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    latents = embed_images(encoder, images)
    whitened = whitened_encoder(encoder, latents, dims=10, whitening=1.0)
    vectors = embed_images(whitened, images)
    assert vectors.shape == (40, 10)
    np.testing.assert_allclose(vectors.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(vectors, rowvar=False), np.eye(10), atol=0.05)  # unit variance, decorrelated
    half = np.cov(embed_images(whitened_encoder(encoder, latents, dims=10, whitening=0.5), images), rowvar=False)
    plain = np.cov(embed_images(whitened_encoder(encoder, latents, dims=10, whitening=0.0), images), rowvar=False)
    np.testing.assert_allclose(np.diag(half), np.sqrt(np.diag(plain)), rtol=0.05)  # half whitening: std ** 0.5
    np.testing.assert_allclose(half - np.diag(np.diag(half)), 0, atol=1e-3 * np.abs(half).max())  # decorrelated
    whitened.save(tmp_path / "encoder.keras")
    reloaded = keras.models.load_model(tmp_path / "encoder.keras", compile=False)
    np.testing.assert_allclose(embed_images(reloaded, images), vectors, atol=1e-5)
