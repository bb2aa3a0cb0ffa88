"""The descriptor as Keras layers: its blocks and the head that weights them (built by a fit).

A descriptor is made of blocks: the learned latent, and optionally the orientation histogram
and the colour histogram (:mod:`pipeline.model.histograms`). The saved
encoder is ``head(blocks(image))``, every step a layer of one Keras model, so a query is described
exactly as the fitted images were. Over a backbone, the latent is read from the backbone's
feature map, which the encoder marks with an identity layer named ``feature_map``
(:data:`pipeline.model.runtime.FEATURE_MAP`): a fit computes that map once per image, for training and
for the descriptors (:func:`map_blocks_model`), and the export reads the backbone's pooled
features from it.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from ..config import DESCRIPTOR_BLOCK_SIZE, ORIENTATION_CELLS, FitConfig
from .histograms import ColorHistogram, OrientationHistogram
from .resize import AreaResize
from .runtime import FEATURE_MAP
from .whitening import fit_whitening


def image_blocks(image, config: FitConfig) -> dict:
    """The blocks read straight from the image: the orientation histogram and the colour histogram,
    each when its weight in ``config`` is above 0, both from one copy of the image area-downscaled
    to DESCRIPTOR_BLOCK_SIZE px (the colour histogram's own size: it is not resized again)."""
    if config.orientation_weight <= 0 and config.color_weight <= 0:
        return {}
    size = min(config.image_size, DESCRIPTOR_BLOCK_SIZE)
    small = AreaResize(size, name="orientation_size")(image) if size < config.image_size else image
    blocks = {}
    if config.orientation_weight > 0:
        blocks["orientations"] = OrientationHistogram(ORIENTATION_CELLS, name="orientations")(small)
    if config.color_weight > 0:
        blocks["colors"] = ColorHistogram(name="colors")(small)
    return blocks


def build_blocks_model(to_latent: keras.Model, config: FitConfig, backbone: Optional[keras.Model] = None
                       ) -> keras.Model:
    """image -> the descriptor's blocks, by name: the learned latent (``to_latent`` of the image,
    or over a ``backbone`` of its feature map), then the blocks of :func:`image_blocks`."""
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    source = image if backbone is None else keras.layers.Identity(name=FEATURE_MAP)(backbone(image))
    return keras.Model(image, {"latent": to_latent(source), **image_blocks(image, config)}, name="blocks")


def image_blocks_model(config: FitConfig) -> Optional[keras.Model]:
    """image -> the blocks of :func:`image_blocks` (None when there are none): with the latent
    computed from cached feature maps, what a fit runs over its images to describe them."""
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    blocks = image_blocks(image, config)
    return keras.Model(image, blocks, name="image_blocks") if blocks else None


def block_weights(config: FitConfig) -> dict[str, float]:
    """The weight of each block that :func:`build_blocks_model` makes for ``config``."""
    weights = {"latent": 1 - config.orientation_weight - config.color_weight,
               "orientations": config.orientation_weight, "colors": config.color_weight}
    return {name: weight for name, weight in weights.items() if name == "latent" or weight > 0}


class DescriptorHead:
    """The descriptor from its blocks: each block through a PCA whitening layer
    (:func:`pipeline.model.whitening.fit_whitening`, learned on the blocks of the fitted images), given
    unit length times its weight, and the blocks side by side. Fixed layers, shared by
    :meth:`model` (blocks in) and :meth:`encoder` (images in): a saved encoder applies them to
    queries exactly as to the fitted images, and its layer ``whiten_NAME`` (or ``unit_NAME``) reads
    block NAME.
    """

    def __init__(self, blocks: dict[str, np.ndarray], weights: dict[str, float], dims: int, whitening: float,
                 seed: int = 0):
        self.names = list(blocks)
        self.widths = {name: block.shape[1] for name, block in blocks.items()}
        self.steps: dict[str, list[keras.layers.Layer]] = {}
        for name, latents in blocks.items():
            steps = []
            if min(latents.shape[1], len(latents) - 1) >= 1:
                kernel, bias = fit_whitening(latents, dims, whitening, seed)
                project = keras.layers.Dense(kernel.shape[1], name=f"whiten_{name}", trainable=False)
                project.build((None, latents.shape[1]))
                project.set_weights([kernel, bias])
                steps.append(project)
            steps += [keras.layers.UnitNormalization(name=f"unit_{name}"),
                      keras.layers.Rescaling(float(weights[name]), name=f"weight_{name}")]
            self.steps[name] = steps
        self.concatenate = keras.layers.Concatenate(name="descriptor") if len(blocks) > 1 else None

    def __call__(self, tensors: dict) -> keras.KerasTensor:
        outputs = []
        for name in self.names:
            x = tensors[name]
            for step in self.steps[name]:
                x = step(x)
            outputs.append(x)
        return self.concatenate(outputs) if self.concatenate else outputs[0]

    def model(self) -> keras.Model:
        """blocks (a dict of arrays) -> descriptors."""
        inputs = {name: keras.Input((width,), name=name) for name, width in self.widths.items()}
        return keras.Model(inputs, self(inputs), name="descriptor_head")

    def encoder(self, blocks: keras.Model) -> keras.Model:
        """image -> descriptor: the saved encoder."""
        return keras.Model(blocks.input, self(blocks.output), name="encoder")

    def apply(self, blocks: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """The descriptors of precomputed blocks (row i of each block is image i)."""
        head = self.model()
        count = len(next(iter(blocks.values())))
        parts = [np.asarray(head.predict_on_batch({name: b[start : start + batch_size] for name, b in blocks.items()}),
                            dtype=np.float32) for start in range(0, count, batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, head.output_shape[-1]), np.float32)
