"""Figures: the montage of a query and its neighbours."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import ImageError  # noqa: E402
from .images import decode_image, read_file  # noqa: E402
from .search import SearchResult  # noqa: E402

_THUMB = 256


def save_montage(query_image: np.ndarray, result: SearchResult, out_path: str | os.PathLike) -> None:
    """Save a PNG: the query, then each neighbour titled with rank, distance, cluster and label."""
    panels = [(query_image, "query")]
    for hit in result.results:
        try:
            image = decode_image(read_file(hit.path), hit.path, min_size=_THUMB)
        except ImageError:  # moved or deleted since the fit: show an empty panel
            image = np.full((_THUMB, _THUMB, 3), 230, np.uint8)
        title = f"#{hit.rank}  d={hit.distance:.3f}\ncluster {hit.cluster}"
        panels.append((image, title + (f"  {hit.label}" if hit.label else "")))
    columns = min(6, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, title) in zip(axes.flat, panels):
        axis.imshow(image)
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
