"""Random views of a training batch: crop, mirror, colour jitter and grayscale, as TensorFlow ops.

The view-consistency term of training (see :mod:`pipeline.train.autoencoder`) asks two views of the same
photo to have similar latents, so whatever these operations change (framing, left/right, lighting,
colour) is what the latents learn to ignore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass(frozen=True)
class ViewAugmentation:
    """How strongly views differ.

    ``min_crop`` is the smallest crop area (share of the image; 1 = no cropping), ``color_jitter``
    the largest relative change of brightness, contrast and saturation (0 = none; hue moves by up to
    a quarter of it, in turns); 80% of views are jittered and 20% turned gray when it is above 0.
    """

    min_crop: float = 0.25
    flip: bool = True
    color_jitter: float = 0.4
    jitter_probability: float = 0.8
    gray_probability: float = 0.2

    def __call__(self, images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
        """A random view of each image in a float batch (batch, size, size, 3) with values in [0, 1],
        drawn from ``rng`` (reset it to get the same views again)."""
        views = self._crop(images, rng)
        if self.flip:
            views = tf.where(_coin(views, 0.5, rng), views[:, :, ::-1], views)
        if self.color_jitter > 0:
            views = tf.where(_coin(views, self.jitter_probability, rng), self._jitter(views, rng), views)
            gray = tf.reduce_sum(views * _LUMA, axis=-1, keepdims=True)
            views = tf.where(_coin(views, self.gray_probability, rng), tf.repeat(gray, 3, axis=-1), views)
        return tf.clip_by_value(views, 0.0, 1.0)

    def _crop(self, images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
        """Random-resized crop: area in [min_crop, 1], aspect ratio in [3/4, 4/3], back to full size."""
        if self.min_crop >= 1:
            return images
        batch, size = tf.shape(images)[0], images.shape[1]
        area = rng.uniform([batch], self.min_crop, 1.0)
        ratio = tf.exp(rng.uniform([batch], math.log(3 / 4), math.log(4 / 3)))
        width = tf.minimum(tf.sqrt(area * ratio), 1.0)
        height = tf.minimum(tf.sqrt(area / ratio), 1.0)
        top = rng.uniform([batch]) * (1 - height)
        left = rng.uniform([batch]) * (1 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        return tf.image.crop_and_resize(images, boxes, tf.range(batch), (size, size))

    def _jitter(self, images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
        strength = self.color_jitter

        def factor() -> tf.Tensor:
            return rng.uniform([tf.shape(images)[0], 1, 1, 1], 1 - strength, 1 + strength)

        views = images * factor()  # brightness
        mean = tf.reduce_mean(views, axis=[1, 2, 3], keepdims=True)
        views = (views - mean) * factor() + mean  # contrast
        gray = tf.reduce_sum(views * _LUMA, axis=-1, keepdims=True)
        views = gray + (views - gray) * factor()  # saturation
        return tf.einsum("bhwc,bdc->bhwd", views, _hue_rotations(tf.shape(images)[0], strength / 4, rng))


def _coin(images: tf.Tensor, probability: float, rng: tf.random.Generator) -> tf.Tensor:
    """A per-image boolean, True with ``probability``, broadcastable over the image."""
    return rng.uniform([tf.shape(images)[0], 1, 1, 1]) < probability


def _hue_rotations(batch: tf.Tensor, max_turns: float, rng: tf.random.Generator) -> tf.Tensor:
    """RGB -> RGB matrices (batch, 3, 3) that rotate hue by up to ``max_turns`` of a full turn."""
    angle = rng.uniform([batch], -max_turns, max_turns) * 2 * math.pi
    cos, sin, one, zero = tf.cos(angle), tf.sin(angle), tf.ones([batch]), tf.zeros([batch])
    rotation = tf.stack(
        [tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1), tf.stack([zero, sin, cos], -1)], axis=1
    )
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    return tf.einsum("ij,bjk,kl->bil", tf.linalg.inv(to_yiq), rotation, to_yiq)
