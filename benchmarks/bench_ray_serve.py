"""The index sharded over Ray Serve: 10 million vectors in 4 shards on a local Ray cluster of 3 nodes.

    python benchmarks/bench_ray_serve.py [--vectors 10000000] [--shards 4] [--nprobe 16] [--seconds 60]
                                         [--workdir /tmp/bench-ray-serve]

Builds (once) a bundle by script: ``--vectors`` synthetic 256-value float16 vectors around
4*sqrt(n) random centroids (cosine), laid out by cluster as a fit lays them out, with a catalog of
as many rows and the encoder of a small real fit (data/sample, fitted on the spot). Starts a Ray
cluster of 3 nodes in this machine (``ray.cluster_utils.Cluster``), and the shard deployments of
:mod:`pipeline.serve.ray_server` on it. The driver is the router: :class:`pipeline.search.shards.ShardedIndex`
over the shard deployments, ``--nprobe`` clusters a query.

Measured, in one run: recall@10 of the sharded index against one process's index over the same
files (each query's ids, and against exact search on 20 queries); the latency of routing, fan-out
and merge (a search of n=10, no expansion) at 10 queries/s for ``--seconds``, p50 and p99; each
shard replica's RSS after it; then the same with 2 replicas a shard, one replica of shard 0 killed
a third of the way in: the queries that failed or answered otherwise than one process. Written to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_catalog import build as build_catalog  # noqa: E402
from benchmarks.report import machine, sample_fit, write_section  # noqa: E402

DIM, RATE, EXACT_QUERIES = 256, 10.0, 20
IDLE_S = 5.0  # seconds of no query, to measure Ray's own CPU time


def build_bundle(source: Path, target: Path, vectors: int, seed: int = 0) -> Path:
    """A bundle of ``vectors`` synthetic float16 vectors (see the module's docstring); its folder."""
    from numpy.lib.format import open_memmap

    from pipeline.bundle.layout import (AUTOENCODER, CATALOG, EMBEDDINGS, ENCODER, EXPORT, INDEX, INDEX_VECTORS,
                                        MANIFEST, POINTER, PROBES, current_folder)

    rng = np.random.default_rng(seed)
    nlist = int(4 * np.sqrt(vectors))
    centroids = rng.standard_normal((nlist, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sizes = rng.multinomial(vectors, rng.dirichlet(np.full(nlist, 5.0)))  # clusters of uneven sizes
    folder = target / "bundle-20261207T000000-000000000"
    folder.mkdir(parents=True, exist_ok=True)
    laid_out = open_memmap(folder / INDEX_VECTORS, "w+", np.float16, (vectors, DIM))
    start = 0
    for cluster, size in enumerate(sizes):
        points = centroids[cluster] + rng.standard_normal((size, DIM)).astype(np.float32) * 0.06
        laid_out[start : start + size] = points / np.linalg.norm(points, axis=1, keepdims=True)
        start += size
    laid_out.flush()
    del laid_out
    open_memmap(folder / EMBEDDINGS, "w+", np.float32, (vectors, DIM))  # only its shape is read: a sparse file
    np.savez(folder / INDEX, metric=np.array("cosine"), centroids=centroids,
             assignments=np.repeat(np.arange(nlist, dtype=np.int32), sizes), norms=np.ones(vectors, np.float32),
             nprobe=np.array(16), expansion=np.array(0))
    build_catalog(folder / CATALOG, vectors)
    fitted = current_folder(source)
    for name in (ENCODER, EXPORT, AUTOENCODER, PROBES):
        shutil.copy(fitted / name, folder / name)
    manifest = json.loads((fitted / MANIFEST).read_text())
    manifest.update(images=vectors, next_id=vectors, skipped=[], changes=[])
    manifest["settings"]["index_dtype"] = "float16"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (target / POINTER).write_text(folder.name + "\n")
    return folder


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The ``k`` nearest rows of ``vectors`` (memory-mapped float16, unit) to each query, by brute force."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), 1 << 20):
        scores = queries @ np.asarray(vectors[start : start + (1 << 20)], np.float32).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, ids = np.concatenate([best_scores, scores], axis=1), np.concatenate([best_ids, ids], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    return best_ids


def kill_a_replica() -> None:
    """Kill one replica of shard 0 (Ray Serve starts another)."""
    import ray

    replica = next(actor for actor in ray.util.list_named_actors(all_namespaces=True) if "shard-0" in actor["name"])
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)


def deploy(shards: int, replicas: int) -> list:
    """The shard deployments, each its own Serve application (no HTTP): their handles."""
    from ray import serve

    from pipeline.serve.ray_server import SHARD_ACTOR_OPTIONS, ShardReplica, direct

    handles = []
    for shard in range(shards):
        name = f"shard-{shard}"
        deployment = serve.deployment(ShardReplica, name=name).options(num_replicas=replicas,
                                                                       ray_actor_options=SHARD_ACTOR_OPTIONS)
        serve.run(deployment.bind(shard, shards), name=name, route_prefix=None,
                  logging_config={"log_level": "WARNING"})  # as serve --ray runs them
        handles.append(direct(serve.get_deployment_handle(name, app_name=name)))  # as the router calls them
    return handles


def timed_run(index, queries: np.ndarray, nprobe: int, seconds: float, expected: dict, kill=None) -> dict:
    """Searches at RATE a second for ``seconds`` (each in its own thread, an open loop); latencies, failures."""
    latencies, failures, threads = [], [], []
    lock = threading.Lock()

    def one(number: int) -> None:
        query = queries[number % len(queries)]
        tick = time.perf_counter()
        try:
            ids = index.search(query[None], 10, nprobe).ids[0]
        except Exception as exc:  # noqa: BLE001  (counted: a failed query)
            with lock:
                failures.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            return
        with lock:
            latencies.append((time.perf_counter() - tick) * 1000)
            if not np.array_equal(ids, expected[number % len(queries)]):
                failures.append("an answer not one process's")

    started, number = time.perf_counter(), 0
    while (due := number / RATE) < seconds:
        time.sleep(max(0.0, started + due - time.perf_counter()))
        if kill is not None and due >= seconds / 3:
            kill()
            kill = None
        thread = threading.Thread(target=one, args=(number,))
        thread.start()
        threads.append(thread)
        number += 1
    for thread in threads:
        thread.join()
    return {"queries": number, "p50_ms": statistics.median(latencies), "p99_ms": float(np.percentile(latencies, 99)),
            "failures": failures}


def busy_jiffies() -> tuple[int, int]:
    """This machine's CPU time, in clock ticks from /proc/stat: spent running its processes (user, nice, system,
    interrupts), and in all (with idle, I/O wait and the time a hypervisor took: steal)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:9])
    busy = user + nice + system + irq + softirq  # guest time is counted in user already
    return busy, busy + idle + iowait + steal


def parts(whole, sharded, shard, queries: np.ndarray, nprobe: int) -> dict:
    """Where a query's time goes, one query at a time (medians, ms): routing; a call to shard 0 with
    nothing to scan (Ray Serve's round trip); with its share of the probed clusters; a whole search,
    and the CPU time every process of the machine spent on it (busy ticks over the searches, a query's share)."""
    def median_ms(step, arguments=None) -> float:
        times = []
        for argument in [query[None] for query in queries[:100]] if arguments is None else arguments:
            tick = time.perf_counter()
            step(argument)
            times.append((time.perf_counter() - tick) * 1000)
        return statistics.median(times)

    def own(query):
        probed = whole.route(query, nprobe)
        return np.where(sharded.owner_[probed] == 0, probed, whole.nlist)

    folder = sharded.folder
    owned = [(query[None], own(query[None])) for query in queries[:100]]  # routed before the calls are timed
    figures = {"route_ms": median_ms(lambda query: whole.route(query, nprobe)),
               "empty_call_ms": median_ms(lambda query: shard.scan.remote(folder, query,
                                                                           np.full((1, nprobe), whole.nlist),
                                                                           10).result()),
               "own_call_ms": median_ms(lambda asked: shard.scan.remote(folder, *asked, 10).result(), owned)}
    busy, total = busy_jiffies()
    time.sleep(IDLE_S)
    idle_busy, idle_total = busy_jiffies()
    tick = time.perf_counter()
    figures["search_ms"] = median_ms(lambda query: sharded.search(query, 10, nprobe))
    elapsed_s = time.perf_counter() - tick
    busy_after, total_after = busy_jiffies()
    figures["idle_share"] = (idle_busy - busy) / max(1, idle_total - total)  # Ray's own work with no query
    figures["busy_share"] = (busy_after - idle_busy) / max(1, total_after - idle_total)
    searching = (busy_after - idle_busy) / os.sysconf("SC_CLK_TCK") - figures["idle_share"] * os.cpu_count() * elapsed_s
    figures["cpu_ms"] = searching * 1000 / min(100, len(queries))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ray-serve"))
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from pipeline.bundle.artifacts import load_index
    from pipeline.bundle.layout import current_folder, has_bundle
    from pipeline.serve.ray_server import fan_out
    from pipeline.search.shards import ShardedIndex

    source, artifacts = sample_fit(args.workdir / "sample-fit"), args.workdir / f"artifacts-{args.vectors}"
    if not has_bundle(artifacts):
        print(f"building a bundle of {args.vectors:,} vectors ...", flush=True)
        build_bundle(source, artifacts, args.vectors)
    folder = current_folder(artifacts)
    whole = load_index(folder, check_vectors=False)  # one process's index over the same files
    rng = np.random.default_rng(1)
    rows = rng.choice(whole.size, 300, replace=False)
    queries = np.asarray(whole.vectors_[rows], np.float32) + rng.standard_normal((300, DIM)).astype(np.float32) * 0.03
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print("one process's answers ...", flush=True)
    expected = {number: whole.search(query[None], 10, args.nprobe).ids[0] for number, query in enumerate(queries)}
    exact = exact_neighbours(whole.vectors_, queries[:EXACT_QUERIES])
    exact_ids = whole.ids_[exact]  # rows of the laid-out vectors to the index's ids
    recall_one = float(np.mean([len(set(expected[i]) & set(exact_ids[i])) / 10 for i in range(EXACT_QUERIES)]))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    for _ in range(2):
        cluster.add_node(num_cpus=4)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray").setLevel(logging.ERROR)  # Serve's notices of each deployment and of the killed replica
    serve.start(logging_config={"log_level": "WARNING"})
    results = {}
    try:
        for replicas in (1, 2):
            handles = deploy(args.shards, replicas)
            sharded = ShardedIndex(whole, folder, args.shards, fan_out(handles))
            print(f"{replicas} replica(s) a shard: loading the shards ...", flush=True)
            tick = time.time()
            found = {number: sharded.search(query[None], 10, args.nprobe).ids[0] for number, query in enumerate(queries)}
            loaded_s = time.time() - tick
            same = all(np.array_equal(found[i], expected[i]) for i in expected)
            recall = float(np.mean([len(set(found[i]) & set(exact_ids[i])) / 10 for i in range(EXACT_QUERIES)]))
            run = timed_run(sharded, queries, args.nprobe, args.seconds, expected, kill_a_replica if replicas == 2 else None)
            memory = [handle.memory.remote().result() for handle in handles]
            results[replicas] = {**run, "same": same, "recall": recall, "loaded_s": loaded_s, "memory": memory,
                                 **(parts(whole, sharded, handles[0], queries, args.nprobe) if replicas == 1 else {})}
            print(replicas, {key: value for key, value in results[replicas].items() if key != "failures"},
                  results[replicas]["failures"][:3], flush=True)
            for shard in range(args.shards):
                serve.delete(f"shard-{shard}")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()

    one, two = results[1], results[2]
    sizes = ShardedIndex(whole, folder, args.shards, None).shard_sizes()
    rows_md = "\n".join(f"| {s['shard']} | {s['clusters']:,} | {s['vectors']:,} | {m['rss_mb']:,.0f} "
                        f"({m['anonymous_mb']:,.0f} + {m['file_pages_mb']:,.0f}) |"
                        for s, m in zip(sizes, one["memory"]))
    markdown = f"""
{args.vectors:,} synthetic float16 vectors of {DIM} values (a bundle made by the script: {whole.nlist:,} clusters of
uneven sizes, cosine), {args.shards} shards on a local Ray cluster of 3 nodes (`ray.cluster_utils.Cluster`, 4 logical
CPUs each) on {machine()}. The driver routes ({args.nprobe} clusters a query), fans out to the shards owning them
through Ray Serve handles and merges (`ShardedIndex`); n=10, no expansion; {len(queries)} queries (indexed vectors
with noise) sent at {RATE:g} a second, each in its own thread, for {args.seconds:g} s.

| figure | 1 replica a shard | 2 replicas a shard, one of shard 0 killed at {args.seconds / 3:g} s | target |
|---|---|---|---|
| answers equal to one process's (ids, every query) | {one['same']} | {two['same']} | identical |
| recall@10 against exact search ({EXACT_QUERIES} queries); one process: {recall_one:.3f} | {one['recall']:.3f} | {two['recall']:.3f} | equal to one process's |
| routing + fan-out + merge, p50 (ms) | {one['p50_ms']:.1f} | {two['p50_ms']:.1f} | < 20 |
| routing + fan-out + merge, p99 (ms) | {one['p99_ms']:.1f} | {two['p99_ms']:.1f} | < 60 |
| failed or different queries of {one['queries']} | {len(one['failures'])} | {len(two['failures'])} | 0 |
| first pass over the {len(queries)} queries, shards loading the bundle (s) | {one['loaded_s']:.1f} | {two['loaded_s']:.1f} | |

Where the time goes (1 replica a shard, one query at a time, medians): routing {one['route_ms']:.1f} ms; a call to one
shard with nothing to scan (Ray Serve's round trip) {one['empty_call_ms']:.1f} ms; with its share of the probed
clusters {one['own_call_ms']:.1f} ms; a whole search {one['search_ms']:.1f} ms. The machine's {os.cpu_count()} cores
were {one['idle_share']:.0%} busy with no query (Ray's own processes of 3 nodes) and {one['busy_share']:.0%} while
searching, one query after another: a search took {one['cpu_ms']:.1f} ms of CPU time beyond the idle work, in the
driver, the shards and Ray's processes, so that it cannot take less than {one['cpu_ms'] / os.cpu_count():.1f} ms of
wall time here however fast the scan.

RSS of each shard replica after the run with 1 replica a shard (anonymous memory, its clusters' vectors read into
it, + mapped file pages, in MB); target < 2,000:

| shard | clusters | vectors | RSS (MB) |
|---|---|---|---|
{rows_md}
"""
    print(markdown)
    write_section("bench_ray_serve", markdown)


if __name__ == "__main__":
    main()
