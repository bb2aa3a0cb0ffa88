"""Fit benchmark: 5,000 real 512x512 JPEGs with the default settings.

    python benchmarks/bench_fit.py [--images 5000] [--workdir /tmp/bench-fit]

Builds the image folder once (clothing10 photos, centre and offset crops, some mirrored, resized
to 512x512, JPEG quality 90), runs ``scripts/fit.py`` on it in a child process, and reports wall
time, images per second of each stage, the child's peak RSS, the time of ``scripts/add.py`` for 1%
more images, and the warm latency of one predict.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402

CLOTHING = ROOT.parent / "shared" / "data" / "clothing10"


def build_folder(folder: Path, count: int, first: int = 0, size: int = 512) -> None:
    """``count`` distinct 512x512 JPEGs (numbers ``first`` on) made from the clothing10 photos."""
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return
    sources = sorted(CLOTHING.rglob("*.jpg"))
    for i in range(first, first + count):
        source = sources[i % len(sources)]
        variant = i // len(sources)  # 0: centre crop, 1: top crop, 2: bottom crop, mirrored when odd
        image = cv2.imread(str(source))
        h, w = image.shape[:2]
        side = min(h, w)
        offset = [(max(h, w) - side) // 2, 0, max(h, w) - side][variant % 3]
        crop = image[offset : offset + side, :] if h >= w else image[:, offset : offset + side]
        if variant % 2:
            crop = crop[:, ::-1]
        out = folder / source.parent.name / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-fit"))
    args = parser.parse_args()

    data = args.workdir / f"images-{args.images}"
    artifacts = args.workdir / "artifacts"
    print(f"building {args.images} 512x512 JPEGs in {data} ...", flush=True)
    build_folder(data, args.images)

    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(data), "--artifacts", str(artifacts)],
                   check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

    from pipeline.artifacts import current_fit, read_manifest
    from pipeline.search import Searcher

    manifest = read_manifest(current_fit(artifacts))
    stages = manifest["stage_seconds"]
    images = manifest["images"]
    extra = args.workdir / f"added-{args.images // 100}"
    build_folder(extra, args.images // 100, first=args.images)  # 1% more, unlike any of the first ones
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(extra), "--artifacts", str(artifacts)],
                   check=True, cwd=ROOT)
    add_wall = time.perf_counter() - start

    searcher = Searcher(artifacts)
    queries = sorted(data.rglob("*.jpg"))[:: max(1, images // 25)][:25]
    searcher.search_file(queries[0])  # warm-up: the first call builds the encoder's graph
    latencies = []
    for query in queries:
        tick = time.perf_counter()
        searcher.search_file(query, n=10)
        latencies.append((time.perf_counter() - tick) * 1000)

    figures = {
        "images": images, "wall_s": round(wall, 1), "peak_rss_gb": round(peak_rss_gb, 2),
        "stage_seconds": stages, "epochs_run": len(manifest["history"]["loss"]),
        "clusters": manifest["clusters"], "nprobe": manifest["nprobe"],
        "predict_ms_median": round(statistics.median(latencies), 1), "predict_ms_max": round(max(latencies), 1),
        "add_images": args.images // 100, "add_wall_s": round(add_wall, 1),
    }
    print(json.dumps(figures, indent=2))
    passes = {"train": figures["epochs_run"]}  # training reads every image once per epoch
    rows = "\n".join(f"| {name} | {seconds:.1f} | {images * passes.get(name, 1) / seconds:,.0f} |"
                     for name, seconds in stages.items() if seconds > 0)
    settings = manifest["settings"]
    write_section("bench_fit", f"""
## Fit: {images:,} images of 512x512 (`python benchmarks/bench_fit.py --images {args.images}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only. Images: real clothing10 photos, cropped and resized to
512x512 JPEG. Default settings (model input {settings['image_size']} px, autoencoder
{settings['autoencoder_size']} px, latent {settings['latent_dim']}, epochs {settings['epochs']} with early stopping:
{figures['epochs_run']} ran; each training image is read as two random views).

| figure | measured | target |
|---|---|---|
| fit wall time (process start to artifacts written) | {wall:.0f} s ({wall / 60:.1f} min) | under 10 min |
| peak RSS of the fit process | {peak_rss_gb:.2f} GB | under 3 GB |
| warm predict, one file query, n=10 (median of {len(latencies)}) | {figures['predict_ms_median']} ms (max {figures['predict_ms_max']} ms) | |
| `scripts/add.py` of {args.images // 100} more images (1%), process start to commit | {add_wall:.1f} s ({add_wall / wall:.1%} of the fit) | under 5% of the fit |

| stage | seconds | images per second (training: image-epochs per second) |
|---|---|---|
{rows}

{manifest['clusters']} clusters, nprobe {manifest['nprobe']} (recall@10 against exact search
{manifest['recall_at_10'][str(manifest['nprobe'])]:.3f}).
""")


if __name__ == "__main__":
    main()
