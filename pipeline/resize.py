"""Area downscaling as a Keras layer made of matrix products, so that LiteRT runs it natively.

TensorFlow's ``ResizeArea`` (Keras's ``Resizing(interpolation="area")``) is not a LiteRT builtin
op. Area resizing is linear and separable: each output row is a weighted mean of the input rows it
covers (a fractional overlap counts in part), and the same for columns, so it is two matrix
products by a fixed matrix (:func:`area_matrix`), which every runtime has.
"""

from __future__ import annotations

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
    matrix = area_matrix(side, size)
    per_row = ops.matmul(ops.transpose(images, (0, 1, 3, 2)), ops.convert_to_tensor(matrix.T))  # columns resized
    per_row = ops.reshape(ops.transpose(per_row, (0, 1, 3, 2)), (-1, side, size * channels))
    return ops.reshape(ops.matmul(ops.convert_to_tensor(matrix), per_row), (-1, size, size, channels))  # then rows


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
