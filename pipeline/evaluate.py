"""Retrieval quality on a labelled folder: the fitted pipeline against classic baselines.

Every image is a query against all the others (itself excluded); a neighbour is relevant when it
has the query's label.

- precision@k: the share of the k nearest neighbours that are relevant.
- mAP@k: the mean over queries of AP@k = (1 / min(k, R)) * sum over ranks i <= k of
  precision@i * [neighbour i is relevant], R being the number of other images with the query's label.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from .config import ORIENTATION_CELLS, FitConfig
from .dataset import DecodedImages, ImageCache, decode_to_cache, iter_batches
from .embed import embed_cache, fit_whitening
from .errors import InputError
from .fit import index_embeddings
from .images import ImageRecord, find_images
from .index import ClusteredIndex
from .orientations import OrientationHistogram
from .search import Searcher

BASELINE_SIZE = 32


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean share of relevant neighbours; ``neighbour_labels`` is (queries, k)."""
    return float((neighbour_labels == query_labels[:, None]).mean())


def map_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, relevant_counts: np.ndarray) -> float:
    """Mean average precision over the top k (see the module docstring)."""
    relevant = neighbour_labels == query_labels[:, None]
    k = relevant.shape[1]
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominators = np.minimum(k, relevant_counts)
    ap = np.where(denominators > 0, (precision_at_i * relevant).sum(axis=1) / np.maximum(denominators, 1), 0.0)
    return float(ap.mean())


def exact_neighbours(features: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """Ids of the k nearest other rows of ``features`` (leave-one-out, brute force)."""
    ids = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric=metric).fit(features).kneighbors(
        return_distance=False
    )
    return ids[:, :k]


def _without_self(ids: np.ndarray, k: int) -> np.ndarray:
    query_ids = np.arange(len(ids))[:, None]
    return np.array([row[row != q][:k] for row, q in zip(ids, query_ids)])


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pca_whitened_features(images: np.ndarray, components: int = 64, seed: int = 0) -> np.ndarray:
    pixels = raw_pixel_features(images)
    components = min(components, *pixels.shape)
    return PCA(components, whiten=True, random_state=seed).fit_transform(pixels)


def hsv_histogram_features(images: np.ndarray, bins: int = 8) -> np.ndarray:
    histograms = []
    for rgb in images:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [bins] * 3, [0, 180, 0, 256, 0, 256]).ravel()
        histograms.append(hist / max(hist.sum(), 1.0))
    return np.asarray(histograms, dtype=np.float32)


def orientation_histogram_features(cache: ImageCache, dims: int, whitening: float) -> np.ndarray:
    """The pipeline's orientation-histogram block on its own, as a fit makes it: histograms at the
    model's input size, PCA-projected to ``dims`` with each axis divided by variance ** (whitening / 2)."""
    layer = OrientationHistogram(ORIENTATION_CELLS)
    histograms = np.concatenate([np.asarray(layer(batch)) for batch in iter_batches(cache, 256)])
    kernel, bias = fit_whitening(histograms, dims, whitening)
    return histograms @ kernel + bias


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw_pixels": raw_pixel_features,
    "pca_whitened": pca_whitened_features,
    "hsv_histogram": hsv_histogram_features,
}


@dataclass
class _LabelledSet:
    labels: np.ndarray
    relevant_counts: np.ndarray

    def score(self, neighbour_ids: np.ndarray) -> dict[str, float]:
        neighbour_labels = self.labels[neighbour_ids]
        return {
            "precision_at_k": round(precision_at_k(neighbour_labels, self.labels), 4),
            "map_at_k": round(map_at_k(neighbour_labels, self.labels, self.relevant_counts), 4),
        }


