"""Histograms of gradient orientations (HOG-like shape statistics) as a Keras layer.

They describe the outline of what is in the picture (edges and their directions, cell by cell)
whatever its colour, which is what the learned latents are weakest at. Being a layer, they are
computed inside the saved encoder: queries get exactly what the indexed images got.
"""

from __future__ import annotations

import math

import keras
from keras import ops


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
        position = ops.mod(ops.arctan2(dy, dx), math.pi) * (self.bins / math.pi) - 0.5  # bin centres at k + 0.5
        lower = ops.floor(position)
        upper_share = position - lower
        lower_index = ops.cast(ops.mod(lower, self.bins), "int32")
        upper_index = ops.cast(ops.mod(lower + 1, self.bins), "int32")
        votes = (ops.one_hot(lower_index, self.bins) * (1 - upper_share)[..., None]
                 + ops.one_hot(upper_index, self.bins) * upper_share[..., None]) * magnitude[..., None]
        size = images.shape[1]
        step = size // self.cells
        cells = ops.sum(ops.reshape(votes, (-1, self.cells, step, self.cells, step, self.bins)), axis=(2, 4))
        histogram = ops.sqrt(ops.reshape(cells, (-1, self.cells * self.cells * self.bins)))
        return histogram / (ops.norm(histogram, axis=-1, keepdims=True) + 1e-6)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cells * self.cells * self.bins)

    def get_config(self) -> dict:
        return {**super().get_config(), "cells": self.cells, "bins": self.bins}


def _of_strongest_channel(dx, dy):
    """At each pixel, the gradient (dx, dy) of the channel where it is strongest (the first of equals):
    an argmax by comparisons, which LiteRT runs natively (Keras's argmax is not a builtin there)."""
    energy = dx * dx + dy * dy
    red = ops.logical_and(energy[..., 0] >= energy[..., 1], energy[..., 0] >= energy[..., 2])
    green = ops.logical_and(ops.logical_not(red), energy[..., 1] >= energy[..., 2])

    def pick(gradient):
        return ops.where(red, gradient[..., 0], ops.where(green, gradient[..., 1], gradient[..., 2]))

    return pick(dx), pick(dy)
