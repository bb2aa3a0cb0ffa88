"""The fit's settings: defaults by backbone, every bad value refused with the setting's name, a manifest's settings
read back as written (and one edited by hand refused), the count-or-word flags."""

import pytest

from helpers import PIXELS, tiny_config
from pipeline.config import BACKBONE_DEFAULTS, FitConfig, parse_count_or_word, parse_extensions
from pipeline.errors import InputError


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(PIXELS, image_size=30), "multiple of 4"),
        (dict(PIXELS, image_size=64, autoencoder_size=30), "autoencoder_size must be a multiple of 4"),
        (dict(PIXELS, image_size=48, autoencoder_size=32), "multiple of autoencoder_size"),
        (dict(PIXELS, image_size=36, autoencoder_size=36), "multiple of 8 for the orientation histogram"),
        (dict(backbone="resnet"), "backbone must be one of"),
        (dict(image_size=16), "at least 32 with a backbone"),
        (dict(orientation_weight=0.6, color_weight=0.4), "must be below 1"),
        (dict(architecture="dense"), "is for --backbone none"),
        (dict(PIXELS, architecture="mlp"), "architecture must be one of"),
        (dict(pooling="median"), "pooling must be one of"),
        (dict(optimizer="sgd"), "optimizer must be one of"),
        (dict(noise=1.5), "noise must lie"),
        (dict(whitening=2.0), "whitening must lie"),
        (dict(orientation_weight=1.0), "orientation_weight \\+ color_weight must be below 1"),
        (dict(color_weight=-0.1), "color_weight must lie"),
        (dict(min_crop=0.0), "min_crop must lie"),
        (dict(color_jitter=1.0), "color_jitter must lie"),
        (dict(temperature=0.0), "temperature above 0"),
        (dict(query_expansion=-1), "query_expansion must be"),
        (dict(epochs=0), "epochs must be"),
        (dict(clusters=0), "clusters must be"),
        (dict(precision="int4"), "precision must be one of"),
        (dict(extensions=("jpg",)), "extensions must be file extensions like .jpg"),
        (dict(extensions=(".JPG",)), "extensions must be file extensions like .jpg"),
        (dict(PIXELS, precision="int8"), "with --backbone none there is none"),
    ],
)
def test_bad_settings_are_input_errors(overrides, message):
    with pytest.raises(InputError, match=message):
        tiny_config(**overrides)


def test_auto_epochs_keep_the_training_budget_whatever_the_folder_size():
    from pipeline.config import MAX_AUTO_EPOCHS, TRAINING_IMAGES, FitConfig

    for backbone, budget in TRAINING_IMAGES.items():
        config = FitConfig(backbone=backbone)
        assert config.training_epochs(budget // 20) == 20
        assert config.training_epochs(10) == MAX_AUTO_EPOCHS and config.training_epochs(10 * budget) == 1
    assert FitConfig(epochs=7).training_epochs(10) == 7


@pytest.mark.parametrize("backbone", sorted(BACKBONE_DEFAULTS))
def test_settings_left_unset_take_the_backbones_defaults(backbone):
    config = FitConfig(backbone=backbone)
    for name, value in BACKBONE_DEFAULTS[backbone].items():
        assert getattr(config, name) == value
    assert FitConfig(backbone=backbone, whitening=0.25).whitening == 0.25  # a given value is kept


def test_the_settings_read_back_as_written_and_unknown_keys_are_ignored():
    config = tiny_config(**PIXELS, architecture="dense", noise=0.1, nprobe="all", clusters=7)
    data = config.to_dict()
    assert FitConfig.from_dict(data) == config
    assert FitConfig.from_dict({**data, "setting_of_a_newer_version": 1}) == config


@pytest.mark.parametrize("name, value", [("latent_dim", "128"), ("filters", [16, "32"]), ("filters", 16), ("whitening", "0.5"),
                                         ("flip_augment", 1), ("epochs", 2.5)])
def test_a_hand_edited_setting_of_the_wrong_type_is_refused_by_name(name, value):
    data = tiny_config().to_dict()
    with pytest.raises(InputError, match=f"^{name} must be of type"):
        FitConfig.from_dict({**data, name: value})


def test_count_or_word_flags():
    assert parse_count_or_word("auto", ("auto",)) == "auto" and parse_count_or_word("12", ("auto",)) == 12
    for text in ("0", "-3", "1.5", "many"):
        with pytest.raises(InputError, match="expected a positive integer or one of auto"):
            parse_count_or_word(text, ("auto",))


def test_extension_flags():
    assert parse_extensions("jpg, .PNG,jpg") == (".jpg", ".png")
    for bad in ("", "jpg,,png", "a/b", ".tar gz"):
        with pytest.raises(InputError, match="expected file extensions"):
            parse_extensions(bad)
    assert FitConfig.from_dict(FitConfig(extensions=(".png",)).to_dict()).image_extensions == {".png"}
    assert FitConfig().image_extensions is None
