"""How to read the backbone's feature map for retrieval: poolings, backbones and query expansions, on the four dev sets.

    python benchmarks/pooling_study.py [--sets clothing10,cifar10-test,caltech101,flowers5]
                                       [--views efficientnet-lite0@224,efficientnet-lite2@260,efficientnet-lite0@320]
                                       [--workdir /tmp/pooling-study]

For each set of ``../shared/data`` and each view (a backbone at an input size; above its native
size the network sees the larger picture, a larger map), the feature maps of every image are
computed once (float16, cached in the workdir) beside the orientation histogram of the pipeline's
descriptor. Each variant then pools the map one way, projects it like a fit does (PCA to 128,
centred, which is what the fit's latent scores: docs/QUALITY.md), gives it unit length, puts the
orientation block beside it at the default weights (0.67 / 0.33) and searches exactly (cosine,
leave one out), without and with query expansion. Scores: precision@10, precision@1 and mAP@10,
each set's and their mean. Writes the tables as the section ``pooling_study`` of docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SETS = ("clothing10", "cifar10-test", "caltech101", "flowers5")
DIMS, ORIENTATION_WEIGHT, K = 128, 0.33, 10


def feature_maps(name: str, backbone: str, size: int, workdir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(maps float16 (n, h, w, 1280), orientation histograms (n, 576), labels) of a set, cached."""
    import keras

    from pipeline.model.backbone import build_backbone
    from pipeline.config import FitConfig
    from pipeline.data.dataset import decode_to_cache, to_model_input
    from pipeline.model.descriptor import image_blocks_model
    from pipeline.data.images import find_images

    cache = workdir / f"{name}-{backbone}-{size}.npz"
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        return stored["maps"], stored["orientations"], stored["labels"].tolist()
    records = find_images(SHARED / name)
    decoded = decode_to_cache(records, str(workdir / "images.u8"), size)
    network = build_backbone(size, backbone, native=False)
    blocks = image_blocks_model(FitConfig(backbone=backbone, image_size=size))
    maps, orientations = [], []
    for start in range(0, decoded.cache.count, 32):
        images = to_model_input(decoded.cache.read_range(start, min(start + 32, decoded.cache.count)))
        maps.append(np.asarray(network.predict_on_batch(images)).astype(np.float16))
        orientations.append(np.asarray(blocks.predict_on_batch(images)["orientations"]))
    keras.backend.clear_session()
    maps, orientations = np.concatenate(maps), np.concatenate(orientations)
    labels = [record.label for record in decoded.records]
    np.savez(cache, maps=maps, orientations=orientations, labels=np.array(labels))
    return maps, orientations, labels


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def gem(maps: np.ndarray, p: float) -> np.ndarray:
    """Generalized-mean pooling over positions: (mean of x^p)^(1/p); 1 is the average, infinity the maximum."""
    return np.mean(maps ** p, axis=(1, 2)) ** (1 / p)


def regional(maps: np.ndarray, pool) -> np.ndarray:
    """R-MAC-like: the whole map and four overlapping corner windows (a bit over half of each side),
    each pooled by ``pool`` and given unit length, summed."""
    side = maps.shape[1]
    window, far = side // 2 + 1, side - (side // 2 + 1)
    regions = [maps] + [maps[:, top : top + window, left : left + window] for top in (0, far) for left in (0, far)]
    return sum(unit(pool(region)) for region in regions)


POOLINGS = {
    "average (today)": lambda maps, rows: maps.mean(axis=(1, 2)),
    "GeM p=2": lambda maps, rows: gem(maps, 2.0),
    "GeM p=3": lambda maps, rows: gem(maps, 3.0),
    "max": lambda maps, rows: maps.max(axis=(1, 2)),
    "regional max (R-MAC)": lambda maps, rows: regional(maps, lambda region: region.max(axis=(1, 2))),
    "regional GeM p=3": lambda maps, rows: regional(maps, lambda region: gem(region, 3.0)),
}


def pooled_in_chunks(maps: np.ndarray, pool, chunk: int = 1000) -> np.ndarray:
    """``pool(float32 maps, their rows)`` over the float16 maps a chunk of images at a time (the float32 copy of a
    10,000-image set's 10 x 10 maps alone would take 5 GB)."""
    return np.concatenate([pool(maps[start : start + chunk].astype(np.float32), slice(start, start + chunk))
                           for start in range(0, len(maps), chunk)])


def projected(vectors: np.ndarray, dims: int = DIMS) -> np.ndarray:
    """PCA to ``dims``, centred, unit length: a block as a fit makes it (no whitening)."""
    from pipeline.model.whitening import fit_whitening

    kernel, bias = fit_whitening(vectors.astype(np.float32), dims, 0.0)
    return unit(vectors.astype(np.float32) @ kernel + bias)


