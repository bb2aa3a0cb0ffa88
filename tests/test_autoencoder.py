"""Model shapes, the view-consistency loss, the descriptor encoder, training of both autoencoders, and a real
fit at 512 px."""

import numpy as np
import pytest

from helpers import PIXELS, copy_subset, tiny_config
from pipeline.model.descriptor import build_blocks_model
from pipeline.search.searcher import SearchOptions
from pipeline.train.autoencoder import build_autoencoder, build_feature_autoencoder, nt_xent


def pixel_config(**overrides):
    return tiny_config(**{**PIXELS, **overrides})


@pytest.mark.parametrize("pooling", ["flatten", "max", "avg"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_shapes_and_output_range(pooling, activation):
    config = pixel_config(pooling=pooling, output_activation=activation, latent_dim=12, color_weight=0.2)
    autoencoder = build_autoencoder(config)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    reconstruction = autoencoder.model.predict_on_batch(images)
    assert reconstruction.shape == images.shape
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0  # targets are in [0, 1] for tanh too
    blocks = build_blocks_model(autoencoder.to_latent, config).predict_on_batch(images)
    grid = 32 // 4  # two stride-2 blocks
    assert blocks["latent"].shape == (3, grid * grid * 12 if pooling == "flatten" else 12)
    assert blocks["orientations"].shape == (3, 8 * 8 * 9) and blocks["colors"].shape == (3, 2 * 8**3)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_the_dense_autoencoder_flattens_to_a_latent_vector_and_back(activation):
    config = pixel_config(architecture="dense", output_activation=activation, latent_dim=12, color_weight=0.2)
    autoencoder = build_autoencoder(config)
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    reconstruction = autoencoder.model.predict_on_batch(images)
    assert reconstruction.shape == images.shape and 0.0 <= reconstruction.min() <= reconstruction.max() <= 1.0
    assert not any("conv" in type(layer).__name__.lower() for model in (autoencoder.maps, autoencoder.decoder)
                   for layer in model.layers)
    assert build_blocks_model(autoencoder.to_latent, config).predict_on_batch(images)["latent"].shape == (3, 12)
    assert autoencoder.maps.get_layer("enc0_dense").activation.__name__ == "relu"


def test_the_autoencoder_works_downscaled_and_the_histogram_at_full_size():
    config = pixel_config(image_size=64, autoencoder_size=32)
    autoencoder = build_autoencoder(config)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    assert autoencoder.model.predict_on_batch(images).shape == (2, 32, 32, 3)
    assert autoencoder.maps.input_shape == (None, 32, 32, 3)
    blocks = build_blocks_model(autoencoder.to_latent, config).predict_on_batch(images)
    assert blocks["latent"].shape == (2, 8 * 8 * 16) and blocks["orientations"].shape == (2, 8 * 8 * 9)


def test_without_orientation_and_colour_weight_the_encoder_has_one_block():
    config = pixel_config(orientation_weight=0.0, color_weight=0.0)
    assert list(build_blocks_model(build_autoencoder(config).to_latent, config).output) == ["latent"]


def test_feature_autoencoder_shapes_and_shared_weights():
    autoencoder = build_feature_autoencoder((2, 2, 1280), latent_dim=16)
    maps = np.random.default_rng(0).random((3, 2, 2, 1280)).astype(np.float32)
    assert autoencoder.to_latent.predict_on_batch(maps).shape == (3, 16)
    assert autoencoder.model.predict_on_batch(maps).shape == (3, 1280)  # the map's channel profile
    assert {id(w) for w in autoencoder.to_latent.weights} <= {id(w) for w in autoencoder.model.weights}


def test_feature_autoencoder_training_lowers_the_loss(tmp_path):
    from pipeline.train.autoencoder import pooled_profiles, train_autoencoder
    from pipeline.data.dataset import RowCache, TrainingBatches

    rng = np.random.default_rng(0)
    profiles = rng.random((8, 64)).astype(np.float32)  # eight kinds of picture, seen at random positions
    maps = profiles[rng.integers(0, 8, 96)][:, None, None, :] * rng.random((96, 3, 3, 1)).astype(np.float32)
    (tmp_path / "maps.f16").write_bytes(maps.astype(np.float16).tobytes())
    cache = RowCache(str(tmp_path / "maps.f16"), (3, 3, 64), 96, np.float16)
    autoencoder = build_feature_autoencoder((3, 3, 64), 8)
    profiles = pooled_profiles(autoencoder.pool, cache, np.arange(96))
    history = train_autoencoder(autoencoder, TrainingBatches(cache, np.arange(80), 16, 0, profiles),
                                TrainingBatches(cache, np.arange(80, 96), 16, 0, profiles),
                                tiny_config(patience=50, learning_rate=2e-3), epochs=8)
    assert set(history) == {"loss", "val_loss"} and len(history["loss"]) == 8
    assert history["loss"][-1] < history["loss"][0] / 2


@pytest.mark.parametrize("pooling", ["average", "gem", "regional"])
def test_the_feature_autoencoder_starts_at_pca_of_the_pooled_maps(pooling, tmp_path):
    from sklearn.decomposition import PCA

    from pipeline.train.autoencoder import pooled_profiles
    from pipeline.data.dataset import RowCache

    rng = np.random.default_rng(1)
    maps = rng.random((60, 3, 3, 32)).astype(np.float32) * rng.random((1, 1, 1, 32)).astype(np.float32)
    maps = maps.astype(np.float16).astype(np.float32)  # as the fit caches them
    (tmp_path / "maps.f16").write_bytes(maps.astype(np.float16).tobytes())
    autoencoder = build_feature_autoencoder((3, 3, 32), 6, pooling)
    profiles = pooled_profiles(autoencoder.pool, RowCache(str(tmp_path / "maps.f16"), (3, 3, 32), 60, np.float16),
                               np.arange(60))
    np.testing.assert_allclose(profiles, _pooled_by_hand(maps, pooling), rtol=1e-4, atol=1e-5)
    autoencoder.start_at_pca(profiles)
    pca = PCA(6, random_state=0).fit(profiles)
    np.testing.assert_allclose(autoencoder.to_latent.predict_on_batch(maps), pca.transform(profiles), atol=1e-4)
    np.testing.assert_allclose(autoencoder.model.predict_on_batch(maps),
                               pca.inverse_transform(pca.transform(profiles)), atol=1e-4)  # PCA's reconstruction


def _pooled_by_hand(maps: np.ndarray, pooling: str) -> np.ndarray:
    """Average; GeM (p = 3); or the GeM of the whole map and of its four 2 x 2 corner windows (of 3 x 3), each of
    unit length, summed."""
    def gem(region):
        return np.mean(region ** 3, axis=(1, 2)) ** (1 / 3)

    if pooling == "average":
        return maps.mean(axis=(1, 2))
    if pooling == "gem":
        return gem(maps)
    regions = [maps] + [maps[:, top : top + 2, left : left + 2] for top in (0, 1) for left in (0, 1)]
    return sum(gem(region) / np.linalg.norm(gem(region), axis=1, keepdims=True) for region in regions)


def test_encoder_shares_the_trained_weights():
    autoencoder = build_autoencoder(pixel_config())
    shared = {id(w) for w in autoencoder.to_latent.weights}
    assert shared and shared <= {id(w) for w in autoencoder.model.weights}


def test_nt_xent_matches_a_computation_by_hand():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    z = np.concatenate([first, second])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    logits = z @ z.T / 0.5
    np.fill_diagonal(logits, -np.inf)
    partner = np.r_[np.arange(4, 8), np.arange(4)]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(8), partner].mean()
    assert float(nt_xent(first, second, 0.5)) == pytest.approx(expected, rel=1e-5)
    assert float(nt_xent(first, first, 0.1)) < float(nt_xent(first, second, 0.1))  # identical views: lower loss


def test_training_lowers_both_loss_terms_and_records_them(photos, tmp_path):
    from pipeline.train.autoencoder import train_autoencoder
    from pipeline.data.dataset import TrainingBatches, decode_to_cache
    from pipeline.data.images import find_images

    config = pixel_config(patience=50)
    decoded = decode_to_cache(find_images(photos), str(tmp_path / "cache.u8"), config.image_size)
    rows = np.arange(decoded.cache.count)
    history = train_autoencoder(build_autoencoder(config), TrainingBatches(decoded.cache, rows[:24], 8, 0),
                                TrainingBatches(decoded.cache, rows[24:], 8, 0), config, epochs=6)
    assert set(history) == {"loss", "reconstruction", "consistency", "val_loss", "val_reconstruction",
                            "val_consistency"}
    assert all(len(values) == 6 for values in history.values())
    assert history["reconstruction"][-1] < history["reconstruction"][0]
    assert history["consistency"][-1] < history["consistency"][0]


def test_consistency_zero_trains_on_reconstruction_alone(photos, tmp_path):
    from pipeline.train.autoencoder import ViewConsistencyTrainer, train_autoencoder
    from pipeline.data.dataset import TrainingBatches, decode_to_cache
    from pipeline.data.images import find_images

    config = pixel_config(consistency=0.0, patience=50)
    autoencoder = build_autoencoder(config)
    assert ViewConsistencyTrainer(autoencoder, config).head is None
    decoded = decode_to_cache(find_images(photos), str(tmp_path / "cache.u8"), config.image_size)
    history = train_autoencoder(autoencoder, TrainingBatches(decoded.cache, np.arange(32), 8, 0), None, config,
                                epochs=4)
    assert set(history) == {"loss", "reconstruction", "consistency"} and history["consistency"] == [0.0] * 4
    assert history["loss"] == history["reconstruction"] and history["loss"][-1] < history["loss"][0]


def test_a_step_smaller_than_the_minimum_improvement_is_no_better_epoch():
    from pipeline.train.early_stopping import MIN_IMPROVEMENT, EarlyStopping, kept_epoch

    stopping = EarlyStopping(patience=2)
    assert stopping.better(1.0) and not stopping.better(1.0 - MIN_IMPROVEMENT / 2)  # noise, not learning
    assert not stopping.should_stop and not stopping.better(0.9999) and stopping.should_stop
    assert stopping.best_epoch == 1
    assert kept_epoch({"loss": [1.0, 0.5, 0.4], "val_loss": [2.0, 1.5, 1.4999]}) == 2  # by the validation loss
    assert kept_epoch({"loss": [1.0, 0.5, 0.6]}) == 2 and kept_epoch({}) is None


def test_the_epoch_bar_counts_the_epoch_that_stopped_early_and_logs_never_glue_onto_it(photos, tmp_path,
                                                                                       monkeypatch, capsys, caplog):
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    import pipeline.train.autoencoder as autoencoder_module
    from pipeline.data.dataset import TrainingBatches, decode_to_cache
    from pipeline.data.images import find_images

    losses = iter([0.5, 0.4, 0.45, 0.47, 0.3])  # best at epoch 2, no better for the next two: stops after 4
    monkeypatch.setattr(autoencoder_module, "_run_epoch", lambda *_: {"loss": next(losses)})
    config = pixel_config(patience=2)
    decoded = decode_to_cache(find_images(photos), str(tmp_path / "cache.u8"), config.image_size)
    handler = logging.StreamHandler()  # the terminal, as the command line sets it up
    logging.root.addHandler(handler)
    caplog.set_level(logging.INFO, logger="pipeline")
    try:
        with logging_redirect_tqdm():
            history = autoencoder_module.train_autoencoder(
                build_autoencoder(config), TrainingBatches(decoded.cache, np.arange(8), 8, 0), None, config, epochs=10)
    finally:
        logging.root.removeHandler(handler)
    assert history["loss"] == [0.5, 0.4, 0.45, 0.47]
    screen = capsys.readouterr().err.replace("\r", "\n").splitlines()
    bars = [line for line in screen if line.startswith("train:")]
    assert "4/10" in bars[-1] and "stopped early, kept epoch 2" in bars[-1]
    assert "epoch 4/10: loss 0.4700" in screen  # a line of its own
    assert not any("epoch" in line.split("]", 1)[-1] for line in bars)  # nothing written after a bar's end


@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "none"])
def test_fit_at_512_pixels_the_design_cards_size(tmp_path, backbone):
    from pipeline.config import FitConfig
    from pipeline.fit import fit
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=3)
    summary = fit(photos, tmp_path / "artifacts", FitConfig(backbone=backbone, image_size=512, epochs=1, batch_size=6))
    assert summary.images == 6 and summary.epochs_run == 1
    query = sorted((photos / "hat").glob("*.jpg"))[0]
    assert Searcher(Bundle.load(tmp_path / "artifacts")).search_file(query, SearchOptions(n=2)).results[0].same_image


