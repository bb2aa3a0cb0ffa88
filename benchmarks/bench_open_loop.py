"""The search service under an open-loop load: requests at a fixed rate (Poisson arrivals), as a crowd sends them.

    python benchmarks/bench_open_loop.py [--artifacts DIR] [--seconds 60] [--loads 0.5,2]

A closed loop (bench_server.py: each client waits for its answer before the next request) cannot
overload a service: the clients slow down with it. A crowd does not. This benchmark first measures
the service's capacity with ``--capacity-clients`` closed-loop clients (searches answered a
second while the service is never idle), then sends uploads of
real sample photos at ``--loads`` times that rate for ``--seconds`` each, every request on its own
schedule whatever the answers, and reports for each rate: the accepted searches' latency (p50, p99)
and throughput against the capacity, the searches refused at once (503 with Retry-After) and how
fast they were refused, any other error, and the service's resident memory before and after. The
requests are sent by a small HTTP/1.1 client of its own (:class:`RawClient`), which costs the
shared cores far less than an HTTP library would.
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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_server import resident_mb, start_server  # noqa: E402
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.serve.server import SEARCH_THREADS  # noqa: E402

BOUNDARY = "imgsim-open-loop-boundary"


class RawClient:
    """HTTP/1.1 over asyncio streams, each request's bytes built once before the run: a load generator
    that costs the machine far less per request than an HTTP library, so that on a machine it shares
    with the service the figures are the service's. Connections are kept alive and reused (one per
    request in flight); one the server has closed is not reused."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, request: bytes) -> tuple[int, dict[bytes, bytes]]:
        """The status and headers of the answer to ``request`` (its body read and dropped)."""
        while self.idle and self.idle[-1][0].at_eof():  # closed by the server since (as HTTP libraries check too)
            self.idle.pop()[1].close()
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(lines[0].split(b" ", 2)[1]), headers

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def search_requests(url: str, photos: list[bytes]) -> list[bytes]:
    """A multipart upload search (n=10) of each photo, as the bytes of a whole HTTP request."""
    address = urlsplit(url).netloc
    requests = []
    for photo in photos:
        body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + (
                f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="n"\r\n\r\n10\r\n--{BOUNDARY}--\r\n'
                ).encode()
        head = (f"POST /api/search HTTP/1.1\r\nHost: {address}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


async def timed(client: RawClient, request: bytes, outcomes: list[tuple[int, float]]) -> None:
    """Send one request; record (status, ms): -503 for a refusal without Retry-After, -1 for a failure."""
    start = time.perf_counter()
    try:
        status, headers = await asyncio.wait_for(client.send(request), 60)
        if status == 503 and b"retry-after" not in headers:
            status = -503
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        status = -1
    outcomes.append((status, (time.perf_counter() - start) * 1000))


async def closed_loop(url: str, requests: list[bytes], clients: int, seconds: float) -> float:
    """Searches answered a second by ``clients`` clients that each wait for an answer before asking again."""
    split = urlsplit(url)
    client, outcomes, rng = RawClient(split.hostname, split.port), [], random.Random(1)
    stop = time.perf_counter() + seconds

    async def one_client() -> None:
        while time.perf_counter() < stop:
            await timed(client, rng.choice(requests), outcomes)

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    client.close()
    return sum(1 for status, _ in outcomes if status == 200) / elapsed


async def open_loop(url: str, requests: list[bytes], rate: float, seconds: float) -> list[tuple[int, float]]:
    """(status, ms) of each request, sent at Poisson arrivals of ``rate`` a second for ``seconds``."""
    split = urlsplit(url)
    client, outcomes, rng = RawClient(split.hostname, split.port), [], random.Random(0)
    tasks, start, due = [], time.perf_counter(), 0.0
    while due < seconds:
        await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        tasks.append(asyncio.create_task(timed(client, rng.choice(requests), outcomes)))
        due += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    client.close()
    return outcomes


def verdict(run: dict) -> str:
    """Whether a run met the issue's targets for its load (half the capacity; twice it or more)."""
    if run["load"] <= 0.5:
        missed = [name for name, ok in (("p99", run["p99_ms"] < 150), ("errors", run["errors"] == 0)) if not ok]
    elif run["load"] >= 2:
        missed = [name for name, ok in (
            ("p99", run["p99_ms"] < 1000), ("refusals' p99", (run["refused_p99_ms"] or 0) < 50),
            ("errors", run["errors"] == 0), ("throughput", run["accepted_share_of_capacity"] >= 0.9),
            ("RSS", run["rss_after_mb"] <= 1.1 * run["rss_before_mb"])) if not ok]
    else:
        return "-"
    return "met" if not missed else "missed: " + ", ".join(missed)


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/bench-server/artifacts"))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--loads", default="0.5,2", help="offered rates, as multiples of the measured capacity")
    parser.add_argument("--max-queue-ms", type=float, default=500)
    parser.add_argument("--capacity-clients", type=int, default=16,
                        help="closed-loop clients that measure the capacity")
    args = parser.parse_args()
    if not (args.artifacts / "CURRENT").exists():
        raise SystemExit(f"{args.artifacts}: fit data/sample there first (bench_server.py does)")
    photos = [p.read_bytes() for p in sorted((ROOT / "data" / "sample").rglob("*.jpg"))]

    server, url = start_server(args.artifacts, 5.0, "litert", ["--max-queue-ms", str(args.max_queue_ms)])
    try:
        requests = search_requests(url, photos)
        capacity = asyncio.run(closed_loop(url, requests, args.capacity_clients, 20))
        print(f"capacity: {capacity:.1f} requests/s (closed loop, {args.capacity_clients} clients)", flush=True)
        runs = []
        for share in (float(value) for value in args.loads.split(",")):
            before = resident_mb(server.pid)
            outcomes = asyncio.run(open_loop(url, requests, share * capacity, args.seconds))
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
            print(json.dumps(runs[-1]), verdict(runs[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = "\n".join(
        f"| {run['load']:g}x ({run['rate']} /s) | {run['sent']:,} | {run['accepted']:,} "
        f"({run['accepted_per_s']} /s, {run['accepted_share_of_capacity']:.0%} of capacity) | {run['p50_ms']:g} ms | "
        f"{run['p99_ms']:g} ms | {run['refused']:,} | {run['refused_p99_ms'] if run['refused_p99_ms'] is not None else '-'}"
        f"{' ms' if run['refused_p99_ms'] is not None else ''} | {run['errors']} | {run['rss_before_mb']} -> "
        f"{run['rss_after_mb']} MB | {verdict(run)} |" for run in runs)
    write_section("bench_open_loop", f"""
## The service under an open-loop load (`python benchmarks/bench_open_loop.py --seconds {args.seconds:g} --loads {args.loads}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only; the load generator and the server share the cores
(the generator is a small HTTP client with each request's bytes built before the run, so that it takes little of
them). The same fit of `data/sample` and uploads as bench_server.py, the encoder on LiteRT with the default batching
window, `--max-queue-ms {args.max_queue_ms:g}`, searches in at most {SEARCH_THREADS} threads. Capacity, measured first
with {args.capacity_clients} closed-loop clients for 20 s: **{capacity:.1f} searches/s**. Then requests arrive at random
(Poisson) at a multiple of that rate for {args.seconds:g} s each, whatever the answers: a search whose expected wait
is over the budget is refused at once with 503 and Retry-After.

| offered load | sent | accepted | accepted p50 | accepted p99 | refused (503) | refused p99 | other errors | server RSS | targets |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Targets: at half the capacity, p99 under 150 ms and no error; at twice the capacity, the accepted searches' p99
under 1 s, the rest refused within 50 ms, no other error, at least 90% of the capacity served and the RSS within
10% of its start.
""")


if __name__ == "__main__":
    main()
