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
from typing import Any, Callable, Sequence

import cv2
import keras
import numpy as np
from sklearn.decomposition import PCA
from tqdm import tqdm

from .config import BACKBONE_BATCH_SIZE, FitConfig
from .dataset import DecodedImages, RowCache, decode_to_cache
from .embed import blocks_of, embed_cache, embed_cache_blocks, fit_whitening
from .errors import InputError
from .fit import index_embeddings
from .images import ImageRecord, decode_image, find_images, read_file
from .index import ClusteredIndex
from .search import Searcher

BASELINE_SIZE = 32  # the reference baselines' pixels: 32 x 32
HSV_SIZE = 64  # the reference HSV histogram is taken at 64 x 64
PCA_COMPONENTS = 64


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


def exact_neighbours(features: np.ndarray, k: int, metric: str = "cosine", block: int = 2048) -> np.ndarray:
    """Ids of the k nearest other rows of ``features`` (leave-one-out, brute force, in row blocks).

    Computed as ``shared/tools/baseline.py`` does: cosine as the dot product of unit vectors, L2
    as |a|^2 + |b|^2 - 2 a.b in float32, the query's own row excluded; nearest first.
    """
    features = np.asarray(features, dtype=np.float32)
    if metric == "cosine":
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    squares = np.einsum("ij,ij->i", features, features)
    k = min(k, len(features) - 1)
    ids = np.empty((len(features), k), dtype=np.int64)
    for start in range(0, len(features), block):
        rows = slice(start, min(start + block, len(features)))
        products = features[rows] @ features.T
        distances = -products if metric == "cosine" else squares[rows, None] + squares[None, :] - 2 * products
        distances[np.arange(distances.shape[0]), np.arange(rows.start, rows.stop)] = np.inf
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
        ids[rows] = np.take_along_axis(nearest, order, axis=1)
    return ids


def _without_self(ids: np.ndarray, k: int) -> np.ndarray:
    query_ids = np.arange(len(ids))[:, None]
    return np.array([row[row != q][:k] for row, q in zip(ids, query_ids)])


def read_baseline_image(path: str) -> np.ndarray:
    """A photo as the reference baselines read it: OpenCV ``imread`` in colour (BGR); files that
    OpenCV cannot read are decoded by the pipeline's own decoder instead."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        image = cv2.cvtColor(decode_image(read_file(path), path), cv2.COLOR_RGB2BGR)
    return image


def reference_baselines(paths: Sequence[str], labels_of: Callable[[np.ndarray], dict[str, float]], k: int,
                        seed: int = 0) -> dict[str, dict[str, float]]:
    """The reference baselines of ``shared/data/README.md``, scored by ``labels_of(neighbour ids)``.

    - raw pixels: the BGR image resized to 32x32 (INTER_AREA), / 255; L2 and cosine.
    - PCA-64 whitened: those 3,072 values, ``PCA(64, whiten=True, random_state=0)``, cosine.
    - HSV histogram: the image resized to 64x64 (INTER_AREA), BGR -> HSV, 8x8x8 bins over
      H [0, 180) S [0, 256) V [0, 256), normalised to sum 1, square-rooted, cosine.
    """
    pixels, histograms = [], []
    for path in tqdm(paths, desc="baselines", unit="img"):
        image = read_baseline_image(path)
        pixels.append(cv2.resize(image, (BASELINE_SIZE, BASELINE_SIZE), interpolation=cv2.INTER_AREA).ravel())
        hsv = cv2.cvtColor(cv2.resize(image, (HSV_SIZE, HSV_SIZE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2HSV)
        histogram = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256]).ravel()
        histograms.append(np.sqrt(histogram / max(histogram.sum(), 1.0)))
    raw = np.asarray(pixels, dtype=np.float32) / 255.0
    components = min(PCA_COMPONENTS, *raw.shape)
    return {
        "raw_pixels_l2": labels_of(exact_neighbours(raw, k, "euclidean")),
        "raw_pixels": labels_of(exact_neighbours(raw, k)),
        "pca_whitened": labels_of(exact_neighbours(
            PCA(components, whiten=True, random_state=seed).fit_transform(raw), k)),
        "hsv_histogram": labels_of(exact_neighbours(np.asarray(histograms, dtype=np.float32), k)),
    }


def backbone_pooled_features(cache: RowCache) -> np.ndarray:
    """The frozen backbone's feature map averaged over positions (1280 values) for every image of
    a cache: what a retrieval system built straight on the pretrained network would compare."""
    import keras

    from .backbone import build_backbone

    backbone = build_backbone(cache.image_size)
    pooled = keras.Model(backbone.input, keras.layers.GlobalAveragePooling2D()(backbone.output))
    return embed_cache(pooled, cache, BACKBONE_BATCH_SIZE)


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
    and of the baselines: the reference baselines (:func:`reference_baselines`), the frozen
    backbone's pooled features, and each block of the pipeline's descriptor alone (PCA-projected
    as the fit does it, exact search, no expansion).

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
    config = FitConfig.from_dict(searcher.manifest["settings"])

    with tempfile.TemporaryDirectory() as scratch:
        decoded = decode_to_cache(records, os.path.join(scratch, "model.u8"), searcher.image_size)
        if fitted:
            _check_all_decoded(decoded)
        records = decoded.records
        blocks_model = blocks_of(searcher.encoder)
        both = keras.Model(searcher.encoder.input, {"descriptor": searcher.encoder.output, **blocks_model.output})
        outputs = embed_cache_blocks(both, decoded.cache, config.embedding_batch_size)
        pooled = backbone_pooled_features(decoded.cache)
    if fitted:
        vectors, index, nprobe = np.asarray(searcher.embeddings), searcher.index, searcher.default_nprobe
    else:
        vectors = outputs.pop("descriptor")
        index, nprobe, _ = index_embeddings(vectors, config)
    outputs.pop("descriptor", None)

    labels = np.array([r.label for r in records])
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    scored = _LabelledSet(labels, counts[inverse] - 1)
    k = min(k, len(labels) - 1)
    expansion = searcher.default_expansion
    routed, routed_ms = _timed_search(index, vectors, k, nprobe, expansion)
    exact, exact_ms = _timed_search(index, vectors, k, index.nlist, expansion)
    recall = np.mean([len(np.intersect1d(r, e)) / k for r, e in zip(routed, exact)])
    blocks = {f"{name}_block": scored.score(exact_neighbours(block @ kernel + bias, k))
              for name, block in outputs.items()
              for kernel, bias in [fit_whitening(block, config.latent_dim, config.whitening, config.seed)]}
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
            **reference_baselines([r.path for r in records], scored.score, k),
            "backbone_pooled": scored.score(exact_neighbours(pooled, k)),
            **blocks,
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
