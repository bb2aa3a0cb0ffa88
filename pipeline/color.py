"""HSV colour histograms of the whole image and of its centre, as a Keras layer.

Colour is what a from-scratch autoencoder on a few hundred photos describes worst and what tells
flowers, fabrics or sunsets apart; the centre's histogram (the middle half of each side) adds
where that colour is: the subject's rather than the background's. Being a layer, it is computed
inside the saved encoder, so queries get exactly what the indexed images got.
"""

from __future__ import annotations

import keras
import tensorflow as tf

HISTOGRAM_SIZE = 64  # the histograms are taken at this size (area-downscaled), as the reference baseline does


@keras.saving.register_keras_serializable(package="pipeline")
class ColorHistogram(keras.layers.Layer):
    """Image batch (batch, size, size, 3) in [0, 1] -> (batch, 2 * bins ** 3).

    Each image is area-resized to HISTOGRAM_SIZE, converted to HSV, and counted in a
    ``bins`` x ``bins`` x ``bins`` histogram over hue, saturation and value, once for the whole
    image and once for its centre (the middle half of each side). Each histogram is normalised
    to sum 1 and square-rooted (Hellinger), as the reference HSV baseline is.
    """

    def __init__(self, bins: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def call(self, images):
        small = tf.image.resize(images, (HISTOGRAM_SIZE, HISTOGRAM_SIZE), method="area")
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(small, 0.0, 1.0))
        cells = tf.minimum(tf.cast(hsv * self.bins, tf.int32), self.bins - 1)
        joint = (cells[..., 0] * self.bins + cells[..., 1]) * self.bins + cells[..., 2]  # (batch, h, w)
        quarter = HISTOGRAM_SIZE // 4
        centre = joint[:, quarter : HISTOGRAM_SIZE - quarter, quarter : HISTOGRAM_SIZE - quarter]
        return tf.concat([self._histogram(joint), self._histogram(centre)], axis=1)

    def _histogram(self, joint):
        flat = tf.reshape(joint, (tf.shape(joint)[0], -1))
        counts = tf.math.bincount(flat, minlength=self.bins**3, maxlength=self.bins**3, axis=-1, dtype=tf.float32)
        return tf.sqrt(counts / tf.reduce_sum(counts, axis=1, keepdims=True))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * self.bins**3)

    def get_config(self) -> dict:
        return {**super().get_config(), "bins": self.bins}
