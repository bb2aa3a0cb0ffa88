"""What TensorBoard shows: a training's curves and reconstructions, and the collection's vectors in its projector.

- :class:`TrainingBoard` (``imgsim fit --tensorboard DIR``): per epoch the losses (``loss``,
  ``val_loss`` and, from pixels, their reconstruction and consistency terms) and the learning rate as
  scalars, and from pixels a few validation images beside their reconstructions; at the end the
  epoch whose weights were kept, as a scalar and a line of text.
- :func:`write_projector` (``imgsim report --projector DIR``): the bundle's vectors, their labels
  and paths, and a sprite of thumbnails, in the layout of TensorBoard's embedding projector, so
  ``tensorboard --logdir DIR`` shows the collection as a 3-D map with pictures.

Event files are written with ``tf.summary`` (TensorBoard's writer; fit has TensorFlow loaded
anyway). The projector's files are plain TSV, PNG and a text protobuf, written without
TensorFlow, so ``report`` stays on the inference runtime.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.images import decode_image, read_file
from ..errors import ImageError, InputError

if TYPE_CHECKING:
    from ..bundle.artifacts import Bundle

RECONSTRUCTIONS = 4  # validation images shown beside their reconstruction each epoch
SPRITE_SIDE = 8192  # the largest sprite the projector reads
MAX_THUMBNAIL = 64  # pixels a side of a thumbnail in the sprite, fewer when the collection is large
PROJECTOR_TENSOR = "images"  # the embedding's name in the projector


def require_tensorboard() -> None:
    """InputError, before any work, when TensorBoard (an optional extra) is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise InputError("TensorBoard is not installed: pip install -e \".[tensorboard]\"")


class TrainingBoard:
    """Writes one training to ``folder`` for TensorBoard (see the module's description).
    ``images``: uint8 validation images at the model's input size, whose reconstructions are
    shown each epoch by ``autoencoder`` (a pixel :class:`~pipeline.train.autoencoder.Autoencoder`)."""

    def __init__(self, folder: str | os.PathLike, autoencoder=None, images: Optional[np.ndarray] = None):
        require_tensorboard()
        import tensorflow as tf

        self.folder = Path(folder)
        self._writer = tf.summary.create_file_writer(str(self.folder / "train"))
        self._autoencoder = autoencoder
        self._images = None if images is None or not len(images) else images[:RECONSTRUCTIONS].astype(np.float32) / 255

    def epoch(self, epoch: int, logs: dict[str, float], learning_rate: float) -> None:
        """The figures of one finished epoch (numbered from 1, the step of every figure)."""
        import tensorflow as tf

        with self._writer.as_default(step=epoch):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", learning_rate)
            if self._autoencoder is not None and self._images is not None:
                originals = self._autoencoder.downscale.predict_on_batch(self._images)
                rebuilt = self._autoencoder.model.predict_on_batch(self._images)
                pairs = np.clip(np.concatenate([originals, rebuilt], axis=2), 0, 1)
                tf.summary.image("reconstructions (left: image, right: reconstruction)", pairs,
                                 max_outputs=RECONSTRUCTIONS)
        self._writer.flush()

    def finish(self, best_epoch: int, loss_name: str, best_loss: float) -> None:
        """Mark the epoch whose weights the fit kept."""
        import tensorflow as tf

        with self._writer.as_default(step=best_epoch):
            tf.summary.scalar("best_epoch", best_epoch)
            tf.summary.text("kept_epoch", f"kept epoch {best_epoch}: the lowest {loss_name}, {best_loss:.6g}")
        self._writer.close()


def write_projector(bundle: Bundle, folder: str | os.PathLike, progress: bool = True) -> Path:
    """Write the bundle's vectors, metadata and sprite for TensorBoard's projector into ``folder``
    (``projector_config.pbtxt``, ``vectors.tsv``, ``metadata.tsv``, ``sprite.png``); returns it."""
    require_tensorboard()
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    catalog, vectors = bundle.catalog, np.asarray(bundle.embeddings, np.float32)
    np.savetxt(folder / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
    with open(folder / "metadata.tsv", "w", encoding="utf-8") as out:
        out.write("label\tpath\tid\n")
        for label, path, image_id in zip(catalog.labels, catalog.paths, catalog.ids):
            out.write(f"{_cell(label or '')}\t{_cell(path)}\t{image_id}\n")
    side = _write_sprite(catalog.paths, folder / "sprite.png", progress)
    config = ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = PROJECTOR_TENSOR
    embedding.tensor_path = "vectors.tsv"
    embedding.metadata_path = "metadata.tsv"
    embedding.tensor_shape.extend(vectors.shape)
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([side, side])
    (folder / "projector_config.pbtxt").write_text(text_format.MessageToString(config))
    return folder


def _cell(text: str) -> str:
    """A metadata cell: tabs and line breaks would split the row."""
    return " ".join(text.split())


def _write_sprite(paths: list[str], destination: Path, progress: bool) -> int:
    """A square grid of square thumbnails, in catalog order (grey where a file cannot be read);
    returns the thumbnail side."""
    per_row = max(1, math.ceil(math.sqrt(len(paths))))
    side = max(1, min(MAX_THUMBNAIL, SPRITE_SIDE // per_row))
    sprite = Image.new("RGB", (per_row * side, per_row * side), (128, 128, 128))
    for number, path in enumerate(tqdm(paths, desc="sprite", unit="img", disable=not progress)):
        try:
            thumbnail = Image.fromarray(decode_image(read_file(path), path))
        except (ImageError, OSError):
            continue
        thumbnail.thumbnail((side, side))
        row, column = divmod(number, per_row)
        sprite.paste(thumbnail, (column * side + (side - thumbnail.width) // 2,
                                 row * side + (side - thumbnail.height) // 2))
    sprite.save(destination)
    return side
