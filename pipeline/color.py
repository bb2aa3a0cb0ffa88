"""HSV colour histograms of the whole image and of its centre, as a Keras layer.

Colour is what a from-scratch autoencoder on a few hundred photos describes worst and what tells
flowers, fabrics or sunsets apart; the centre's histogram (the middle half of each side) adds
where that colour is: the subject's rather than the background's. Being a layer, it is computed
inside the saved encoder, so queries get exactly what the indexed images got.

Every step is an op that LiteRT runs natively, and each pixel's vote is shared between the nearest
bins (soft binning), so the histogram is a continuous function of the pixels: two runtimes that
round differently in the last bit give the same histogram to the last bits, never a vote moved to
another bin.
"""

from __future__ import annotations

import keras
from keras import ops

from .resize import area_resize

HISTOGRAM_SIZE = 64  # the histograms are taken at this size (area-downscaled), as the reference baseline does


def rgb_to_hsv(images):
    """RGB in [0, 1] -> HSV in [0, 1], by the formulas of ``tf.image.rgb_to_hsv``."""
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    value = ops.maximum(ops.maximum(red, green), blue)
    spread = value - ops.minimum(ops.minimum(red, green), blue)
    saturation = ops.where(value > 0, spread / ops.where(value > 0, value, 1.0), 0.0)
    norm = ops.reciprocal(ops.where(spread > 0, spread, 1.0)) * (1.0 / 6.0)
    hue = ops.where(red == value, norm * (green - blue),
                    ops.where(green == value, norm * (blue - red) + 2.0 / 6.0, norm * (red - green) + 4.0 / 6.0))
    hue = ops.where(spread > 0, hue, 0.0)
    hue = ops.where(hue < 0, hue + 1.0, hue)
    return hue, saturation, value


def soft_bins(values, bins: int, circular: bool = False):
    """(..., ) values in [0, 1] -> (..., bins) weights summing to 1: a value's vote shared between
    the two bins whose centres it lies between (linearly), across the ends when ``circular`` (hue)."""
    position = values * bins - 0.5  # bin k's centre lies at k + 0.5 of the range
    if not circular:
        position = ops.clip(position, 0.0, bins - 1.0)
    distance = ops.abs(position[..., None] - ops.arange(bins, dtype="float32"))
    if circular:
        distance = ops.minimum(distance, bins - distance)
    return ops.relu(1.0 - distance)


# Registered under a name of its own: encoders saved before format 6 name the earlier, hard-binned layer,
# and must not load as this one (their stored histograms were counted otherwise).
@keras.saving.register_keras_serializable(package="pipeline", name="SoftColorHistogram")
class ColorHistogram(keras.layers.Layer):
    """Image batch (batch, size, size, 3) in [0, 1] -> (batch, 2 * bins ** 3).

    Each image is area-resized to HISTOGRAM_SIZE, converted to HSV, and counted in a
    ``bins`` x ``bins`` x ``bins`` histogram over hue, saturation and value (each pixel's vote
    shared between neighbouring bins), once for the whole image and once for its centre (the middle
    half of each side). Each histogram is normalised to sum 1 and square-rooted (Hellinger), as the
    reference HSV baseline is.
    """

    def __init__(self, bins: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def call(self, images):
        hue, saturation, value = rgb_to_hsv(ops.clip(area_resize(images, HISTOGRAM_SIZE), 0.0, 1.0))
        votes = [soft_bins(hue, self.bins, circular=True), soft_bins(saturation, self.bins), soft_bins(value, self.bins)]
        quarter = HISTOGRAM_SIZE // 4
        centre = [vote[:, quarter : HISTOGRAM_SIZE - quarter, quarter : HISTOGRAM_SIZE - quarter] for vote in votes]
        return ops.concatenate([self._histogram(*votes), self._histogram(*centre)], axis=1)

    def _histogram(self, hue, saturation, value):
        """Joint histogram of per-pixel bin weights (batch, rows, columns, bins) each: the sum over
        pixels of their outer product, as one matrix product."""
        bins = self.bins
        pixels = hue.shape[1] * hue.shape[2]
        hue_saturation = ops.reshape(hue[..., :, None] * saturation[..., None, :], (-1, pixels, bins * bins))
        counts = ops.matmul(ops.transpose(hue_saturation, (0, 2, 1)), ops.reshape(value, (-1, pixels, bins)))
        counts = ops.reshape(counts, (-1, bins**3))
        return ops.sqrt(counts / ops.sum(counts, axis=1, keepdims=True))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * self.bins**3)

    def get_config(self) -> dict:
        return {**super().get_config(), "bins": self.bins}
