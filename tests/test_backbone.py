"""The pretrained backbones: their weights checked and loaded, and the Keras port classifying real photos."""

import numpy as np
import pytest

from helpers import PACKAGE_SAMPLES
from pipeline.data.images import prepare_image, read_file
from pipeline.errors import ArtifactError
from pipeline.model.backbone import _BN_EPSILON, build_backbone, fold_batch_norm, load_weights, weights_path


def test_the_installed_weights_load_as_arrays():
    weights = load_weights()
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3) and weights["_fc.weight"].shape == (1000, 1280)
    assert weights["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(isinstance(value, np.ndarray) for value in weights.values()) and len(weights) == 296


@pytest.mark.parametrize("backbone, blocks, head_input", [("efficientnet-lite1", 21, 320), ("efficientnet-lite2", 21, 352)])
def test_the_larger_backbones_weights_load_checked_against_their_own_hash(backbone, blocks, head_input, tmp_path):
    weights = load_weights(backbone)
    assert weights["_conv_head.weight"].shape == (1280, head_input, 1, 1)
    assert {int(name.split(".")[1]) for name in weights if name.startswith("_blocks.")} == set(range(blocks))
    other = tmp_path / "other.pth"
    other.write_bytes(weights_path("efficientnet-lite0").read_bytes())  # a real weights file, but another network's
    with pytest.raises(ArtifactError, match=f"other.pth: not the expected {backbone} weights"):
        load_weights(backbone, other)


def test_a_changed_missing_or_truncated_file_is_a_clear_error(tmp_path):
    changed = tmp_path / "changed.pth"
    original = weights_path().read_bytes()
    changed.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ArtifactError, match="changed.pth: not the expected efficientnet-lite0 weights"):
        load_weights(path=changed)
    with pytest.raises(ArtifactError, match="missing.pth: cannot read the backbone's weights"):
        load_weights(path=tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original[:5_000_000])
    with pytest.raises(ArtifactError, match="truncated.pth: not a readable weights file"):
        load_weights(path=truncated, check_sha256=False)


@pytest.fixture(scope="module")
def classifier():
    return build_backbone(224, classifier=True)


@pytest.mark.parametrize(
    "name, classes",
    [
        ("scikit-image/chelsea.png", range(281, 286)),  # a cat: tabby, tiger, Persian, Siamese or Egyptian cat
        ("scikit-image/coffee.png", (967, 968, 504)),  # espresso, cup, coffee mug
        ("matplotlib/grace_hopper.jpg", (652, 457, 834, 906)),  # military uniform, bow tie, suit, Windsor tie
    ],
)
def test_the_port_classifies_real_photos(classifier, name, classes):
    path = PACKAGE_SAMPLES / name
    image = prepare_image(read_file(path), str(path), 224)[None].astype(np.float32) / 255
    logits = classifier.predict_on_batch(image)[0]
    assert int(np.argmax(logits)) in classes


def test_the_feature_map_is_frozen_and_shaped():
    backbone = build_backbone(64)
    assert backbone.output_shape == (None, 2, 2, 1280) and not backbone.trainable_weights
    assert build_backbone(512).output_shape == (None, 7, 7, 1280)  # larger inputs: seen at the native 224 px
    assert build_backbone(512, "efficientnet-lite2").output_shape == (None, 9, 9, 1280)  # Lite2's native 260 px


def test_lite2_classifies_a_real_photo():
    path = PACKAGE_SAMPLES / "scikit-image" / "coffee.png"
    image = prepare_image(read_file(path), str(path), 260)[None].astype(np.float32) / 255
    logits = build_backbone(260, "efficientnet-lite2", classifier=True).predict_on_batch(image)[0]
    assert int(np.argmax(logits)) in (967, 968, 504)  # espresso, cup, coffee mug


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_folded_batch_norm_computes_the_convolution_then_the_norm(depthwise):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 9, 6)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 6, 1) if depthwise else (3, 3, 6, 4)).astype(np.float32)
    channels = 6 if depthwise else 4
    gamma, beta, mean = (rng.normal(size=channels).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.1, 2, size=channels).astype(np.float32)
    def convolution(**options):
        return (keras.layers.DepthwiseConv2D(3, padding="same", **options) if depthwise
                else keras.layers.Conv2D(4, 3, padding="same", **options))

    plain, folded = convolution(use_bias=False), convolution()
    norm = keras.layers.BatchNormalization(epsilon=_BN_EPSILON)
    plain.build(x.shape)
    norm.build(plain.compute_output_shape(x.shape))
    folded.build(x.shape)
    plain.set_weights([kernel])
    norm.set_weights([gamma, beta, mean, variance])
    expected = np.asarray(norm(plain(x), training=False))
    folded.set_weights(fold_batch_norm(kernel, gamma, beta, mean, variance, depthwise=depthwise))
    np.testing.assert_allclose(np.asarray(folded(x)), expected, rtol=1e-5, atol=1e-5)
