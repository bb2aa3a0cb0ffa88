"""Descriptor experiments behind docs/QUALITY.md: one fitted encoder, its descriptor read many ways.

    python scripts/fit.py DATA_DIR --artifacts DIR [fit flags]
    python benchmarks/quality_experiments.py DATA_DIR --artifacts DIR

Reads the blocks of the fitted encoder (the learned latent, and the orientation and colour
histograms when the fit has them), whitens each like a fit does, and scores each block alone and
the blocks mixed at several weights, with and without query expansion. Every variant is scored like evaluate.py: leave-one-out, cosine,
precision@10 with the class folder as the label, exact search (routing is measured by evaluate.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import itertools

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.data.images import find_images  # noqa: E402
from pipeline.index.metrics import precision_at_k  # noqa: E402
from pipeline.model.embed import embed_files  # noqa: E402
from pipeline.model.runtime import DESCRIPTOR  # noqa: E402
from pipeline.model.whitening import fit_whitening  # noqa: E402

K = 10


def whitened_unit(block: np.ndarray, dims: int, whitening: float) -> np.ndarray:
    """A block as a fit treats it: PCA-whitened (:func:`fit_whitening`), then unit length."""
    kernel, bias = fit_whitening(block, dims, whitening)
    projected = block @ kernel + bias
    return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def precision(vectors: np.ndarray, labels: np.ndarray, expansion: int = 0) -> float:
    """Leave-one-out precision@10 of exact cosine search, optionally after average query expansion."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    if expansion:
        first = np.argpartition(-similarity, expansion, axis=1)[:, :expansion]
        expanded = unit + unit[first].sum(axis=1)
        similarity = expanded @ unit.T
        np.fill_diagonal(similarity, -np.inf)
    top = np.argpartition(-similarity, K, axis=1)[:, :K]
    return round(precision_at_k(labels[top], labels), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", help="the fitted folder (class folders are the labels)")
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--orientation-weights", default="0,0.2,0.33,0.5,0.67",
                        help="orientation-histogram weights to try (when the fit has that block)")
    parser.add_argument("--color-weights", default="0,0.1,0.2,0.3",
                        help="colour-histogram weights to try (when the fit has that block)")
    args = parser.parse_args()

    bundle = Bundle.load(args.artifacts)
    settings = bundle.settings
    embedded = embed_files(find_images(args.data_dir), bundle.encoder(), settings, outputs=True)
    labels = np.array([r.label for r in embedded.records])
    blocks = {name: whitened_unit(block, settings.latent_dim, settings.whitening)
              for name, block in embedded.vectors.items() if name not in (DESCRIPTOR, "backbone")}

    results = {f"{name} alone": {f"expansion {e}": precision(block, labels, e) for e in (0, 3)}
               for name, block in blocks.items()}
    grids = {"orientations": args.orientation_weights, "colors": args.color_weights}
    grids = {name: [float(w) for w in grid.split(",")] for name, grid in grids.items() if name in blocks}
    for combination in itertools.product(*grids.values()):
        weights = dict(zip(grids, combination))
        latent_weight = 1 - sum(weights.values())
        if latent_weight <= 0:
            continue
        vectors = np.hstack([latent_weight * blocks["latent"]] + [w * blocks[name] for name, w in weights.items()])
        key = ", ".join(f"{name} {w:g}" for name, w in weights.items()) or "latent alone"
        results[key] = {f"expansion {e}": precision(vectors, labels, e) for e in (0, 3)}
    print(json.dumps({"data_dir": args.data_dir, "images": len(labels), "artifacts": str(bundle.folder),
                      "settings": settings.to_dict(), "precision_at_10": results}, indent=2))


if __name__ == "__main__":
    main()
