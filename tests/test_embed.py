"""Embedding a cache: every row once, in order, in batches of few shapes."""

import numpy as np
import pytest

from pipeline.data.dataset import RowCache, to_model_input
from pipeline.model.embed import collect, even_batch_size, map_cache


@pytest.mark.parametrize("count, largest, size", [(100, 32, 25), (5000, 32, 32), (10, 4, 4), (3, 32, 3), (0, 32, 1)])
def test_even_batch_size_splits_into_as_few_batches_of_near_equal_size(count, largest, size):
    assert even_batch_size(count, largest) == size
    if count:
        batches = -(-count // size)
        assert batches == -(-count // largest) and count - (batches - 1) * size > size - batches


@pytest.mark.parametrize("count, batch_size, sizes", [(100, 32, [25] * 4), (10, 4, [4, 4, 4])])
def test_every_row_is_embedded_once_in_order_in_batches_of_one_shape(tmp_path, count, batch_size, sizes):
    rows = np.random.default_rng(0).integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "rows.u8"
    path.write_bytes(rows.tobytes())
    seen = []

    def run(batch):
        seen.append(len(batch))
        return {"mean": to_model_input(batch).mean(axis=(1, 2)), "first": batch[:, 0, 0].astype(np.float32)}

    vectors = collect(list(map_cache(run, RowCache(str(path), (4, 4, 3), count), batch_size, "test")), {})
    assert seen == sizes  # 10 rows by 4: the last 2 padded to 4, so the model sees one shape
    np.testing.assert_allclose(vectors["mean"], to_model_input(rows).mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(vectors["first"], rows[:, 0, 0])
