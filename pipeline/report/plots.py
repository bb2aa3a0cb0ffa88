"""Figures: the montage of a query and its neighbours, and the report's static figures."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402

from ..data.images import decode_image, read_file  # noqa: E402
from ..errors import ImageError  # noqa: E402
from ..search.searcher import SearchResult  # noqa: E402

_THUMB = 256
MAX_OUTLINES = 20  # clusters outlined on the static map: more outlines cross into a web
MAX_LEGEND = 20  # groups in its legend: more are named on the map, at the middle of their points


def save_montage(queries: Sequence[tuple[np.ndarray, str]], result: SearchResult,
                 out_path: str | os.PathLike) -> None:
    """Save a PNG: the query photos (image, title), the region searched by outlined on the first,
    then each neighbour titled with rank, score (the number results are in the order of), cluster
    and label."""
    panels = list(queries)
    for hit in result.results:
        try:
            image = decode_image(read_file(hit.path), hit.path, min_size=_THUMB)
        except ImageError:  # moved or deleted since the fit: show an empty panel
            image = np.full((_THUMB, _THUMB, 3), 230, np.uint8)
        title = f"#{hit.rank}  score {hit.score:.4f}\ncluster {hit.cluster}"
        panels.append((image, title + (f"  {hit.label}" if hit.label else "")))
    columns = min(6, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, title) in zip(axes.flat, panels):
        axis.imshow(image)
        axis.set_title(title, fontsize=8)
    if result.box:
        height, width = queries[0][0].shape[:2]
        x, y, w, h = result.box
        axes.flat[0].add_patch(plt.Rectangle((x * width - 0.5, y * height - 0.5), w * width, h * height,
                                             fill=False, edgecolor="#ffcc00", linewidth=2.5))
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def explain_png(explanation, titles: tuple[str, str]) -> bytes:
    """PNG bytes: the query and the result of an :class:`pipeline.search.explain.Explanation` side by side,
    each under its heatmap (bright: where it shows what the other photo shows)."""
    import io

    figure, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for axis, image, heat, title in zip(axes, (explanation.query, explanation.result),
                                        (explanation.query_heat, explanation.result_heat), titles):
        axis.imshow(image)
        axis.imshow(heat, cmap="inferno", alpha=0.5, interpolation="bilinear",
                    extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    return out.getvalue()


def tsne_figure(points: np.ndarray, colours: list[str], outlines: list[tuple[int, np.ndarray, np.ndarray]],
                legend: dict[str, str], mode: str, max_outlines: int = MAX_OUTLINES,
                max_legend: int = MAX_LEGEND) -> plt.Figure:
    """A 2-D map (a t-SNE): one colour per point (its group's, by ``mode``: "label" or "cluster").
    Each cluster's number stands at its middle, and up to ``max_outlines`` clusters are outlined
    (dashed): more outlines cross into a web over the middle of the map. Up to ``max_legend``
    groups get a legend; beyond, each group's name stands at the middle of its points instead."""
    figure, axis = plt.subplots(figsize=(8.5, 7))
    axis.scatter(points[:, 0], points[:, 1], s=8, c=colours, alpha=0.85, linewidths=0)
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    drawn = len(outlines) <= max_outlines
    for cluster, polygon, middle in outlines:
        if drawn:
            axis.fill(polygon[:, 0], polygon[:, 1], fill=False, linestyle="--", linewidth=0.7, edgecolor="#555",
                      alpha=0.6)
        if drawn or mode == "cluster":
            axis.text(middle[0], middle[1], str(cluster), fontsize=6, ha="center", va="center", color="#333",
                      path_effects=halo)
    if len(legend) <= max_legend:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colour, label=name)
                   for name, colour in legend.items()]
        axis.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    elif mode == "label":
        colour_of = np.asarray(colours)
        for name, colour in legend.items():
            own = points[colour_of == colour]
            middle = np.median(own, axis=0)
            axis.text(middle[0], middle[1], name, fontsize=6, ha="center", va="center", color=colour,
                      fontweight="bold", path_effects=halo)
    outlined = "clusters outlined" if drawn else f"{len(outlines)} clusters, numbered at their middles"
    axis.set_title(f"t-SNE, coloured by {mode}, {outlined}")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.invert_yaxis()  # as on the page, where y grows downwards
    figure.tight_layout()
    return figure


def reconstruction_figure(originals: np.ndarray, reconstructions: np.ndarray) -> plt.Figure:
    """Originals (top row) above the autoencoder's reconstructions (bottom row)."""
    count = len(originals)
    figure, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.4), squeeze=False)
    for column in range(count):
        for row, image in enumerate((originals[column], reconstructions[column])):
            axes[row, column].imshow(np.clip(image, 0, 1))
            axes[row, column].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    figure.tight_layout()
    return figure


def training_curve_figure(history: dict[str, list[float]], kept_epoch: int | None = None) -> plt.Figure:
    """One panel per loss term (the total, reconstruction, consistency): training solid, validation
    dashed, the kept epoch a dotted line."""
    terms = [name for name in history if not name.startswith("val_")] or ["loss"]
    figure, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.3), squeeze=False)
    for axis, name in zip(axes[0], terms):
        for key, label, style in ((name, "training", "-"), (f"val_{name}", "validation", "--")):
            if key in history:
                axis.plot(range(1, len(history[key]) + 1), history[key], style, marker="o", markersize=3, label=label)
        if kept_epoch is not None:
            axis.axvline(kept_epoch, color="#777", linestyle=":", label=f"kept: epoch {kept_epoch}")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
