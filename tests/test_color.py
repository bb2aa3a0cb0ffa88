"""The colour-histogram layer against OpenCV's HSV histogram, on made and on real photos."""

import cv2
import numpy as np

from conftest import SAMPLE
from pipeline.color import ColorHistogram
from pipeline.images import prepare_image, read_file


def _opencv_histogram(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256]).ravel()
    return np.sqrt(histogram / histogram.sum())


def test_a_red_centre_on_blue_counts_in_the_centre_histogram_alone():
    image = np.zeros((1, 64, 64, 3), np.float32)
    image[..., 2] = 1.0  # blue
    image[:, 16:48, 16:48] = (1.0, 0.0, 0.0)  # the middle half of each side: red
    whole, centre = np.split(np.asarray(ColorHistogram()(image))[0], 2)
    red, blue = 0 * 64 + 7 * 8 + 7, 5 * 64 + 7 * 8 + 7  # (hue bin, saturation bin, value bin)
    np.testing.assert_allclose(whole[[red, blue]], np.sqrt([0.25, 0.75]), atol=1e-6)
    np.testing.assert_allclose(centre[red], 1.0, atol=1e-6)
    assert np.count_nonzero(whole) == 2 and np.count_nonzero(centre) == 1


def test_the_whole_image_histogram_matches_opencv_on_real_photos():
    paths = sorted(SAMPLE.rglob("*.jpg"))[::25]
    images = np.stack([prepare_image(read_file(p), str(p), 64) for p in paths])
    ours = np.asarray(ColorHistogram()(images.astype(np.float32) / 255))[:, :512]
    reference = np.stack([_opencv_histogram(image) for image in images])
    similarity = (ours * reference).sum(axis=1)  # both have unit length
    assert similarity.min() > 0.98  # bin edges differ by a rounding of hue and value
