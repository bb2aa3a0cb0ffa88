"""The histogram layers: orientations on images whose gradients are known by hand, colour on made colours and on
real photos against an independent count; the area resizing before them against TensorFlow's."""

import cv2
import numpy as np
import pytest

from helpers import SAMPLE
from pipeline.data.images import prepare_image, read_file
from pipeline.model.histograms import ColorHistogram, OrientationHistogram, _of_strongest_channel, rgb_to_hsv
from pipeline.model.resize import area_matrix, area_resize

SIZE, CELLS, BINS = 32, 4, 9


def histogram(image):
    cells = np.asarray(OrientationHistogram(CELLS, BINS)(image[None].astype(np.float32)))[0]
    return cells.reshape(CELLS, CELLS, BINS)


def test_a_horizontal_edge_votes_only_in_the_vertical_gradient_bin():
    image = np.zeros((SIZE, SIZE, 3))
    image[SIZE // 2 + 2 :] = 1.0  # bright bottom: the gradient points down, 90 degrees
    cells = histogram(image)
    assert np.count_nonzero(cells) > 0 and np.count_nonzero(cells[:, :, [b for b in range(BINS) if b != 4]]) == 0
    assert np.count_nonzero(cells.sum(axis=2), axis=1).tolist() == [0, 0, 4, 0]  # only the cells on the edge


def test_a_vertical_edge_shares_its_votes_between_the_two_bins_around_zero_degrees():
    image = np.zeros((SIZE, SIZE, 3))
    image[:, SIZE // 2 + 2 :] = 1.0  # 0 degrees lies between the centres of bins 8 and 0
    cells = histogram(image)
    np.testing.assert_allclose(cells[:, :, 0], cells[:, :, 8])
    assert cells[:, :, 1:8].max() == 0 and cells[:, :, 0].max() > 0


def test_an_edge_between_two_colours_of_equal_brightness_is_seen():
    image = np.zeros((SIZE, SIZE, 3))
    image[:, : SIZE // 2 + 2, 0] = 0.6  # red left
    image[:, SIZE // 2 + 2 :, 1] = 0.6  # green right: the channel mean is the same on both sides
    assert histogram(image).max() > 0


def test_unit_length_and_no_nan_on_a_flat_image():
    rng = np.random.default_rng(0)
    vector = histogram(rng.random((SIZE, SIZE, 3))).ravel()
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    flat = histogram(np.full((SIZE, SIZE, 3), 0.5))
    assert np.isfinite(flat).all() and flat.max() == 0



def _soft_histogram(rgb: np.ndarray, bins: int = 8) -> np.ndarray:
    """The whole image's histogram counted independently: OpenCV's float HSV, each pixel's vote
    shared linearly between the two nearest bin centres of each axis (hue around the circle)."""
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2HSV).reshape(-1, 3) / [360.0, 1.0, 1.0]
    weights = []
    for axis, value in enumerate(hsv.T):
        position = value * bins - 0.5
        if axis:
            position = np.clip(position, 0, bins - 1)
        lower = np.floor(position)
        share = position - lower
        axis_weights = np.zeros((len(value), bins))
        np.add.at(axis_weights, (np.arange(len(value)), lower.astype(int) % bins), 1 - share)
        np.add.at(axis_weights, (np.arange(len(value)), (lower.astype(int) + 1) % bins if axis == 0
                                 else np.minimum(lower.astype(int) + 1, bins - 1)), share)
        weights.append(axis_weights)
    counts = np.einsum("ph,ps,pv->hsv", *weights).ravel()
    return np.sqrt(counts / counts.sum())


def test_a_red_centre_on_blue_counts_in_the_centre_histogram_alone_its_votes_shared_between_bins():
    image = np.zeros((1, 64, 64, 3), np.float32)
    image[..., 2] = 1.0  # blue: hue 2/3, between the centres of hue bins 4 and 5
    image[:, 16:48, 16:48] = (1.0, 0.0, 0.0)  # the middle half of each side: red, hue 0, halfway between bins 7 and 0
    whole, centre = np.split(np.asarray(ColorHistogram()(image))[0], 2)
    bright = 7 * 8 + 7  # saturation bin 7, value bin 7
    red, blue = [0 * 64 + bright, 7 * 64 + bright], [4 * 64 + bright, 5 * 64 + bright]
    np.testing.assert_allclose(whole[red + blue], np.sqrt([0.125, 0.125, 0.75 / 6, 0.75 * 5 / 6]), atol=1e-6)
    np.testing.assert_allclose(centre[red], np.sqrt([0.5, 0.5]), atol=1e-6)
    assert np.count_nonzero(whole) == 4 and np.count_nonzero(centre) == 2


def test_the_whole_image_histogram_matches_an_independent_count_on_real_photos():
    paths = sorted(SAMPLE.rglob("*.jpg"))[::25]
    images = np.stack([prepare_image(read_file(p), str(p), 64) for p in paths])
    ours = np.asarray(ColorHistogram()(images.astype(np.float32) / 255))[:, :512]
    reference = np.stack([_soft_histogram(image) for image in images])
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    assert ((ours * reference).sum(axis=1)).min() > 0.9999  # both have unit length


def test_hsv_equals_opencvs_on_every_kind_of_pixel():
    rng = np.random.default_rng(1)
    levels = np.array([0.0, 0.25, 0.5, 1.0], np.float32)  # black, grays, white, and every tie between channels
    ties = np.stack(np.meshgrid(levels, levels, levels), -1).reshape(-1, 3)
    pixels = np.concatenate([ties, rng.random((4000, 3)).astype(np.float32)])[None, None]
    hue, saturation, value = (np.asarray(part)[0, 0, :, 0] for part in rgb_to_hsv(pixels))
    expected = cv2.cvtColor(pixels[0], cv2.COLOR_RGB2HSV)[0] / [360.0, 1.0, 1.0]
    circular = np.minimum(np.abs(hue - expected[:, 0]), 1 - np.abs(hue - expected[:, 0]))
    assert circular.max() < 1e-5 and hue.min() >= 0 and hue.max() < 1
    np.testing.assert_allclose(saturation, expected[:, 1], atol=2e-6)
    np.testing.assert_array_equal(value, pixels[0, 0].max(axis=1))


def test_the_strongest_channel_wins_and_the_first_of_equals():
    dx = np.array([[3.0, 4.0, 0.0], [2.0, 2.0, 2.0], [0.0, 1.0, 1.0], [1.0, 0.0, -5.0]], np.float32)[None, None]
    dy = np.array([[0.0, 0.0, 4.5], [0.0, 0.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)[None, None]
    picked = [np.asarray(gradient)[0, 0, :, 0].tolist() for gradient in _of_strongest_channel(dx, dy)]
    assert picked == [[0.0, 2.0, 1.0, -5.0], [4.5, 0.0, -1.0, 0.0]]


@pytest.mark.parametrize("side, size", [(224, 64), (512, 224), (96, 64), (200, 64), (64, 32)])
def test_area_resizing_equals_its_definition_and_tensorflows(side, size):
    """By a convolution (224 to 64, 512 to 224, 96 to 64, 64 to 32) or by matrix products (200 to 64)."""
    import tensorflow as tf

    images = np.random.default_rng(side).random((2, side, side, 3)).astype(np.float32)
    weights = area_matrix(side, size).astype(np.float64)
    exact = np.einsum("iy,byxc,jx->bijc", weights, images.astype(np.float64), weights, optimize=True)
    ours = np.asarray(area_resize(images, size))
    np.testing.assert_allclose(ours, exact, atol=1e-6)
    tensorflows = tf.image.resize(images, (size, size), method="area").numpy()
    np.testing.assert_allclose(ours, tensorflows, atol=5e-5)  # its own rounding of the scale: 2e-5 off at 512 to 224