def neighbours(queries: np.ndarray, base: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar rows of ``base`` to each query (leave-one-out: queries are base's rows):
    (ids, similarities), most similar first."""
    ids = np.empty((len(queries), k), np.int64)
    similarities = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        scores = queries[start:stop] @ base.T
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ids[start:stop] = np.take_along_axis(top, order, axis=1)
        similarities[start:stop] = np.take_along_axis(scores, ids[start:stop], axis=1)
    return ids, similarities


def expansions(vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Neighbour ids (k = 10) of every image by each query expansion."""
    first, similarity = neighbours(vectors, vectors, K)
    out = {"no expansion": first}
    average = unit(vectors + vectors[first[:, :3]].sum(axis=1))
    out["average, 3 (today)"] = neighbours(average, vectors, K)[0]
    pinned = out["average, 3 (today)"].copy()
    for row, nearest in enumerate(first[:, 0]):  # the nearest to the query itself stays first
        rest = [i for i in pinned[row] if i != nearest]
        pinned[row] = [nearest] + rest[: K - 1]
    out["average, 3, nearest kept first"] = pinned
    weights = np.maximum(similarity, 0) ** 3  # alpha-weighted expansion (Radenovic et al.), alpha 3, 10 neighbours
    alpha = unit(vectors + (vectors[first] * weights[:, :, None]).sum(axis=1))
    out["alpha 3, 10"] = neighbours(alpha, vectors, K)[0]
    return out


def scores(ids: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from pipeline.index.metrics import LabelledSet

    found = LabelledSet.of(labels).score(ids)
    return {"p10": found["precision_at_k"], "p1": found["precision_at_1"], "map": found["map_at_k"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--views", default="efficientnet-lite0@224,efficientnet-lite2@260,efficientnet-lite0@320")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pooling-study"))
    parser.add_argument("--blocks", metavar="VIEWS",
                        help="instead: the descriptor's blocks (orientation and colour weights, latent size) around "
                             "regional GeM pooling, for these views")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sets, views = args.sets.split(","), [(v.split("@")[0], int(v.split("@")[1])) for v in args.views.split(",")]
    if args.blocks:
        return blocks_study(sets, [(v.split("@")[0], int(v.split("@")[1])) for v in args.blocks.split(",")], args)

    results: dict[str, dict[str, dict]] = {}  # variant -> set -> expansion -> scores
    for name in sets:
        loaded = {view: feature_maps(name, *view, args.workdir) for view in views}
        for (backbone, size), (maps, orientations, labels) in loaded.items():
            labels = np.array(labels)
            orientation_block = projected(orientations)
            variants = {f"{backbone}@{size}, {pooling}": pool for pooling, pool in POOLINGS.items()}
            if (backbone, 224) in loaded and size > 224:  # multi-scale: this view's pooled map beside 224's
                small_scale = pooled_in_chunks(loaded[(backbone, 224)][0], lambda m: gem(m, 3.0))
                variants[f"{backbone}@224+{size}, GeM p=3"] = lambda m, rows: (
                    unit(small_scale[rows]) + unit(gem(m, 3.0)))
            for variant, pool in variants.items():
                pooled = pooled_in_chunks(maps, pool)
                latent = projected(pooled)
                pooled_alone = neighbours(unit(pooled), unit(pooled), K)[0]
                descriptor = np.hstack([(1 - ORIENTATION_WEIGHT) * latent, ORIENTATION_WEIGHT * orientation_block])
                found = {"pooled alone": scores(pooled_alone, labels)}
                found.update({e: scores(ids, labels) for e, ids in expansions(unit(descriptor)).items()})
                results.setdefault(variant, {})[name] = found
                print(json.dumps({"set": name, "variant": variant, **{e: s for e, s in found.items()}}), flush=True)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    write_section("pooling_study", report(results, sets, args), QUALITY_MD)


def colour_histograms(name: str, workdir: Path) -> np.ndarray:
    """The pipeline's colour block (HSV histograms of the whole image and its centre) of each image of a set, cached."""
    from pipeline.data.dataset import decode_to_cache, to_model_input
    from pipeline.model.histograms import ColorHistogram
    from pipeline.data.images import find_images

    cache = workdir / f"{name}-colors.npy"
    if not cache.exists():
        decoded = decode_to_cache(find_images(SHARED / name), str(workdir / "images.u8"), 224)
        layer = ColorHistogram()
        np.save(cache, np.concatenate([np.asarray(layer(to_model_input(decoded.cache.read_range(
            start, min(start + 64, decoded.cache.count))))) for start in range(0, decoded.cache.count, 64)]))
    return np.load(cache)


def blocks_study(sets: list[str], views: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """The descriptor's blocks around regional GeM pooling: orientation and colour weights and the latent's
    size, scored with expansion (nearest kept first), precision@1 of each set beside the pooled features'."""
    grid = [(o, c, dims) for o in (0.2, 0.25, 0.33) for c in (0.0, 0.1) for dims in (128, 256)]
    rows = []
    for backbone, size in views:
        found: dict[tuple, dict[str, dict]] = {}
        baseline: dict[str, float] = {}
        for name in sets:
            maps, orientations, labels = feature_maps(name, backbone, size, args.workdir)
            labels, colours = np.array(labels), projected(colour_histograms(name, args.workdir))
            average = pooled_in_chunks(maps, POOLINGS["average (today)"])
            baseline[name] = scores(neighbours(unit(average), unit(average), K)[0], labels)["p1"]
            pooled = pooled_in_chunks(maps, POOLINGS["regional GeM p=3"])
            orientation_block = projected(orientations)
            for o, c, dims in grid:
                blocks = [(1 - o - c) * projected(pooled, dims), o * orientation_block] + ([c * colours] if c else [])
                ids = expansions(unit(np.hstack(blocks)))["average, 3, nearest kept first"]
                found.setdefault((o, c, dims), {})[name] = scores(ids, labels)
                print(json.dumps({"view": f"{backbone}@{size}", "set": name, "o": o, "c": c, "dims": dims,
                                  **found[(o, c, dims)][name]}), flush=True)
        rows.append(f"| {backbone}@{size}, the backbone's pooled features (average) | | | " + " | ".join(
            f"{baseline[name]:.3f}" for name in sets) + " | |")
        for (o, c, dims), by_set in found.items():
            p10 = np.mean([by_set[name]["p10"] for name in sets])
            low = [name for name in sets if by_set[name]["p1"] < baseline[name]]
            rows.append(f"| {backbone}@{size}, o {o:g}, c {c:g}, latent {dims} | {p10:.3f} | "
                        f"{np.mean([by_set[name]['map'] for name in sets]):.3f} | "
                        + " | ".join(f"{by_set[name]['p1']:.3f}" for name in sets)
                        + f" | {', '.join(low) or 'none'} |")
    write_section("blocks_study", f"""
## The descriptor's blocks over regional GeM pooling (`python benchmarks/pooling_study.py --blocks {args.blocks}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, on the maps cached by the study above. The map pooled by
regional GeM (p = 3), projected to the latent's size; the orientation block at weight o and the colour block (the HSV
histograms of the whole image and its centre) at weight c, each projected to 128 and of unit length; exact search
with query expansion 3, the nearest to the query kept first. Means over the four sets, and precision@1 of each set
beside the backbone's own pooled features (average, 1280 values, exact cosine), the baseline `evaluate` reports.

| variant | precision@10 mean | mAP@10 mean | {' | '.join(f'precision@1 {name}' for name in sets)} | precision@1 below the pooled features' on |
|---|---|---|{'---|' * len(sets)}---|
{chr(10).join(rows)}
""", QUALITY_MD)


def report(results: dict, sets: list[str], args: argparse.Namespace) -> str:
    def mean(variant: str, expansion: str, key: str) -> float:
        return float(np.mean([results[variant][name][expansion][key] for name in sets]))

    expansions_seen = list(next(iter(next(iter(results.values())).values())))
    pooling_rows = "\n".join(
        f"| {variant} | " + " | ".join(f"{results[variant][name]['average, 3 (today)']['p10']:.3f}" for name in sets)
        + f" | **{mean(variant, 'average, 3 (today)', 'p10'):.3f}** |" for variant in results)
    default = next(iter(results))
    best = max(results, key=lambda v: mean(v, "average, 3 (today)", "p10"))
    expansion_rows = "\n".join(
        f"| {variant}, {expansion} | {mean(variant, expansion, 'p10'):.3f} | "
        + " | ".join(f"{results[variant][name][expansion]['p1']:.3f}" for name in sets)
        + f" | {mean(variant, expansion, 'p1'):.3f} | {mean(variant, expansion, 'map'):.3f} |"
        for variant in dict.fromkeys((default, best)) for expansion in expansions_seen)
    return f"""
## How to read the map: pooling, backbone, expansion (`python benchmarks/pooling_study.py --views {args.views}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only. Every image of each set through each backbone once (its
map cached); each variant pools the map, projects it as a fit does (PCA to {DIMS}, centred: what the fit's latent
scores), puts the orientation block beside it at the default weights ({1 - ORIENTATION_WEIGHT:.2f} / {ORIENTATION_WEIGHT})
and searches exactly, leave one out (cosine). `@320` above Lite0's native 224 px: the network sees the larger
picture and gives a 10 x 10 map. Regional pooling: the whole map and four overlapping corner windows (a bit over
half of each side), each pooled and of unit length, summed.

Precision@10 with today's query expansion (the query averaged with its 3 nearest):

| | {' | '.join(sets)} | mean |
|---|{'---|' * (len(sets) + 1)}
{pooling_rows}

Query expansions, for today's default ({default}) and the best of the above ({best}). "Pooled alone" is the pooled
vector itself, unprojected, no orientation block, no expansion: what a system built straight on that network would
give. "Nearest kept first": ranked by the expanded query, but the image nearest the query itself first.

| variant, expansion | precision@10 mean | {' | '.join(f'precision@1 {name}' for name in sets)} | precision@1 mean | mAP@10 mean |
|---|---|{'---|' * len(sets)}---|---|
{expansion_rows}
"""


if __name__ == "__main__":
    main()
