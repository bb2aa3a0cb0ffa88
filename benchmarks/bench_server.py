"""Load benchmark of the search service: concurrent clients uploading real photos for a fixed time.

    python benchmarks/bench_server.py [--artifacts DIR] [--clients 100] [--seconds 30]

Fits data/sample first when DIR holds no fit. Starts ``scripts/serve.py`` on 127.0.0.1, then each
client posts sample photos to /api/search (n=10) back to back. Reports requests per second, p50
and p99 latency and the error count. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/bench-server/artifacts"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    if not (args.artifacts / "CURRENT").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(ROOT / "data" / "sample"),
                        "--artifacts", str(args.artifacts)], check=True, cwd=ROOT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--artifacts", str(args.artifacts),
                               "--port", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        photos = [p.read_bytes() for p in sorted((ROOT / "data" / "sample").rglob("*.jpg"))]
        latencies, errors, elapsed = asyncio.run(load(url, photos, args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)

    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    figures = {"clients": args.clients, "seconds": round(elapsed, 1), "requests": len(latencies),
               "errors": len(errors), "error_kinds": sorted(set(errors)), "requests_per_s": round(len(latencies) / elapsed, 1),
               "p50_ms": round(quantiles[49], 1), "p99_ms": round(quantiles[98], 1)}
    print(json.dumps(figures, indent=2))
    write_section("bench_server", f"""
## Search service under load (`python benchmarks/bench_server.py --clients {args.clients} --seconds {args.seconds:g}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only; the load generator and the server share the cores.
{args.clients} concurrent clients upload real sample photos (about 30 KB JPEGs) to `POST /api/search` with n=10,
back to back, for {elapsed:.0f} s, against a fit of `data/sample` with the default settings.

| requests | errors | requests per second | p50 latency | p99 latency |
|---|---|---|---|---|
| {len(latencies):,} | {len(errors)} | {figures['requests_per_s']} | {figures['p50_ms']} ms | {figures['p99_ms']} ms |
""")


if __name__ == "__main__":
    main()
