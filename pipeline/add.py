"""Adding images to a fitted bundle without retraining: embed, route to clusters, commit atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import (ArtifactWriter, Catalog, check_consistent, current_fit, load_catalog, load_embeddings,
                        load_index, load_model, read_manifest, save_catalog, save_index)
from .dataset import SkippedImage, decode_to_cache
from .embed import embed_cache
from .errors import InputError
from .fit import choose_nprobe
from .images import find_images
from .index import prepare_vectors

log = logging.getLogger(__name__)


@dataclass
class AddSummary:
    """What an addition did and where it went."""

    added: int
    already_indexed: int
    skipped: list[SkippedImage]
    images: int  # indexed after the addition
    nprobe: int
    artifacts: Path
    seconds: float


def add_images(new_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts") -> AddSummary:
    """Index the images under ``new_dir`` with the fitted encoder and clusters.

    Images already indexed (same path and same content) and unreadable files are skipped. The
    bundle is rewritten atomically, with the addition recorded in the manifest; when nothing is
    new, nothing is written.
    """
    start = time.perf_counter()
    current_fit(artifacts_dir)  # a clear error before anything else when there is no fit
    records = find_images(new_dir)
    if not records:
        raise InputError(f"{new_dir}: no image files found")

    with ArtifactWriter(artifacts_dir) as writer:  # the fit is read under the writer's lock: no lost update
        folder = current_fit(artifacts_dir)
        manifest, stored, catalog = read_manifest(folder), load_embeddings(folder), load_catalog(folder)
        config = check_consistent(folder, manifest, catalog, stored)
        index, encoder = load_index(folder, stored), load_model(folder)
        indexed = set(zip(catalog.paths, catalog.hashes))
        with tempfile.TemporaryDirectory(dir=writer.path) as scratch:
            decoded = decode_to_cache(records, os.path.join(scratch, "images.u8"), config.image_size,
                                      config.decode_workers, config.max_file_bytes)
            new_rows = [row for row, (record, digest) in enumerate(zip(decoded.records, decoded.hashes))
                        if (record.path, digest) not in indexed]
            vectors = embed_cache(encoder, decoded.cache, config.embedding_batch_size)[new_rows] if new_rows else None
        summary = AddSummary(len(new_rows), len(decoded.records) - len(new_rows), decoded.skipped,
                             len(catalog) + len(new_rows), int(manifest["nprobe"]), folder, 0.0)
        if not new_rows:
            log.info("nothing new to add under %s", new_dir)
            summary.seconds = time.perf_counter() - start
            return summary

        embeddings = np.concatenate([stored, vectors])
        new_ids = index.add(vectors)
        clusters = index.assignments_[new_ids]
        summary.nprobe, curve = choose_nprobe(index, prepare_vectors(embeddings, config.metric), config)
        for name in ("encoder.keras", "autoencoder.keras"):
            shutil.copy2(folder / name, writer.path / name)
        save_index(writer.path, index, embeddings)
        added = [decoded.records[row] for row in new_rows]
        save_catalog(writer.path, Catalog(
            paths=catalog.paths + [r.path for r in added],
            labels=catalog.labels + [r.label for r in added],
            hashes=catalog.hashes + [decoded.hashes[row] for row in new_rows],
            clusters=catalog.clusters + clusters.tolist(),
        ))
        summary.seconds = time.perf_counter() - start
        manifest.update(images=summary.images, nprobe=summary.nprobe,
                        recall_at_10={str(k): v for k, v in curve.items()})
        manifest.setdefault("additions", []).append({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_dir": str(Path(new_dir).resolve()),
            "added": summary.added,
            "already_indexed": summary.already_indexed,
            "skipped": [{"path": s.path, "reason": s.reason} for s in decoded.skipped],
            "seconds": round(summary.seconds, 3),
        })
        summary.artifacts = writer.commit(manifest)
    log.info("added %d images to %s", summary.added, summary.artifacts)
    return summary
