"""Area downscaling as a Keras layer made of ops that LiteRT runs natively (and XNNPACK fast).

TensorFlow's ``ResizeArea`` (Keras's ``Resizing(interpolation="area")``) is not a LiteRT builtin
op. Area resizing is linear and separable: each output row is a weighted mean of the input rows it
covers (a fractional overlap counts in part), and the same for columns, so it is two matrix
products by a fixed matrix (:func:`area_matrix`). Where the two sides share a large factor (224 to
64 px: every 7 input pixels make 2 output pixels), the same weights repeat window after window, and
the resize is one strided convolution whose output channels hold each window's output pixels,
rearranged by ``depth_to_space``: a few times fewer operations than the matrix products and their
transposes, the same sums in another order.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


def area_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights: row i averages the input cells that output cell i covers,
    ``[i * source / target, (i + 1) * source / target)``, a partly covered cell in proportion."""
    scale = source / target
    edges = np.arange(target + 1) * scale
    cells = np.arange(source)
    overlap = np.clip(np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells), 0, None)
    return (overlap / scale).astype(np.float32)


def area_resize(images, size: int):
    """Square image batch (batch, side, side, channels) -> (batch, ``size``, ``size``, channels),
    each output pixel the mean of the input area it covers (as ``tf.image.resize(method="area")``,
    within float rounding); the batch itself where it is that size already."""
    if images.shape[1] == size:
        return images
    side, channels = images.shape[1], images.shape[3]
    common = math.gcd(side, size)
    window, outputs = side // common, size // common  # each window of input pixels makes this many output pixels
    if outputs * outputs * channels <= size:  # the convolution's multiply-adds <= the matrix products'
        return _windowed_area_resize(images, window, outputs)
    matrix = area_matrix(side, size)
    per_row = ops.matmul(ops.transpose(images, (0, 1, 3, 2)), ops.convert_to_tensor(matrix.T))  # columns resized
    per_row = ops.reshape(ops.transpose(per_row, (0, 1, 3, 2)), (-1, side, size * channels))
    return ops.reshape(ops.matmul(ops.convert_to_tensor(matrix), per_row), (-1, size, size, channels))  # then rows


def _windowed_area_resize(images, window: int, outputs: int):
    """:func:`area_resize` where every ``window`` x ``window`` input pixels make ``outputs`` x
    ``outputs`` output pixels: a convolution of that stride, one output channel per output pixel
    of a window and colour channel, then ``depth_to_space``."""
    channels = images.shape[3]
    weights = area_matrix(window, outputs)  # (outputs, window): one window's weights, the same in every window
    kernel = np.zeros((window, window, channels, outputs, outputs, channels), np.float32)
    for channel in range(channels):
        kernel[:, :, channel, :, :, channel] = np.einsum("iy,jx->yxij", weights, weights)
    kernel = kernel.reshape(window, window, channels, outputs * outputs * channels)
    pixels = ops.conv(images, ops.convert_to_tensor(kernel), strides=window, padding="valid")
    return ops.depth_to_space(pixels, outputs) if outputs > 1 else pixels


@keras.saving.register_keras_serializable(package="pipeline")
class AreaResize(keras.layers.Layer):
    """:func:`area_resize` as a layer."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, images):
        return area_resize(images, self.size)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}