def test_descriptor_blocks_are_whitened_weighted_and_saved_inside_the_encoder(tmp_path):
    import keras

    from pipeline.model.descriptor import DescriptorHead
    from pipeline.model.runtime import block_tensors
    from pipeline.model.runtime import KerasEncoder

    config = pixel_config(pooling="flatten", latent_dim=4, orientation_weight=0.75, color_weight=0.0)
    blocks_model = build_blocks_model(build_autoencoder(config).to_latent, config)
    images = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    blocks = blocks_model.predict_on_batch(images.astype(np.float32) / 255)

    def whitened_latent(whitening):
        model = DescriptorHead(blocks, {"latent": 0.25, "orientations": 0.75}, 10, whitening).encoder(blocks_model)
        return model, keras.Model(model.input, model.get_layer("whiten_latent").output).predict_on_batch(
            images.astype(np.float32) / 255)

    model, full = whitened_latent(1.0)
    np.testing.assert_allclose(full.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(full, rowvar=False), np.eye(10), atol=0.05)  # unit variance, decorrelated
    half = np.cov(whitened_latent(0.5)[1], rowvar=False)
    plain = np.cov(whitened_latent(0.0)[1], rowvar=False)
    np.testing.assert_allclose(np.diag(half), np.sqrt(np.diag(plain)), rtol=0.05)  # half whitening: std ** 0.5
    np.testing.assert_allclose(half - np.diag(np.diag(half)), 0, atol=1e-3 * np.abs(half).max())  # decorrelated

    vectors = KerasEncoder(model).encode(images)
    assert vectors.shape == (40, 20)  # two blocks of 10
    np.testing.assert_allclose(np.linalg.norm(vectors[:, :10], axis=1), 0.25, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vectors[:, 10:], axis=1), 0.75, rtol=1e-4)
    model.save(tmp_path / "encoder.keras")
    from pipeline.model.runtime import load_keras_model

    reloaded = load_keras_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(KerasEncoder(reloaded).encode(images), vectors, atol=1e-5)
    read_back = keras.Model(reloaded.input, block_tensors(reloaded)).predict_on_batch(images.astype(np.float32) / 255)
    assert set(read_back) == {"latent", "orientations"}
    np.testing.assert_allclose(read_back["orientations"], blocks["orientations"], atol=1e-5)
