"""The search service under an open-loop load: requests at a fixed rate (Poisson arrivals), as a crowd sends them.

    python benchmarks/bench_open_loop.py [--artifacts DIR] [--seconds 60] [--loads 0.5,2]

A closed loop (bench_server.py: each client waits for its answer before the next request) cannot
overload a service: the clients slow down with it. A crowd does not. This benchmark first measures
the service's capacity with 100 closed-loop clients (requests per second), then sends uploads of
real sample photos at ``--loads`` times that rate for ``--seconds`` each, every request on its own
schedule whatever the answers, and reports for each rate: the accepted searches' latency (p50, p99)
and throughput against the capacity, the searches refused at once (503 with Retry-After) and how
fast they were refused, any other error, and the service's resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_server import load, resident_mb, start_server  # noqa: E402
from benchmarks.report import machine, write_section  # noqa: E402


async def open_loop(url: str, photos: list[bytes], rate: float, seconds: float) -> list[tuple[int, float]]:
    """(status, ms) of each request, sent at Poisson arrivals of ``rate`` a second for ``seconds``."""
    rng = random.Random(0)
    outcomes: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=4000, max_keepalive_connections=400)

    async def one(client: httpx.AsyncClient, photo: bytes) -> None:
        start = time.perf_counter()
        try:
            response = await client.post("/api/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                                         data={"n": "10"})
            status = response.status_code
            if status == 503 and "retry-after" not in response.headers:
                status = -503  # a refusal without Retry-After counts as an error
        except httpx.HTTPError:
            status = -1
        outcomes.append((status, (time.perf_counter() - start) * 1000))

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        tasks, start, due = [], time.perf_counter(), 0.0
        while due < seconds:
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, rng.choice(photos))))
            due += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return outcomes


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/bench-server/artifacts"))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--loads", default="0.5,2", help="offered rates, as multiples of the measured capacity")
    parser.add_argument("--max-queue-ms", type=float, default=500)
    args = parser.parse_args()
    if not (args.artifacts / "CURRENT").exists():
        raise SystemExit(f"{args.artifacts}: fit data/sample there first (bench_server.py does)")
    photos = [p.read_bytes() for p in sorted((ROOT / "data" / "sample").rglob("*.jpg"))]

    server, url = start_server(args.artifacts, 5.0, "litert", ["--max-queue-ms", str(args.max_queue_ms)])
    try:
        latencies, errors, elapsed = asyncio.run(load(url, photos, 100, 20))
        capacity = len(latencies) / elapsed
        print(f"capacity: {capacity:.1f} requests/s (closed loop, 100 clients, {len(errors)} errors)", flush=True)
        runs = []
        for share in (float(value) for value in args.loads.split(",")):
            before = resident_mb(server.pid)
            outcomes = asyncio.run(open_loop(url, photos, share * capacity, args.seconds))
            after = resident_mb(server.pid)
            accepted = [ms for status, ms in outcomes if status == 200]
            refused = [ms for status, ms in outcomes if status == 503]
            runs.append({
                "load": share, "rate": round(share * capacity, 1), "sent": len(outcomes),
                "accepted": len(accepted), "refused": len(refused),
                "errors": len(outcomes) - len(accepted) - len(refused),
                "accepted_per_s": round(len(accepted) / args.seconds, 1),
                "accepted_share_of_capacity": round(len(accepted) / args.seconds / capacity, 3),
                "p50_ms": round(quantile(accepted, 50), 1), "p99_ms": round(quantile(accepted, 99), 1),
                "refused_p99_ms": round(quantile(refused, 99), 1) if refused else None,
                "rss_before_mb": round(before), "rss_after_mb": round(after),
            })
            print(json.dumps(runs[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = "\n".join(
        f"| {run['load']:g}x ({run['rate']} /s) | {run['sent']:,} | {run['accepted']:,} "
        f"({run['accepted_per_s']} /s, {run['accepted_share_of_capacity']:.0%} of capacity) | {run['p50_ms']:g} ms | "
        f"{run['p99_ms']:g} ms | {run['refused']:,} | {run['refused_p99_ms'] if run['refused_p99_ms'] is not None else '-'}"
        f"{' ms' if run['refused_p99_ms'] is not None else ''} | {run['errors']} | {run['rss_before_mb']} -> "
        f"{run['rss_after_mb']} MB |" for run in runs)
    write_section("bench_open_loop", f"""
## The service under an open-loop load (`python benchmarks/bench_open_loop.py --seconds {args.seconds:g} --loads {args.loads}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only; the load generator and the server share the cores.
The same fit of `data/sample` and uploads as bench_server.py, the encoder on LiteRT with the default batching window
and `--max-queue-ms {args.max_queue_ms:g}`. Capacity, measured first with 100 closed-loop clients for 20 s:
**{capacity:.1f} requests/s**. Then requests arrive at random (Poisson) at a multiple of that rate for {args.seconds:g} s
each, whatever the answers: a search whose expected wait is over the budget is refused at once with 503 and
Retry-After.

| offered load | sent | accepted | accepted p50 | accepted p99 | refused (503) | refused p99 | other errors | server RSS |
|---|---|---|---|---|---|---|---|---|
{rows}

Targets: at half the capacity, p99 under 150 ms and no error; at twice the capacity, the accepted searches' p99
under 1 s, the rest refused within 50 ms, no other error, at least 90% of the capacity served and the RSS within
10% of its start.
""")


if __name__ == "__main__":
    main()
