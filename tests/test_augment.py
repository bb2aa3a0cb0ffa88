"""Random training views: each operation does what it says, and nothing when switched off."""

import numpy as np
import tensorflow as tf

from pipeline.train.augment import ViewAugmentation


def rng(seed=0):
    return tf.random.Generator.from_seed(seed)


def photos(count=64, size=16, seed=0):
    return np.random.default_rng(seed).random((count, size, size, 3)).astype(np.float32)


def test_with_everything_off_a_view_is_the_image():
    images = photos()
    views = ViewAugmentation(min_crop=1.0, flip=False, color_jitter=0.0)(tf.constant(images), rng()).numpy()
    np.testing.assert_allclose(views, images, atol=1e-6)


def test_flips_mirror_some_images_and_leave_the_others():
    images = photos()
    views = ViewAugmentation(min_crop=1.0, flip=True, color_jitter=0.0)(tf.constant(images), rng()).numpy()
    mirrored = [np.allclose(v, i[:, ::-1]) for v, i in zip(views, images)]
    unchanged = [np.allclose(v, i) for v, i in zip(views, images)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 10 < sum(mirrored) < 54  # about half of 64


def test_crops_zoom_in_and_keep_the_value_range():
    size = 32
    ramp = np.tile(np.linspace(0, 1, size, dtype=np.float32)[None, :, None], (size, 1, 3))  # dark left, bright right
    images = np.repeat(ramp[None], 32, axis=0)
    views = ViewAugmentation(min_crop=0.25, flip=False, color_jitter=0.0)(tf.constant(images), rng()).numpy()
    assert views.shape == images.shape and views.min() >= 0 and views.max() <= 1
    spans = views[:, :, -1, 0].mean(axis=1) - views[:, :, 0, 0].mean(axis=1)
    assert (spans > 0).all()  # still dark left, bright right
    assert (spans < 0.999).mean() > 0.8  # but most views show only part of the ramp, stretched


def test_colour_jitter_changes_colours_but_keeps_gray_images_gray():
    images = photos()
    views = ViewAugmentation(min_crop=1.0, flip=False, color_jitter=0.4)(tf.constant(images), rng()).numpy()
    assert views.min() >= 0 and views.max() <= 1
    changed = np.abs(views - images).reshape(64, -1).max(axis=1) > 0.01
    assert 0.6 < changed.mean() <= 1.0  # 80% jittered, plus 20% turned gray
    turned_gray = np.all(np.abs(views - views[..., :1]) < 1e-5, axis=(1, 2, 3))
    assert 0 < turned_gray.sum() < 32
    gray = np.repeat(images[..., :1], 3, axis=-1)
    gray_views = ViewAugmentation(min_crop=1.0, flip=False, color_jitter=0.4)(tf.constant(gray), rng()).numpy()
    np.testing.assert_allclose(gray_views, np.repeat(gray_views[..., :1], 3, axis=-1), atol=1e-5)


def test_the_same_generator_state_gives_the_same_views():
    images = tf.constant(photos())
    augment = ViewAugmentation()
    generator = rng(3)
    first = augment(images, generator).numpy()
    assert not np.allclose(augment(images, generator).numpy(), first)  # the state moved on
    generator.reset_from_seed(3)
    np.testing.assert_allclose(augment(images, generator).numpy(), first)
