"""Copies in a folder with no fit as the folder grows: the first run at 10,000 and 50,000 images, against pHash.

    python benchmarks/bench_duplicates_scale.py [--sizes 10000,50000] [--workdir /tmp/bench-duplicates-scale]

The folder: the real photos of clothing10, caltech101, flowers5 and cifar10-test (15,000), then near-copies of the
5,000 large ones (seven each, of the 13 kinds of ``bench_duplicates.py`` in turn) up to the largest size; every
smaller size is a random subset of it (hard links), so each size has the same mix of photos and copies. For each
size, in one run: ``imgsim duplicates DIR --json`` with an empty cache in a child process (the first run: every file
hashed, the pretrained backbone's descriptors, local features, candidates, verification), its wall time, peak RSS and
the candidate pairs it verified; then pHash on the same files (imagededup's method, as ``bench_duplicates.py`` runs
it). Pair precision and recall of both against the copies' sources. Issue 32 asks the cost to stay near-linear in
the collection. Written to docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks.bench_duplicates import DATA, KINDS, built_sources, pair_scores, phash_groups, run_duplicates  # noqa: E402
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from helpers import save_near_copy  # noqa: E402

LARGE_SETS = ("clothing10", "caltech101", "flowers5")
SMALL_SETS = ("cifar10-test",)  # 32 px photos: looked at, never copied
COPIES_EACH = 7


def _copy(task: tuple[str, str, str, int]) -> str:
    source, kind, out, seed = task
    return str(save_near_copy(Path(source), kind, Path(out), seed=seed))


def build_folder(folder: Path, size: int) -> dict[str, int]:
    """The photos and their near-copies, ``size`` files in all; the source photo of every file (kept in
    ``folder/sources.json``, so that a second run reuses the folder)."""
    built = built_sources(folder)
    if built is not None:
        return built
    source_of: dict[str, int] = {}
    large: list[tuple[Path, int]] = []
    for name in LARGE_SETS + SMALL_SETS:
        for photo in sorted((DATA / name).rglob("*.jpg")):
            out = folder / "originals" / name / photo.relative_to(DATA / name)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(photo, out)
            source_of[str(out)] = len(source_of)
            if name in LARGE_SETS:
                large.append((photo, source_of[str(out)]))
    tasks, sources = [], []
    for round_ in range(COPIES_EACH):
        for number, (photo, source) in enumerate(large):
            if len(source_of) + len(tasks) >= size:
                break
            kind = KINDS[(number + round_) % len(KINDS)]
            out = folder / "copies" / f"{round_}" / f"{number:05d}-{kind}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            tasks.append((str(photo), kind, str(out), round_ * len(large) + number))
            sources.append(source)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for path, source in zip(pool.map(_copy, tasks, chunksize=64), sources):
            source_of[path] = source
    print(f"{len(source_of):,} images ({len(tasks):,} near-copies)", flush=True)
    (folder / "sources.json").write_text(json.dumps(source_of))
    return source_of


def subset(source_of: dict[str, int], folder: Path, whole: Path, size: int) -> dict[str, int]:
    """A random ``size`` of the files (seeded), hard-linked under ``folder`` at their paths relative to ``whole``."""
    if folder.exists():
        shutil.rmtree(folder)
    chosen = np.random.default_rng(0).choice(sorted(source_of), size, replace=False)
    linked = {}
    for path in chosen:
        out = folder / Path(path).relative_to(whole)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, out)
        linked[str(out)] = source_of[path]
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-duplicates-scale"))
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    whole = args.workdir / "photos"
    everything = build_folder(whole, sizes[-1])
    rows = []
    for size in sizes:
        folder = whole if size == len(everything) else args.workdir / f"photos-{size}"
        source_of = everything if folder == whole else subset(everything, folder, whole, size)
        cache = args.workdir / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        found, seconds, peak_gb = run_duplicates(str(folder), "--cache", str(cache))
        groups = [[image["path"] for image in group["images"]] for group in found["groups"]]
        ours = pair_scores(groups, source_of, set(source_of))
        mixed = sum(len({source_of[path] for path in group}) > 1 for group in groups)
        phash_at, phash_seconds = phash_groups(sorted(source_of), (10,))
        phash = pair_scores(phash_at[10], source_of, set(source_of))
        rows.append((size, seconds, peak_gb, found["compared"], found["from_shared_features"], ours, mixed,
                     phash_seconds, phash))
        print(f"{size:,} images: {seconds:.1f} s ({1000 * seconds / size:.1f} ms an image), peak {peak_gb:.2f} GB, "
              f"{found['compared']:,} pairs verified, precision {ours['precision']:.4f} recall {ours['recall']:.4f}, "
              f"{mixed} mixed groups; pHash {phash_seconds:.1f} s, precision {phash['precision']:.4f} recall "
              f"{phash['recall']:.4f}", flush=True)
    table = "\n".join(
        f"| {size:,} | {seconds:.1f} | {1000 * seconds / size:.1f} | {peak:.2f} | {compared:,} ({compared / size:.1f} "
        f"an image; {shared:,} from shared features) | {ours['precision']:.4f} / {ours['recall']:.4f} | {mixed} | "
        f"{phash_s:.1f} | {phash['precision']:.4f} / {phash['recall']:.4f} | {seconds / phash_s:.1f}x |"
        for size, seconds, peak, compared, shared, ours, mixed, phash_s, phash in rows)
    first, last = rows[0], rows[-1]
    growth = (last[1] / last[0]) / (first[1] / first[0])
    write_section("bench_duplicates_scale", f"""
## Copies in a folder with no fit as it grows (`python benchmarks/bench_duplicates_scale.py --sizes {args.sizes}`)

Measured on {machine()}, one run. The folder: every photo of {', '.join(LARGE_SETS + SMALL_SETS)} and near-copies of
the {', '.join(LARGE_SETS)} photos ({COPIES_EACH} each at most, of the {len(KINDS)} kinds of `bench_duplicates.py` in
turn), {sizes[-1]:,} files; each smaller size a random subset of them. Ours: `imgsim duplicates DIR --json`, first run
(empty cache), in a child process. pHash: 64-bit `phash`, Hamming distance 10, connected components (imagededup's
default), on the same files in the same run. A true pair is two files of the same photo.

| images | ours: seconds | ms an image | peak RSS (GB) | pairs verified | ours: pair precision / recall | groups mixing photos | pHash: seconds | pHash: precision / recall | ours / pHash time |
|---|---|---|---|---|---|---|---|---|---|
{table}

From {first[0]:,} to {last[0]:,} images the time an image grew {growth:.2f}x.
""", QUALITY_MD)


if __name__ == "__main__":
    main()
