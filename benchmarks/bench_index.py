"""The routed index beside exact search and FAISS IndexIVFFlat, on the same vectors in one run.

    python benchmarks/bench_index.py --n 1000000 --dim 64 --queries 1000 [--embeddings PATH] [--json]

Data sets: a Gaussian mixture of ``--n`` x ``--dim`` float32 (clustered like real embeddings,
euclidean), and, with ``--embeddings``, a fit's embeddings.npy (cosine, as the pipeline searches
them; queries are indexed vectors, so recall there includes each query's own entry). For each
method: recall@10 against exact search, throughput of one batch of ``--queries`` queries,
single-query p50 and p99 latency, build time and index memory. FAISS (faiss-cpu) is only needed
here, never at run time.
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
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.index.cluster import choose_cluster_count, fit_kmeans  # noqa: E402
from pipeline.index.clustered import ClusteredIndex, prepare_vectors, recall_at_k  # noqa: E402

NPROBES = (1, 2, 4, 8, 16, 32, 64)
SINGLE_QUERIES = 200
BATCH_REPEATS = 3
K = 10


def gaussian_mixture(n: int, dim: int, seed: int = 0, centers: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (centers, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        out[start:stop] = means[rng.integers(0, centers, stop - start)] + rng.normal(0, 0.6, (stop - start, dim))
    return out


def exact_search(vectors: np.ndarray, queries: np.ndarray, metric: str) -> tuple[np.ndarray, float]:
    """Brute force with BLAS, queries in chunks: (ids of the K nearest, seconds)."""
    start = time.perf_counter()
    norms = np.einsum("ij,ij->i", vectors, vectors)
    ids = []
    for chunk in np.array_split(queries, max(1, len(queries) // 64)):
        scores = chunk @ vectors.T
        distances = -scores if metric == "cosine" else norms[None, :] - 2 * scores
        top = np.argpartition(distances, K, axis=1)[:, :K]
        ids.append(np.take_along_axis(top, np.take_along_axis(distances, top, 1).argsort(1), 1))
    return np.concatenate(ids), time.perf_counter() - start


def timed_batch(search) -> tuple[np.ndarray, float]:
    """Ids found by one batch search, and the median seconds of BATCH_REPEATS runs of it."""
    seconds = []
    for _ in range(BATCH_REPEATS):
        start = time.perf_counter()
        found = search()
        seconds.append(time.perf_counter() - start)
    return found, float(np.median(seconds))


def timed_single(search, queries: np.ndarray) -> tuple[float, float]:
    latencies = []
    for query in queries[:SINGLE_QUERIES]:
        start = time.perf_counter()
        search(query[None])
        latencies.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def bench(name: str, vectors: np.ndarray, queries: np.ndarray, metric: str) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(2)
    vectors, queries = prepare_vectors(vectors, metric), prepare_vectors(queries, metric)
    raw_bytes = vectors.nbytes
    nlist = choose_cluster_count(len(vectors))
    print(f"[{name}] {len(vectors):,} x {vectors.shape[1]}, {metric}, nlist {nlist}", flush=True)
    truth, exact_s = exact_search(vectors, queries, metric)
    rows = [{"dataset": name, "method": "exact", "nprobe": None, "nlist": None, "recall_at_10": 1.0,
             "batch_qps": len(queries) / exact_s, "p50_ms": None, "p99_ms": None, "build_s": 0.0,
             "memory_bytes": raw_bytes}]
    rows[0]["p50_ms"], rows[0]["p99_ms"] = timed_single(lambda q: exact_search(vectors, q, metric), queries[:50])

    start = time.perf_counter()
    ours = ClusteredIndex(metric).fit(vectors, fit_kmeans(vectors, nlist, seed=0))
    ours_build = time.perf_counter() - start
    ours_bytes = sum(getattr(ours, a).nbytes for a in ("vectors_", "ids_", "norms_", "offsets_", "centroids_", "assignments_"))
    print(f"[{name}] routed index built in {ours_build:.1f} s", flush=True)

    start = time.perf_counter()
    if metric == "cosine":
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(vectors.shape[1]), vectors.shape[1], nlist)
    ivf.train(vectors)
    ivf.add(vectors)
    faiss_build = time.perf_counter() - start
    faiss_bytes = ivf.ntotal * (vectors.shape[1] * 4 + 8) + nlist * vectors.shape[1] * 4
    print(f"[{name}] faiss IndexIVFFlat built in {faiss_build:.1f} s", flush=True)

    ours.search(queries[:2], K, 2)  # compile (or load) the scan kernels before timing
    for nprobe in [p for p in NPROBES if p <= nlist]:
        found, batch_s = timed_batch(lambda: ours.search(queries, K, nprobe).ids)
        p50, p99 = timed_single(lambda q: ours.search(q, K, nprobe), queries)
        rows.append({"dataset": name, "method": "routed", "nprobe": nprobe, "nlist": nlist,
                     "recall_at_10": recall_at_k(found, truth), "batch_qps": len(queries) / batch_s, "p50_ms": p50,
                     "p99_ms": p99, "build_s": ours_build, "memory_bytes": ours_bytes})
        ivf.nprobe = nprobe
        found, batch_s = timed_batch(lambda: ivf.search(queries, K)[1])
        p50, p99 = timed_single(lambda q: ivf.search(q, K), queries)
        rows.append({"dataset": name, "method": "faiss-ivfflat", "nprobe": nprobe, "nlist": nlist,
                     "recall_at_10": recall_at_k(found, truth), "batch_qps": len(queries) / batch_s, "p50_ms": p50,
                     "p99_ms": p99, "build_s": faiss_build, "memory_bytes": faiss_bytes})
        print(f"[{name}] nprobe {nprobe}: routed {rows[-2]['recall_at_10']:.3f} @ {rows[-2]['batch_qps']:,.0f} qps, "
              f"faiss {rows[-1]['recall_at_10']:.3f} @ {rows[-1]['batch_qps']:,.0f} qps", flush=True)
    return rows


def summary(rows: list[dict], raw_bytes: int) -> str:
    """The target checks: recall >= 0.95 at the smallest nprobe of each method, side by side."""
    exact = next(r for r in rows if r["method"] == "exact")
    best = {m: next((r for r in rows if r["method"] == m and r["recall_at_10"] >= 0.95), None)
            for m in ("routed", "faiss-ivfflat")}
    ours, theirs = best["routed"], best["faiss-ivfflat"]
    if ours is None:
        return "routed search did not reach recall@10 0.95 at any nprobe measured"
    lines = [f"- recall@10 >= 0.95 first at nprobe {ours['nprobe']}: {ours['batch_qps'] / exact['batch_qps']:.1f}x "
             f"the batch throughput of exact search (target 10x)"]
    if theirs:
        lines.append(f"- at recall >= 0.95, routed (nprobe {ours['nprobe']}) / FAISS IVFFlat (nprobe {theirs['nprobe']}) "
                     f"batch throughput: {ours['batch_qps'] / theirs['batch_qps']:.2f} (target >= 1.0)")
    lines.append(f"- single-query p50 at that nprobe: {ours['p50_ms']:.2f} ms (target under 5 ms)")
    lines.append(f"- build: {ours['build_s']:.1f} s (target under 120 s); memory {ours['memory_bytes'] / raw_bytes:.2f}x "
                 f"the raw vectors (target under 1.2x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--embeddings", type=Path, help="a fit's embeddings.npy, benchmarked as a second data set")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    args = parser.parse_args()

    data = gaussian_mixture(args.n + args.queries, args.dim)
    sets = [(f"gaussian-mixture {args.n:,}x{args.dim}", data[: args.n], data[args.n :], "euclidean")]
    if args.embeddings:
        real = np.load(args.embeddings).astype(np.float32)
        picks = np.random.default_rng(1).choice(len(real), min(args.queries, len(real)), replace=False)
        sets.append((f"{args.embeddings.parent.parent.name} embeddings {real.shape[0]:,}x{real.shape[1]}", real,
                     real[picks], "cosine"))
    sections, all_rows = [], []
    for name, vectors, queries, metric in sets:
        rows = bench(name, vectors, queries, metric)
        all_rows += rows
        table = "\n".join(
            f"| {r['method']} | {r['nprobe'] or '-'} | {r['recall_at_10']:.3f} | {r['batch_qps']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['build_s']:.1f} | {r['memory_bytes'] / 2**20:,.0f} |"
            for r in rows)
        sections.append(f"### {name} ({metric}, nlist {rows[1]['nlist']}, {len(queries):,} queries)\n\n"
                        "| method | nprobe | recall@10 | batch qps | p50 ms | p99 ms | build s | memory MiB |\n"
                        f"|---|---|---|---|---|---|---|---|\n{table}\n\n{summary(rows, vectors.nbytes)}\n")
    command = f"python benchmarks/bench_index.py --n {args.n} --dim {args.dim} --queries {args.queries}" + (
        f" --embeddings {args.embeddings}" if args.embeddings else "")
    write_section("bench_index", f"""
## Routed index beside exact search and FAISS (`{command}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, in one run; FAISS {__import__('faiss').__version__} with 2 threads.
Batch qps: one batch of all queries, median of {BATCH_REPEATS} runs. p50/p99: {SINGLE_QUERIES} single-query calls. Exact search is brute force with
numpy/BLAS.

{chr(10).join(sections)}""")
    if args.json:
        print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in all_rows]))


if __name__ == "__main__":
    main()
