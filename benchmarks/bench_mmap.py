"""A Searcher over 1,000,000 vectors: start-up, memory and query latency, memory-mapped against in memory and float16.

    python benchmarks/bench_mmap.py [--vectors 1000000] [--source DIR] [--workdir /tmp/bench-mmap]

Builds (once) a bundle of ``--vectors`` descriptors: the vectors of a real fit (``--source``, by
default a fit of data/sample made on the spot) repeated with jitter and indexed anew, with the fit's
encoder. Then, in a fresh child process for each mode, side by side in one run: the time from
process start to a Searcher ready (the encoder loaded, the bundle checked), the process's RSS then,
the median and 99th percentile of 300 searches by an indexed image's vector (the default nprobe and
query expansion), and the RSS after them. The same bundle with its index stored in float16
(``--index-dtype float16``) is measured too, with its recall@10 against the float32 index on 1,000
queries. Written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_report import build_bundle  # noqa: E402
from benchmarks.report import machine, rss_mb, sample_fit, write_section  # noqa: E402
from pipeline.bundle.layout import has_bundle  # noqa: E402
from pipeline.search.searcher import SearchOptions


def child(bundle_dir: str, memory_map: bool, started: float) -> None:
    """Start a Searcher, time it and 300 searches, print one JSON line."""
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    searcher = Searcher(Bundle.load(bundle_dir, memory_map=memory_map))
    ready_s, ready_rss = time.time() - started, rss_mb()
    rng = np.random.default_rng(0)
    latencies = []
    for image_id in rng.choice(len(searcher.catalog), 300, replace=False):
        tick = time.perf_counter()
        searcher.search_indexed(int(image_id), SearchOptions(n=10))
        latencies.append((time.perf_counter() - tick) * 1000)
    print(json.dumps({"ready_s": ready_s, "ready_rss_mb": ready_rss, "p50_ms": statistics.median(latencies),
                      "p99_ms": float(np.percentile(latencies, 99)), "after_rss_mb": rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--source", type=Path, help="a fitted artifacts folder whose vectors are repeated")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-mmap"))
    parser.add_argument("--child", nargs=3, metavar=("BUNDLE", "MEMORY_MAP", "STARTED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "1", float(args.child[2]))
        return

    source = args.source or sample_fit(args.workdir / "sample-fit")
    from pipeline.bundle.artifacts import Bundle
    from pipeline.bundle.writer import ArtifactWriter
    from pipeline.index.clustered import ClusteredIndex, recall_at_k

    bundle_dir, half_dir = args.workdir / f"bundle-{args.vectors}", args.workdir / f"bundle-{args.vectors}-float16"
    if not has_bundle(bundle_dir):
        print(f"building a bundle of {args.vectors:,} vectors ...", flush=True)
        build_bundle(source, bundle_dir, args.vectors)
    bundle = Bundle.load(bundle_dir)
    if not has_bundle(half_dir):
        half = Bundle.load(bundle_dir)
        full = half.index
        half.index = ClusteredIndex(full.metric, full.nprobe_, full.expansion, "float16").fit(full.stored_vectors(),
                                                                                          full.centroids_)
        half.manifest.settings.index_dtype = "float16"
        with ArtifactWriter(half_dir) as writer:
            half.save(writer)
    half = Bundle.load(half_dir)
    queries = np.asarray(bundle.embeddings[np.random.default_rng(1).choice(len(bundle.catalog), 1000, replace=False)])
    half_recall = {label: recall_at_k(half.index.search(queries, 10, nprobe).ids,
                                      bundle.index.search(queries, 10, nprobe).ids)
                   for label, nprobe in (("tuned nprobe", None), ("exact search", "all"))}
    results = {}
    for name, folder, flag in (("float32, memory-mapped (default)", bundle_dir, "1"),
                               ("float32, in memory", bundle_dir, "0"),
                               ("float16, memory-mapped", half_dir, "1")):
        output = subprocess.run([sys.executable, __file__, "--child", str(folder), flag, str(time.time())],
                                check=True, capture_output=True, text=True, cwd=ROOT).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    dim, nlist, nprobe = bundle.embeddings.shape[1], bundle.index.nlist, bundle.index.nprobe_
    size_mb = sum(path.stat().st_size for path in bundle.folder.iterdir()) / 2**20
    vectors_mb = {name: (folder / "index_vectors.npy").stat().st_size / 2**20
                  for name, folder in (("float32", bundle.folder), ("float16", half.folder))}
    rows = "\n".join(f"| {name} | {r['ready_s']:.1f} | {r['ready_rss_mb']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['after_rss_mb']:,.0f} |" for name, r in results.items())
    write_section("bench_mmap", f"""
## Search over {args.vectors:,} vectors, memory-mapped and in memory (`python benchmarks/bench_mmap.py`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, one run, each mode in a fresh process (the bundle's files in the
page cache for both). A bundle of {args.vectors:,} descriptors of {dim} values ({size_mb:,.0f} MB on disk; {nlist}
clusters, nprobe {nprobe}, query expansion {bundle.index.expansion}) made by repeating a real fit's vectors with jitter.
"Ready" is process start to a Searcher that can answer (TensorFlow and the encoder loaded, every part of the bundle
checked); searches are by an indexed image's stored vector, n=10, 300 of them.

| index vectors | ready (s) | RSS when ready (MB) | search p50 (ms) | search p99 (ms) | RSS after 300 searches (MB) |
|---|---|---|---|---|---|
{rows}

Memory-mapped, only the pages of the probed clusters are read, and the operating system can drop them again; in
memory, every vector is read at start-up and held. The catalog (paths, labels, hashes as Python objects) is loaded in
every mode and is most of the remaining memory (docs/SCALE.md).

float16 storage: the index's vectors take {vectors_mb['float16']:,.0f} MB instead of {vectors_mb['float32']:,.0f} MB;
recall@10 of the float16 index against the float32 one on 1,000 indexed vectors as queries:
{half_recall['tuned nprobe']:.4f} at the tuned nprobe ({nprobe}), {half_recall['exact search']:.4f} with exact search.
""")


if __name__ == "__main__":
    main()
