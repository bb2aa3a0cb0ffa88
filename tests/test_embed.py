"""Embedding a cache: every row once, in order, in batches of few shapes."""

import keras
import numpy as np
import pytest

from conftest import SAMPLE
from pipeline.artifacts import Bundle
from pipeline.dataset import RowCache, to_model_input
from pipeline.embed import embed_cache, embed_images, even_batch_size, mixed_precision
from pipeline.images import prepare_image, read_file


@pytest.mark.parametrize("count, largest, size", [(100, 32, 25), (5000, 32, 32), (10, 4, 4), (3, 32, 3), (0, 32, 1)])
def test_even_batch_size_splits_into_as_few_batches_of_near_equal_size(count, largest, size):
    assert even_batch_size(count, largest) == size
    if count:
        batches = -(-count // size)
        assert batches == -(-count // largest) and count - (batches - 1) * size > size - batches


class _Recording:
    """A real Keras model that notes the batch size of every call."""

    def __init__(self, model: keras.Model):
        self.model, self.output, self.sizes = model, model.output, []

    def predict_on_batch(self, batch):
        self.sizes.append(len(batch))
        return self.model.predict_on_batch(batch)


@pytest.mark.parametrize("count, batch_size, sizes", [(100, 32, [25] * 4), (10, 4, [4, 4, 4])])
def test_every_row_is_embedded_once_in_order_in_batches_of_one_shape(tmp_path, count, batch_size, sizes):
    rows = np.random.default_rng(0).integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "rows.u8"
    path.write_bytes(rows.tobytes())
    image = keras.Input((4, 4, 3))
    model = _Recording(keras.Model(image, keras.layers.GlobalAveragePooling2D()(image)))
    vectors = embed_cache(model, RowCache(str(path), (4, 4, 3), count), batch_size)
    assert model.sizes == sizes  # 10 rows by 4: the last 2 padded to 4, so one shape is traced
    np.testing.assert_allclose(vectors, to_model_input(rows).mean(axis=(1, 2)), rtol=1e-6)


def _layers(model):
    for layer in model.layers:
        yield from _layers(layer) if hasattr(layer, "layers") else [layer]


def test_a_mixed_precision_encoder_computes_its_convolutions_in_float16_with_the_same_descriptors(fitted):
    encoder = Bundle.load(fitted[0]).encoder
    mixed = mixed_precision(encoder)
    convolutions = [layer for layer in _layers(mixed) if isinstance(layer, (keras.layers.Conv2D,
                                                                            keras.layers.DepthwiseConv2D))]
    assert len(convolutions) >= 49 and {layer.compute_dtype for layer in convolutions} == {"float16"}
    assert {layer.variable_dtype for layer in convolutions} == {"float32"}
    assert {layer.compute_dtype for layer in _layers(encoder)} == {"float32"}  # the loaded encoder is untouched
    paths = sorted(SAMPLE.glob("*/*.jpg"))[::20]
    images = np.stack([prepare_image(read_file(path), str(path), encoder.input_shape[1]) for path in paths])
    exact, half = embed_images(encoder, images), embed_images(mixed, images)
    assert half.dtype == np.float32
    cosine = np.sum(exact * half, axis=1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.999
