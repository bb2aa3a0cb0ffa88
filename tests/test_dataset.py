"""The decode pass and the streaming batches."""

import numpy as np

from pipeline.data.dataset import TrainingBatches, decode_to_cache, split_indices, to_model_input
from pipeline.data.images import find_images, prepare_image


def test_decode_to_cache_keeps_good_rows_in_order_and_lists_bad_files(photos, tmp_path):
    records = find_images(photos)[:6]
    (tmp_path / "bad").mkdir()
    bad = [tmp_path / "bad" / name for name in ("empty.jpg", "text.png", "truncated.jpg")]
    bad[0].write_bytes(b"")
    bad[1].write_text("hello")
    bad[2].write_bytes(open(records[0].path, "rb").read()[:3000])
    records = records[:3] + find_images(tmp_path) + records[3:]
    decoded = decode_to_cache(records, str(tmp_path / "cache.u8"), 24, workers=2)
    assert decoded.cache.count == 6 and len(decoded.records) == 6
    assert sorted(s.path for s in decoded.skipped) == sorted(str(p) for p in bad)
    for row, record in enumerate(decoded.records):
        expected = prepare_image(open(record.path, "rb").read(), record.path, 24)
        assert np.array_equal(decoded.cache.read([row])[0], expected)
    assert np.array_equal(decoded.cache.read_range(2, 5), decoded.cache.read([2, 3, 4]))


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(100, 0.2, seed=3)
    again = split_indices(100, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert len(val) == 20 and not set(train) & set(val) and set(train) | set(val) == set(range(100))
    assert len(split_indices(5, 0.2, seed=3)[1]) == 0  # too few images for a validation set


def test_training_batches_cover_every_row_once_per_epoch_and_reshuffle(photos, tmp_path):
    decoded = decode_to_cache(find_images(photos)[:10], str(tmp_path / "cache.u8"), 16)
    batches = TrainingBatches(decoded.cache, np.arange(10), batch_size=4, seed=0)
    assert len(batches) == 3
    images = to_model_input(decoded.cache.read(range(10)))

    def epoch():
        """The rows in each batch of one epoch."""
        rows = []
        for i in range(len(batches)):
            batch = batches[i]
            assert batch.dtype == np.float32 and batch.shape[1:] == (16, 16, 3)
            rows.append({next(j for j, image in enumerate(images) if np.array_equal(image, b)) for b in batch})
        return rows

    first = epoch()
    assert [len(rows) for rows in first] == [4, 4, 2] and set().union(*first) == set(range(10))  # each row once
    batches.on_epoch_end()
    second = epoch()
    assert set().union(*second) == set(range(10)) and second != first  # reshuffled
