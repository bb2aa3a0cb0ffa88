"""The classic autoencoder study on CIFAR-10: 3 kinds x 8 combinations, scored by retrieval on their latents.

    python benchmarks/autoencoder_study.py [--per-class 500] [--epochs 4] [--workdir /tmp/autoencoder-study]

Kinds: convolutional (``--architecture conv``), denoising (conv with Gaussian input noise 0.1) and
deep fully connected (``--architecture dense``), each with every combination of output activation
(sigmoid, tanh), optimizer (Adam at 1e-3, Adadelta at 1.0 as Keras 1 had it, which those studies
used) and loss (binary cross-entropy, mean squared error), ReLU in the hidden layers: 24 models.
Every model trains on the same ``--per-class`` images of each class of ../shared/data/cifar10-test
at 32 px, for the same ``--epochs`` (no early stop), on reconstruction alone (no view consistency,
no augmentation). Each image's latent (conv: the 2x2x128 code map flattened; dense: 128 values) is
then a query against all the others, exact search with cosine and with Euclidean distance:
precision@10 and mAP@10 by label. The reference baselines are scored on the same images. Written
to docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from pipeline.quiet import silence_tensorflow  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cifar10-test"
KINDS = {"conv": dict(architecture="conv"), "denoising": dict(architecture="conv", noise=0.1),
         "dense": dict(architecture="dense")}
COMBINATIONS = list(itertools.product(("sigmoid", "tanh"), ("adam", "adadelta"), ("bce", "mse")))
LEARNING_RATES = {"adam": 1e-3, "adadelta": 1.0}
K = 10


def study_images(per_class: int):
    """The first ``per_class`` images of each class."""
    from pipeline.data.images import find_images

    counts: dict[str, int] = {}
    chosen = []
    for record in find_images(DATA):
        if counts.get(record.label, 0) < per_class:
            counts[record.label] = counts.get(record.label, 0) + 1
            chosen.append(record)
    return chosen


def train_and_score(kind: str, activation: str, optimizer: str, loss: str, cache, scored, epochs: int, seed: int):
    """Train one model on every cached image; its scores by metric and its training seconds."""
    import keras

    from pipeline.train.autoencoder import build_autoencoder, train_autoencoder
    from pipeline.config import FitConfig
    from pipeline.data.dataset import TrainingBatches, to_model_input
    from pipeline.index.metrics import exact_neighbours

    config = FitConfig(backbone="none", image_size=32, autoencoder_size=32, latent_dim=128, epochs=epochs,
                       patience=epochs, output_activation=activation, optimizer=optimizer, loss=loss,
                       learning_rate=LEARNING_RATES[optimizer], consistency=0.0, min_crop=1.0, color_jitter=0.0,
                       flip_augment=False, orientation_weight=0.0, color_weight=0.0, seed=seed, **KINDS[kind])
    keras.utils.set_random_seed(seed)
    autoencoder = build_autoencoder(config)
    rows = np.arange(cache.count)
    start = time.perf_counter()
    train_autoencoder(autoencoder, TrainingBatches(cache, rows, config.batch_size, seed), None, config, epochs)
    seconds = time.perf_counter() - start
    latents = np.concatenate([autoencoder.to_latent.predict_on_batch(to_model_input(cache.read_range(i, min(i + 512, cache.count))))
                              for i in range(0, cache.count, 512)])
    return {metric: scored.score(exact_neighbours(latents, K, metric)) for metric in ("cosine", "euclidean")}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    silence_tensorflow()
    from pipeline.data.dataset import decode_to_cache
    from pipeline.evaluate import reference_baselines
    from pipeline.index.metrics import LabelledSet

    records = study_images(args.per_class)
    scored = LabelledSet.of(np.array([record.label for record in records]))
    baselines = reference_baselines([record.path for record in records], scored.score, K)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = decode_to_cache(records, f"{scratch}/images.u8", 32).cache
        for kind, (activation, optimizer, loss) in itertools.product(KINDS, COMBINATIONS):
            scores, seconds = train_and_score(kind, activation, optimizer, loss, cache, scored, args.epochs, args.seed)
            results.append(dict(kind=kind, activation=activation, optimizer=optimizer, loss=loss, scores=scores,
                                seconds=seconds))
            print(json.dumps(results[-1]), flush=True)
    write_section("autoencoder_study", render(results, baselines, len(records), args), QUALITY_MD)


def render(results: list[dict], baselines: dict, images: int, args: argparse.Namespace) -> str:
    def cell(scores: dict) -> str:
        return f"{scores['precision_at_k']:.3f} / {scores['map_at_k']:.3f}"

    rows = "\n".join(
        f"| {r['kind']} | {r['activation']} | {r['optimizer']} | {r['loss']} | {cell(r['scores']['cosine'])} | "
        f"{cell(r['scores']['euclidean'])} | {r['seconds']:.0f} s |" for r in results)
    best = max(results, key=lambda r: max(r["scores"][m]["precision_at_k"] for m in ("cosine", "euclidean")))
    by_kind = {kind: max(max(r["scores"][m]["precision_at_k"] for m in ("cosine", "euclidean"))
                         for r in results if r["kind"] == kind) for kind in KINDS}
    baseline_rows = "\n".join(f"| baseline: {name} | | | | {cell(scores)} | | |" for name, scores in baselines.items())
    return f"""
## The autoencoder study on CIFAR-10 (`python benchmarks/autoencoder_study.py --per-class {args.per_class} --epochs {args.epochs}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only. {images:,} images of `cifar10-test` ({args.per_class}
of each class), 32 px; each of the 24 models trained on all of them for {args.epochs} epochs on reconstruction alone
(no view consistency, no augmentation; Adam at 1e-3, Adadelta at 1.0; the denoising kind adds Gaussian noise 0.1 to
its input), then each image's latent queried against the others, exact search. Cells: precision@10 / mAP@10. The
baselines' cells are under cosine (raw pixels L2 is Euclidean). The default pipeline (a frozen EfficientNet-Lite0 and
the autoencoder over it, fitted on all 10,000) scores precision@10 0.646 on the whole set (bench_quality above).

| kind | output | optimizer | loss | cosine | Euclidean | training |
|---|---|---|---|---|---|---|
{rows}
{baseline_rows}

Best per kind (precision@10, either metric): {", ".join(f"{kind} {value:.3f}" for kind, value in by_kind.items())};
best of all: {best['kind']}, {best['activation']}, {best['optimizer']}, {best['loss']}.
"""


if __name__ == "__main__":
    main()
