"""The orientation histogram on images whose gradients are known by hand."""

import numpy as np

from pipeline.orientations import OrientationHistogram

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
