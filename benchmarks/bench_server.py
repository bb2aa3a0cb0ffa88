"""Load benchmark of the search service: concurrent clients uploading real photos for a fixed time.

    python benchmarks/bench_server.py [--artifacts DIR] [--clients 100] [--seconds 30] [--windows 0,5]
                                      [--runtimes litert,keras] [--no-locust]

Fits data/sample first when DIR holds no fit. For each runtime of the encoder (``serve --runtime``)
and each batching window (``serve --batch-window-ms``; 0 = every query encoded alone), starts
``scripts/serve.py`` on 127.0.0.1, notes its resident memory once it answers (idle), and has each
client post sample photos to /api/search (n=10) back to back, then has Locust (a real load tool,
``pip install locust``) do the same as a second opinion. Reports requests per second, p50 and p99
latency, the error count and the server's idle RSS of every run, side by side. Client and server
share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.layout import has_bundle  # noqa: E402

MAX_REQUESTS = 200_000  # a bound on the loop besides the time limit


async def client_loop(client: httpx.AsyncClient, photos: list[bytes], stop_at: float, latencies: list, errors: list):
    rng = random.Random(len(latencies))
    while time.monotonic() < stop_at and len(latencies) + len(errors) < MAX_REQUESTS:
        start = time.perf_counter()
        try:
            response = await client.post("/api/search", files={"image": ("q.jpg", rng.choice(photos), "image/jpeg")},
                                         data={"n": "10"})
            if response.status_code == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors.append(f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)


async def load(url: str, photos: list[bytes], clients: int, seconds: float) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(client, photos, start + seconds, latencies, errors) for _ in range(clients)))
        elapsed = time.monotonic() - start
    return latencies, errors, elapsed


def resident_mb(pid: int) -> float:
    """A process's resident memory now (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(artifacts: Path, window_ms: float, runtime: str, flags: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--artifacts", str(artifacts),
                               "--port", str(port), "--batch-window-ms", str(window_ms), "--runtime", runtime, *flags],
                              cwd=ROOT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.5)


def own_client(url: str, clients: int, seconds: float) -> dict:
    photos = [p.read_bytes() for p in sorted((ROOT / "data" / "sample").rglob("*.jpg"))]
    latencies, errors, elapsed = asyncio.run(load(url, photos, clients, seconds))
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"tool": "bench_server.py", "requests": len(latencies), "errors": len(errors),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(quantiles[49], 1),
            "p99_ms": round(quantiles[98], 1)}


def locust(url: str, clients: int, seconds: float, workdir: Path) -> dict:
    """The same load from Locust, headless; its aggregated CSV row."""
    prefix = workdir / "locust"
    subprocess.run(["locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless", "-u", str(clients),
                    "-r", str(clients), "-t", f"{seconds:g}s", "--host", url, "--csv", str(prefix), "--only-summary",
                    "--loglevel", "ERROR"], check=False, cwd=ROOT, capture_output=True, timeout=seconds + 120)
    with open(f"{prefix}_stats.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    return {"tool": "Locust", "requests": int(row["Request Count"]) - int(row["Failure Count"]),
            "errors": int(row["Failure Count"]), "requests_per_s": round(float(row["Requests/s"]), 1),
            "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/bench-server/artifacts"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--windows", default="0,5", help="encoder batching windows to compare, in ms")
    parser.add_argument("--runtimes", default="litert,keras", help="what runs the encoder (serve --runtime)")
    parser.add_argument("--max-queue-ms", type=float, default=60_000,
                        help="serve --max-queue-ms: high, so that closed-loop clients measure throughput, not the "
                             "admission limit (benchmarks/bench_open_loop.py measures that)")
    parser.add_argument("--no-locust", action="store_true", help="the project's own load generator only")
    args = parser.parse_args()

    if not has_bundle(args.artifacts):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(ROOT / "data" / "sample"),
                        "--artifacts", str(args.artifacts)], check=True, cwd=ROOT)
    runs = []
    for runtime in args.runtimes.split(","):
        for window in (float(w) for w in args.windows.split(",")):
            server, url = start_server(args.artifacts, window, runtime, ["--max-queue-ms", f"{args.max_queue_ms:g}"])
            idle = resident_mb(server.pid)
            tools = [lambda: own_client(url, args.clients, args.seconds)]
            if not args.no_locust:
                tools.append(lambda: locust(url, args.clients, args.seconds, args.artifacts.parent))
            try:
                for measure in tools:
                    runs.append({"runtime": runtime, "window_ms": window, "idle_rss_mb": round(idle), **measure()})
                    print(json.dumps(runs[-1]), flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)

    rows = "\n".join(f"| {run['runtime']} | {run['window_ms']:g} ms | {run['tool']} | {run['requests']:,} | "
                     f"{run['errors']} | {run['requests_per_s']} | {run['p50_ms']:g} ms | {run['p99_ms']:g} ms | "
                     f"{run['idle_rss_mb']} MB |" for run in runs)
    write_section("bench_server", f"""
## Search service under load (`python benchmarks/bench_server.py --clients {args.clients} --seconds {args.seconds:g} --windows {args.windows} --runtimes {args.runtimes}{' --no-locust' if args.no_locust else ''}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, all runs one after the other in one run; the load
generator and the server share the cores. {args.clients} concurrent clients upload real sample photos (about 30 KB
JPEGs) to `POST /api/search` with n=10, back to back, for {args.seconds:g} s each, against a fit of `data/sample` with
the default settings (the EfficientNet-Lite0 backbone at 224 px). The runtime is `serve --runtime`: the encoder's
LiteRT export (the default) or its Keras model. The batching window is `serve --batch-window-ms`: 0 encodes every
query alone behind one lock, 5 (the default) encodes the queries that arrive within 5 ms of each other in one call
(first come first served), from one thread, so LiteRT's interpreter (not thread-safe) needs no more than the one
lock either way. The admission limit is set out of the way (`--max-queue-ms {args.max_queue_ms:g}`): closed-loop
clients wait for their answer anyway, and refusing them would measure the limit, not the throughput (the open-loop
benchmark measures the limit). Idle RSS: the server's resident memory once it first answers.

| runtime | batching window | load tool | requests | errors | requests per second | p50 latency | p99 latency | idle RSS |
|---|---|---|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
