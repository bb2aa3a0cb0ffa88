"""The descriptor's histogram blocks as Keras layers: gradient orientations and HSV colour.

Being layers, they are computed inside the saved encoder, so queries get exactly what the indexed
images got. Every step is an op that LiteRT runs natively, and each vote is shared between the
nearest bins (:func:`soft_bins`), so a histogram is a continuous function of the pixels: two
runtimes that round differently in the last bit give the same histogram to the last bits, never a
vote moved to another bin.

- :class:`OrientationHistogram` describes the outline of what is in the picture (edges and their
  directions, cell by cell) whatever its colour, which is what learned latents are weakest at.
- :class:`ColorHistogram` describes colour, what a from-scratch autoencoder on a few hundred photos
  describes worst and what tells flowers, fabrics or sunsets apart; the centre's histogram adds
  where that colour is: the subject's rather than the background's.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from ..config import DESCRIPTOR_BLOCK_SIZE
from .resize import area_resize

HISTOGRAM_SIZE = DESCRIPTOR_BLOCK_SIZE  # the colour histograms' size (area-downscaled), as the reference baseline's


def soft_bins(values, bins: int, circular: bool = False):
    """(..., 1) values in [0, 1] -> (..., bins) weights summing to 1: a value's vote shared linearly
    between the two bins whose centres it lies between (bin k's centre is at (k + 0.5) / bins),
    across the ends when ``circular`` (an angle), else the end bins taking all beyond their centres."""
    position = values * bins - 0.5
    if not circular:
        position = ops.clip(position, 0.0, bins - 1.0)
    distance = ops.abs(position - ops.arange(bins, dtype="float32"))
    if circular:
        distance = ops.minimum(distance, bins - distance)
    return ops.relu(1.0 - distance)


@keras.saving.register_keras_serializable(package="pipeline")
class OrientationHistogram(keras.layers.Layer):
    """Image batch (batch, size, size, 3) in [0, 1] -> (batch, cells * cells * bins).

    At each pixel the gradient is that of the colour channel where it is strongest (so an edge
    between two colours of equal brightness still counts). The image is split into ``cells`` x
    ``cells`` cells; each cell gets a histogram of its gradients' unsigned orientations (``bins``
    bins over 180 degrees, each vote shared between the two nearest bins) weighted by gradient
    magnitude. The histograms are square-rooted (Hellinger) and the whole vector has unit length.
    ``size`` must be a multiple of ``cells``.
    """

    def __init__(self, cells: int = 8, bins: int = 9, **kwargs):
        super().__init__(**kwargs)
        self.cells = cells
        self.bins = bins

    def call(self, images):
        zeros_column = ops.zeros_like(images[:, :, :1])
        zeros_row = ops.zeros_like(images[:, :1, :])
        dx = ops.concatenate([zeros_column, images[:, :, 2:] - images[:, :, :-2], zeros_column], axis=2)
        dy = ops.concatenate([zeros_row, images[:, 2:, :] - images[:, :-2, :], zeros_row], axis=1)
        dx, dy = _of_strongest_channel(dx, dy)
        magnitude = ops.sqrt(dx * dx + dy * dy)
        angle = ops.arctan2(dy, dx)  # (-pi, pi]; unsigned: [0, pi], pi the same as 0
        angle = angle + math.pi * _is_positive(-angle)
        votes = soft_bins(angle * (1 / math.pi), self.bins, circular=True) * magnitude
        step = images.shape[1] // self.cells
        cells = ops.average_pool(votes, step, step) * float(step * step)  # the votes of each cell, summed
        histogram = ops.sqrt(ops.reshape(cells, (-1, self.cells * self.cells * self.bins)))
        return histogram / (ops.norm(histogram, axis=-1, keepdims=True) + 1e-6)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cells * self.cells * self.bins)

    def get_config(self) -> dict:
        return {**super().get_config(), "cells": self.cells, "bins": self.bins}


def _is_positive(values):
    """1.0 where ``values`` > 0, else 0.0: the comparison made of ops that XNNPACK runs (LiteRT's
    comparisons and selects run outside it, and cost as much as the rest of a block)."""
    return ops.ceil(ops.minimum(ops.relu(values), 1.0))


def _channel(images, channel: int):
    """Channel ``channel`` of (..., channels), keeping its axis (dropping it costs a slow reshape in LiteRT)."""
    return images[..., channel : channel + 1]


def _of_strongest_channel(dx, dy):
    """At each pixel (..., 1), the gradient (dx, dy) of the channel where it is strongest (the first of
    equals): an argmax as 0/1 masks by :func:`_is_positive`, the gradient their weighted sum."""
    energy = dx * dx + dy * dy
    red_energy, green_energy, blue_energy = (_channel(energy, channel) for channel in range(3))
    red = (1.0 - _is_positive(green_energy - red_energy)) * (1.0 - _is_positive(blue_energy - red_energy))
    green = (1.0 - red) * (1.0 - _is_positive(blue_energy - green_energy))
    blue = 1.0 - red - green

    def pick(gradient):
        return red * _channel(gradient, 0) + green * _channel(gradient, 1) + blue * _channel(gradient, 2)

    return pick(dx), pick(dy)


def rgb_to_hsv(images):
    """RGB (..., 3) in [0, 1] -> hue, saturation and value (..., 1) in [0, 1], by the formulas of
    ``tf.image.rgb_to_hsv`` (its selects as 0/1 masks, as in :func:`_of_strongest_channel`)."""
    red, green, blue = (_channel(images, channel) for channel in range(3))
    value = ops.maximum(ops.maximum(red, green), blue)
    spread = value - ops.minimum(ops.minimum(red, green), blue)
    lit, varied = _is_positive(value), _is_positive(spread)
    saturation = spread / (value + (1.0 - lit)) * lit
    norm = ops.reciprocal(spread + (1.0 - varied)) * (1.0 / 6.0)
    red_top = 1.0 - _is_positive(value - red)
    green_top = (1.0 - red_top) * (1.0 - _is_positive(value - green))
    blue_top = 1.0 - red_top - green_top
    hue = (red_top * (norm * (green - blue)) + green_top * (norm * (blue - red) + 2.0 / 6.0)
           + blue_top * (norm * (red - green) + 4.0 / 6.0)) * varied
    return hue + _is_positive(-hue), saturation, value


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
