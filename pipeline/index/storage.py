"""How the index reads its stored vectors: float32 as they are, float16 (half the bytes, the
``index_dtype`` setting) converted to float32 exactly, by OpenCV's vector instructions, each time a
cluster is scanned."""

from __future__ import annotations

import numpy as np

HALF_TO_FLOAT = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)  # for Numba, which has no float16


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Stored rows (n, dim) as float32, float16 converted exactly (NaN aside, which no index holds)
    by OpenCV's vector instructions: 20x NumPy's conversion or its table here, which made most
    of a probed cluster's scan."""
    if rows.dtype != np.float16 or not rows.size:
        return rows.astype(np.float32, copy=False)
    import cv2  # here: a command that scans no float16 cluster (upgrade, remove, restore) loads no OpenCV

    if hasattr(cv2, "convertFp16"):  # OpenCV 4: the float16 bits as int16
        return cv2.convertFp16(rows.view(np.int16)).reshape(rows.shape)
    return cv2.multiply(rows, 1.0, dtype=cv2.CV_32F).reshape(rows.shape)  # OpenCV 5 takes float16, has no convertFp16
