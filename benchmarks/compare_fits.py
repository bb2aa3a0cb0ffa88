"""Behaviour unchanged? The fits of two bench_quality runs (before and after a change) compared exactly.

    python benchmarks/compare_fits.py BEFORE_WORKDIR AFTER_WORKDIR [--sets clothing10,...] [--name NAME] [--code TEXT]

Each workdir holds one artifacts folder per dev set (``bench_quality.py --workdir DIR``, run once on
the code before the change and once after). For each set this compares the two bundles: the
catalog, the embeddings, the index (centroids, assignments, tuned nprobe), and the answers: the
10 nearest of every indexed image as ``predict`` finds them (routed, with query expansion). Prints
one line per set and writes the table as the section ``compare_fits_NAME`` of docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402

SETS = ("clothing10", "cifar10-test", "caltech101", "flowers5")


def neighbours(bundle: Bundle) -> np.ndarray:
    """The 10 nearest of every indexed image (itself left out), as a query of its own vector finds them."""
    ids = np.arange(len(bundle.catalog))
    return bundle.index.search(np.asarray(bundle.embeddings), 10, exclude=ids[:, None]).ids


def compare(before: Bundle, after: Bundle) -> dict:
    """What differs between two bundles of the same folder."""
    same_catalog = (before.catalog.paths, before.catalog.hashes, before.catalog.labels, before.catalog.clusters) == (
        after.catalog.paths, after.catalog.hashes, after.catalog.labels, after.catalog.clusters)
    one, other = np.asarray(before.embeddings), np.asarray(after.embeddings)
    largest = float(np.abs(one - other).max()) if one.shape == other.shape else float("inf")
    answers_before, answers_after = neighbours(before), neighbours(after)
    return {
        "catalog": same_catalog,
        "embeddings_max_difference": largest,
        "centroids": np.array_equal(before.index.centroids_, after.index.centroids_),
        "nprobe": (before.index.nprobe_, after.index.nprobe_),
        "answers_differing": int(np.sum(np.any(answers_before != answers_after, axis=1))),
        "images": len(before.catalog),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--name", default="refactor")
    parser.add_argument("--code", default="", help="which code made each workdir, said in the section (e.g. 'b627145 and 9d0e1f2')")
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        result = compare(Bundle.load(args.before / name), Bundle.load(args.after / name))
        print(name, result, flush=True)
        rows.append(f"| {name} | {result['images']:,} | {'same' if result['catalog'] else 'differs'} | "
                    f"{result['embeddings_max_difference']:g} | {'same' if result['centroids'] else 'differ'} | "
                    f"{result['nprobe'][0]} / {result['nprobe'][1]} | {result['answers_differing']} |")
    write_section(f"compare_fits_{args.name}", f"""
### Behaviour unchanged ({args.name}): `python benchmarks/compare_fits.py {args.before} {args.after}`

Measured {time.strftime('%Y-%m-%d')} on {machine()}: the default fit of each dev set by the code before the change
and after it{f" ({args.code})" if args.code else ""}, each made by `bench_quality.py`, compared exactly. Answers: the 10 nearest
of every indexed image, routed with the tuned nprobe and query expansion, as `predict` finds them.

| set | images | catalog (paths, hashes, labels, clusters) | largest embedding difference | centroids | nprobe before / after | images whose 10 answers differ |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""", QUALITY_MD)


if __name__ == "__main__":
    main()