def evaluate(data_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts", k: int = 10) -> dict[str, Any]:
    """precision@k and mAP@k of the fitted pipeline (routed, with its nprobe and query expansion)
    and of the baselines: raw pixels, PCA-whitened pixels and an HSV histogram at 32 px, and the
    pipeline's own orientation-histogram block alone (what the learned latents add to it).

    Also recall@k of routed against exact search (same expansion), and mean single-query times of both. When
    ``data_dir`` is the fitted folder, the stored embeddings and index are used; otherwise
    ``data_dir`` is embedded with the fitted encoder and indexed the way a fit would index it.
    """
    searcher = Searcher(artifacts_dir)
    fitted = Path(data_dir).resolve() == Path(searcher.manifest["data_dir"]).resolve()
    if fitted:
        records = [ImageRecord(p, label) for p, label in zip(searcher.catalog.paths, searcher.catalog.labels)]
    else:
        records = find_images(data_dir)
    if len(records) < 2 or any(r.label is None for r in records):
        raise InputError(f"{data_dir}: evaluation needs at least two images, all in class folders (the label)")

    with tempfile.TemporaryDirectory() as scratch:
        decoded = decode_to_cache(records, os.path.join(scratch, "model.u8"), searcher.image_size)
        if fitted:
            _check_all_decoded(decoded)
            vectors, index, nprobe = np.asarray(searcher.embeddings), searcher.index, searcher.default_nprobe
        else:
            records = decoded.records
            vectors = embed_cache(searcher.encoder, decoded.cache, batch_size=64)
            index, nprobe, _ = index_embeddings(vectors, FitConfig.from_dict(searcher.manifest["settings"]))
        settings = searcher.manifest["settings"]
        orientations = orientation_histogram_features(decoded.cache, settings["latent_dim"], settings["whitening"])
        small = decode_to_cache(records, os.path.join(scratch, "small.u8"), BASELINE_SIZE)
        _check_all_decoded(small)
        baseline_images = small.cache.read_range(0, small.cache.count)

    labels = np.array([r.label for r in records])
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    scored = _LabelledSet(labels, counts[inverse] - 1)
    k = min(k, len(labels) - 1)
    expansion = searcher.default_expansion
    routed, routed_ms = _timed_search(index, vectors, k, nprobe, expansion)
    exact, exact_ms = _timed_search(index, vectors, k, index.nlist, expansion)
    recall = np.mean([len(np.intersect1d(r, e)) / k for r, e in zip(routed, exact)])
    return {
        "pipeline": {
            **scored.score(routed),
            "recall_vs_exact": round(float(recall), 4),
            "query_ms": round(routed_ms, 3),
            "exact_query_ms": round(exact_ms, 3),
            "nprobe": nprobe,
            "clusters": index.nlist,
            "query_expansion": expansion,
        },
        "baselines": {
            **{name: scored.score(exact_neighbours(make(baseline_images), k)) for name, make in BASELINES.items()},
            "orientation_histogram": scored.score(exact_neighbours(orientations, k)),
        },
        "k": k,
        "images": len(labels),
        "data_dir": str(data_dir),
        "settings": searcher.manifest["settings"],
    }


def _timed_search(
    index: ClusteredIndex, queries: np.ndarray, k: int, nprobe: int, expansion: int
) -> tuple[np.ndarray, float]:
    """Leave-one-out neighbour ids of every query, and the mean time of a single-query search.

    Searches as the Searcher does (``expansion`` first neighbours averaged into the query), each
    query's own id left out of its expansion and of its results.
    """
    own = np.arange(len(queries))[:, None]
    ids = _without_self(index.search(queries, k + 1, nprobe, expansion, own).ids, k)
    step = max(1, len(queries) // 200)
    start = time.perf_counter()
    for query_id in range(0, len(queries), step):
        index.search(queries[query_id][None], k + 1, nprobe, expansion, own[query_id][None])
    return ids, (time.perf_counter() - start) * 1000 / len(range(0, len(queries), step))


def _check_all_decoded(decoded: DecodedImages) -> None:
    if decoded.skipped:
        first = decoded.skipped[0]
        raise InputError(f"{first.path}: {first.reason} (indexed at fit time; fit again)")
