"""How the shared-feature candidates scale: time and memory of :func:`pipeline.collection.visual_words.shared_feature_pairs`.

    python benchmarks/bench_visual_words.py --cache DIR [--sizes 2500,5000,10000] [--rounds 3]

``--cache`` is a duplicates cache holding the ORB features of real photos (``ARTIFACTS/duplicates-cache`` after
``bench_duplicates.py``, about 10,000 images). For each size, the first that many images' descriptors are read once,
then the candidates found ``--rounds`` times (median), in this process; peak RSS is the process's after each size.
Writes docs/BENCHMARKS.md. Issue 32 asks the candidates to cost near-linear time in the collection.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.collection.visual_words import shared_feature_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--sizes", default="2500,5000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    files = sorted(args.cache.glob("features-v*/*/*.npz"))[:max(sizes)]
    descriptors = []
    for path in files:
        with np.load(path, allow_pickle=False) as arrays:
            descriptors.append(arrays["descriptors"])
    rows = []
    for size in sizes:
        if size > len(descriptors):
            break
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            pairs = shared_feature_pairs(descriptors[:size])
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((size, median, 1000 * median / size, len(pairs), peak))
        print(f"{size} images: {median:.2f} s ({1000 * median / size:.3f} ms an image), {len(pairs)} pairs, "
              f"peak RSS {peak:.0f} MB", flush=True)
    table = "\n".join(f"| {size:,} | {seconds:.2f} | {per:.3f} | {pairs:,} | {peak:.0f} |"
                      for size, seconds, per, pairs, peak in rows)
    write_section("bench_visual_words", f"""## Shared-feature candidates as the collection grows (`python benchmarks/bench_visual_words.py --sizes {args.sizes}`)

Measured on {machine()}: the ORB descriptors of real photos (clothing10, caltech101, flowers5 and their copies, as
`bench_duplicates` caches them), the first N of them, {args.rounds} rounds (median), in one process.

| images | seconds | ms an image | candidate pairs | peak RSS of the process (MB) |
|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
