"""Near-duplicates: groups of indexed images whose descriptors lie within a distance threshold.

Candidate pairs come from the routed index (each image's ``NEIGHBOURS`` nearest, in batches), so
no dense n x n matrix is ever built; pairs closer than the threshold are linked and a group is a
connected component of those links (single linkage: A-B and B-C close puts A, B and C in one
group even when A and C are further apart). The default threshold is calibrated on near-copies
made from real photos (re-encoded, resized, cropped, colour-shifted, mirrored, captioned):
``benchmarks/bench_duplicates.py`` and docs/QUALITY.md.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .artifacts import Bundle
from .catalog import Catalog
from .config import DUPLICATE_THRESHOLD

NEIGHBOURS = 16  # candidates per image: a group larger than this still forms through chains of links
_BATCH = 4096


@dataclass
class DuplicateGroup:
    """Images linked by distances under the threshold; ``ids`` in catalog order."""

    ids: list[int]
    max_link: float  # the largest distance among the links that hold the group together

    def to_dict(self, catalog: Catalog) -> dict[str, Any]:
        return {"ids": self.ids, "paths": [catalog.paths[i] for i in self.ids],
                "labels": [catalog.labels[i] for i in self.ids], "max_link": round(self.max_link, 6)}


def duplicate_pairs(bundle: Bundle, threshold: float, neighbours: int = NEIGHBOURS,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of indexed images closer than ``threshold``: ((pairs, 2) ids, (pairs,) distances)."""
    index, vectors = bundle.index, bundle.embeddings
    k = min(neighbours + 1, index.size)
    pairs, distances = [np.empty((0, 2), np.int64)], [np.empty(0, np.float32)]
    for start in tqdm(range(0, index.size, _BATCH), desc="duplicates", unit="batch", disable=not progress):
        stop = min(start + _BATCH, index.size)
        hits = index.search(np.asarray(vectors[start:stop]), k, expansion=0)
        rows = np.repeat(np.arange(start, stop), k).reshape(-1, k)
        close = (hits.ids >= 0) & (hits.distances <= threshold) & (hits.ids != rows)
        first, second = np.minimum(rows[close], hits.ids[close]), np.maximum(rows[close], hits.ids[close])
        pairs.append(np.stack([first, second], axis=1))
        distances.append(hits.distances[close])
    pairs, distances = np.concatenate(pairs), np.concatenate(distances)
    pairs, unique = np.unique(pairs, axis=0, return_index=True)  # each pair is found from both ends
    return pairs, distances[unique]


def find_duplicates(bundle: Bundle, threshold: float = DUPLICATE_THRESHOLD, neighbours: int = NEIGHBOURS,
                    progress: bool = True) -> list[DuplicateGroup]:
    """Groups of near-duplicates (connected components of pairs under ``threshold``), largest first
    (``progress``: a bar on the terminal)."""
    size = len(bundle.catalog)
    pairs, distances = duplicate_pairs(bundle, threshold, neighbours, progress)
    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    groups = []
    for label in np.unique(component[pairs[:, 0]]):
        ids = np.flatnonzero(component == label)
        links = component[pairs[:, 0]] == label
        groups.append(DuplicateGroup(ids.tolist(), float(distances[links].max())))
    return sorted(groups, key=lambda group: (-len(group.ids), group.ids[0]))


def write_duplicates_page(groups: list[DuplicateGroup], bundle: Bundle, threshold: float, path: str | Path) -> Path:
    """A self-contained HTML page showing every group's thumbnails, largest group first."""
    from .report import thumbnail_html  # thumbnails decode images: loaded only for the page

    rows = "".join(
        f"<section><h2>{len(group.ids)} images, links up to {group.max_link:.4f}</h2>"
        + "".join(thumbnail_html(bundle.catalog.paths[i], bundle.catalog.labels[i]) for i in group.ids)
        + "</section>"
        for group in tqdm(groups, desc="page", unit="group"))
    path = Path(path)
    path.write_text(f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Near-duplicates: {html.escape(bundle.manifest.data_dir)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; }}
section {{ border-top: 1px solid #ddd; }} h2 {{ font-size: 1rem; }} img, .missing {{ width: 128px; height: 128px;
object-fit: contain; background: #f4f4f4; margin: 2px; display: inline-block; }}</style></head><body>
<h1>{len(groups)} groups of near-duplicates</h1>
<p>Images of <code>{html.escape(bundle.manifest.data_dir)}</code> linked when their descriptors lie within cosine
distance {threshold:g}; a group is a connected component of those links.</p>{rows}</body></html>""")
    return path
