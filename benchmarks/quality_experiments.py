"""Embedding experiments behind docs/QUALITY.md: train once, score many ways of reading the encoder.

    python benchmarks/quality_experiments.py ../shared/data/clothing10 [--image-size 64] [--epochs 15]

Every variant is scored like the shared baselines: leave-one-out, cosine, precision@10 with the
class folder as the label, exact search (routing is measured separately by evaluate.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.decomposition import PCA

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.autoencoder import build_autoencoder, train_autoencoder  # noqa: E402
from pipeline.config import FitConfig  # noqa: E402
from pipeline.dataset import TrainingBatches, decode_to_cache, iter_batches, split_indices  # noqa: E402
from pipeline.evaluate import BASELINES, exact_neighbours, precision_at_k  # noqa: E402
from pipeline.images import find_images  # noqa: E402


def whiten(features: np.ndarray, dims: int = 128) -> np.ndarray:
    dims = min(dims, *features.shape)
    return PCA(dims, whiten=True, random_state=0).fit_transform(features)


def gap(maps: np.ndarray) -> np.ndarray:
    return maps.mean(axis=(1, 2))


def gmp(maps: np.ndarray) -> np.ndarray:
    return maps.max(axis=(1, 2))


def grid_pool(maps: np.ndarray, cells: int = 2) -> np.ndarray:
    n, h, w, c = maps.shape
    return maps.reshape(n, cells, h // cells, cells, w // cells, c).mean(axis=(2, 4)).reshape(n, -1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pooling", default="avg")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--maps", type=Path, help="save the feature maps here (.npz), or reuse them if present")
    args = parser.parse_args()
    if args.maps and args.maps.exists():
        saved = np.load(args.maps)
        maps, latent, small_images, labels = ({k[4:]: saved[k] for k in saved if k.startswith("map_")},
                                              saved["latent"], saved["small"], saved["labels"])
        report(args, maps, latent, small_images, labels, train_s=None)
        return

    config = FitConfig(image_size=args.image_size, epochs=args.epochs, pooling=args.pooling, noise=args.noise,
                       latent_dim=args.latent_dim)
    keras.utils.set_random_seed(0)
    records = find_images(args.data_dir)
    labels = np.array([r.label for r in records])
    with tempfile.TemporaryDirectory() as scratch:
        decoded = decode_to_cache(records, f"{scratch}/model.u8", config.image_size)
        small = decode_to_cache(records, f"{scratch}/small.u8", 32)
        autoencoder, encoder = build_autoencoder(config)
        train, val = split_indices(decoded.cache.count, config.validation_split, config.seed)
        start = time.perf_counter()
        train_autoencoder(autoencoder, TrainingBatches(decoded.cache, train, 64, 0, config.flip_augment),
                          TrainingBatches(decoded.cache, val, 64, 0, False), config, f"{scratch}/best.keras")
        train_s = time.perf_counter() - start
        names = [f"enc{i}_relu" for i in range(len(config.filters))] + (["code"] if args.pooling != "flatten" else [])
        probe = keras.Model(encoder.input, [encoder.get_layer(n).output for n in names] + [encoder.output])
        outputs = [[] for _ in range(len(names) + 1)]
        for batch in iter_batches(decoded.cache, 128):
            for slot, value in enumerate(probe.predict_on_batch(batch)):
                outputs[slot].append(np.asarray(value))
        maps = {n: np.concatenate(o) for n, o in zip(names, outputs)}
        latent = np.concatenate(outputs[-1])
        small_images = small.cache.read_range(0, small.cache.count)
    if args.maps:
        np.savez(args.maps, latent=latent, small=small_images, labels=labels, **{f"map_{k}": v for k, v in maps.items()})
    report(args, maps, latent, small_images, labels, train_s)


def report(args, maps, latent, small_images, labels, train_s) -> None:
    names = sorted(n for n in maps if n.startswith("enc"))
    deep = maps[names[-1]]
    variants = {
        "latent (as trained)": latent,
        "latent, PCA-whitened": whiten(latent),
        "deepest conv map, GAP, whitened": whiten(gap(deep)),
        "enc1-3 GAP+GMP concat, whitened": whiten(np.hstack([f(maps[n]) for n in names[1:4] for f in (gap, gmp)])),
        "deepest map 2x2 grid, whitened": whiten(grid_pool(deep)),
        "deepest map flattened, whitened": whiten(deep.reshape(len(deep), -1)),
    }
    if "code" in maps:
        variants["code map flattened, whitened"] = whiten(maps["code"].reshape(len(latent), -1))
        variants["code map 2x2 grid, whitened"] = whiten(grid_pool(maps["code"]))
    for name, make in BASELINES.items():
        variants[f"baseline: {name}"] = make(small_images)
    results = {name: round(precision_at_k(labels[exact_neighbours(f, 10)], labels), 4) for name, f in variants.items()}
    print(json.dumps({"data_dir": args.data_dir, "settings": vars(args), "train_s": train_s and round(train_s, 1),
                      "precision_at_10": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
