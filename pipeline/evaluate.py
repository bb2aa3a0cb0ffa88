"""Retrieval quality on a labelled folder: the fitted pipeline against classic baselines.

The runner: it reads images and models and hands neighbour ids to the pure metrics of
:mod:`pipeline.index.metrics` (leave-one-out precision@k and mAP@k, the class folder as the label).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .bundle.artifacts import Bundle
from .data.dataset import decode_to_cache
from .data.images import ImageRecord, decode_image, find_images, read_file
from .errors import InputError
from .index.cluster import build_index
from .index.clustered import ClusteredIndex, recall_at_k
from .index.metrics import LabelledSet, exact_neighbours, without_self
from .model.embed import embed_decoded
from .model.runtime import DESCRIPTOR
from .model.whitening import fit_whitening

BASELINE_SIZE = 32  # the reference baselines' pixels: 32 x 32
HSV_SIZE = 64  # the reference HSV histogram is taken at 64 x 64
PCA_COMPONENTS = 64


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
    from sklearn.decomposition import PCA

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


def evaluate(data_dir: str | os.PathLike, bundle: Bundle, k: int = 10, runtime: Optional[str] = None
             ) -> dict[str, Any]:
    """precision@k and mAP@k of the fitted pipeline (routed, with its nprobe and query expansion)
    and of the baselines: the reference baselines (:func:`reference_baselines`), the frozen
    backbone's pooled features (where the fit has a backbone: an output of its encoder), and each
    block of the pipeline's descriptor alone (PCA-projected as the fit does it, exact search, no
    expansion). The images are embedded on ``runtime`` (:mod:`pipeline.model.runtime`).

    Also recall@k of routed against exact search (same expansion), and mean single-query times of
    both. Only the images under ``data_dir`` are scored. When it is the fitted folder, their stored
    embeddings are used, searched in the bundle's own index when the collection holds nothing else
    (an added folder) and else indexed on their own the way a fit would; any other folder is embedded
    with the bundle's encoder and indexed the way a fit would. ``collection`` in the answer says which.
    """
    catalog = bundle.catalog
    fitted = Path(data_dir).resolve() == Path(bundle.manifest.data_dir).resolve()
    if fitted:
        root = os.path.join(str(Path(data_dir).resolve()), "")
        paths, labels = catalog.paths.tolist(), catalog.labels.tolist()
        rows = [row for row, path in enumerate(paths) if path.startswith(root)]
        records = [ImageRecord(paths[row], labels[row]) for row in rows]
    else:
        rows, records = [], find_images(data_dir, extensions=bundle.settings.image_extensions)
    whole = fitted and len(rows) == len(catalog)  # the bundle's own index answers as it really does
    if len(records) < 2 or any(r.label is None for r in records):
        raise InputError(f"{data_dir}: evaluation needs at least two images, all in class folders (the label)")
    config, encoder = bundle.settings, bundle.encoder(runtime)

    with tempfile.TemporaryDirectory() as scratch:
        decoded = decode_to_cache(records, os.path.join(scratch, "images.u8"), config.image_size,
                                  config.decode_workers, config.max_file_bytes)
        if fitted and decoded.skipped:
            first = decoded.skipped[0]
            raise InputError(f"{first.path}: {first.reason} (indexed at fit time; fit again)")
        embedded = embed_decoded(encoder, decoded, outputs=True)
    outputs = embedded.vectors
    descriptors = outputs.pop(DESCRIPTOR)
    pooled = outputs.pop("backbone", None)
    vectors = np.asarray(bundle.embeddings)[rows] if fitted else descriptors
    index = bundle.index if whole else build_index(vectors, config)[0]

    scored = LabelledSet.of([r.label for r in embedded.records])
    k = min(k, len(embedded.records) - 1)
    routed, routed_ms = _timed_search(index, vectors, k, index.nprobe_, index.expansion)
    exact, exact_ms = _timed_search(index, vectors, k, index.nlist, index.expansion)
    blocks = {f"{name}_block": scored.score(exact_neighbours(block @ kernel + bias, k))
              for name, block in outputs.items()
              for kernel, bias in [fit_whitening(block, config.latent_dim, config.whitening, config.seed)]}
    return {
        "pipeline": {
            **scored.score(routed),
            "recall_vs_exact": round(recall_at_k(routed, exact), 4),
            "query_ms": round(routed_ms, 3),
            "exact_query_ms": round(exact_ms, 3),
            "nprobe": index.resolve_nprobe(index.nprobe_),
            "clusters": index.nlist,
            "query_expansion": index.expansion,
        },
        "baselines": {
            **reference_baselines([r.path for r in embedded.records], scored.score, k),
            **({"backbone_pooled": scored.score(exact_neighbours(pooled, k))} if pooled is not None else {}),
            **blocks,
        },
        "k": k,
        "images": len(embedded.records),
        "data_dir": str(data_dir),
        "collection": ("the bundle's index" if whole else
                       f"the fitted folder's {len(rows)} of the collection's {len(catalog)} images, indexed on their "
                       f"own as a fit would" if fitted else "embedded and indexed as a fit would"),
        "settings": config.to_dict(),
    }


def _timed_search(
    index: ClusteredIndex, queries: np.ndarray, k: int, nprobe: int, expansion: int
) -> tuple[np.ndarray, float]:
    """Leave-one-out neighbour ids of every query, and the mean time of a single-query search.

    Searches as the Searcher does (``expansion`` first neighbours averaged into the query), each
    query's own id left out of its expansion and of its results.
    """
    own = np.arange(len(queries))[:, None]
    ids = without_self(index.search(queries, k + 1, nprobe, expansion, own).ids, k)
    step = max(1, len(queries) // 200)
    start = time.perf_counter()
    for query_id in range(0, len(queries), step):
        index.search(queries[query_id][None], k + 1, nprobe, expansion, own[query_id][None])
    return ids, (time.perf_counter() - start) * 1000 / len(range(0, len(queries), step))
