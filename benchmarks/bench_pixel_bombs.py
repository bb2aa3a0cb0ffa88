"""Memory of the service under decompression bombs: small PNGs of huge images, uploaded in parallel.

    python benchmarks/bench_pixel_bombs.py [--artifacts artifacts] [--parallel 8] [--side 6300]

One process, the FastAPI app in a test client: ``--parallel`` threads each upload a PNG of
``--side`` x ``--side`` pixels (about 128 KB on disk, under the service's 40-million-pixel limit)
to /api/search, first within the decode budget (the default), then with the budget lifted, each
in a fresh process. Reports the peak RSS above the idle server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, rss_mb, write_section  # noqa: E402


def one_run(artifacts: str, parallel: int, side: int, budget: bool) -> dict:
    """Runs in a child process: upload the bombs, return the memory figures."""
    from fastapi.testclient import TestClient
    from PIL import Image

    import pipeline.data.images as images
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher
    from pipeline.serve.server import create_app
    from pipeline.serve.service import MAX_QUERY_PIXELS

    if not budget:
        images.DECODE_BUDGET = images.PixelBudget(10**15)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buffer, "PNG", optimize=True)
    client = TestClient(create_app(Searcher(Bundle.load(artifacts), max_pixels=MAX_QUERY_PIXELS)))
    client.get("/api/health")
    idle = rss_mb()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(lambda _: client.post(
            "/api/search", files={"image": ("bomb.png", buffer.getvalue(), "image/png")}).status_code, range(parallel)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"budget": budget, "file_kb": len(buffer.getvalue()) // 1024, "statuses": sorted(set(codes)),
            "idle_mb": round(idle), "peak_mb": round(peak), "added_mb": round(peak - idle),
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--side", type=int, default=6300)
    parser.add_argument("--child", choices=("budget", "none"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.artifacts, args.parallel, args.side, args.child == "budget")))
        return
    runs = []
    for child in ("budget", "none"):  # a fresh process each: peak RSS is per process
        output = subprocess.run([sys.executable, __file__, "--artifacts", args.artifacts, "--parallel",
                                 str(args.parallel), "--side", str(args.side), "--child", child],
                                capture_output=True, text=True, check=True, cwd=ROOT).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    rows = "\n".join(f"| {'64 MP decode budget (default)' if r['budget'] else 'no budget'} | "
                     f"{r['statuses']} | {r['idle_mb']} MB | {r['peak_mb']} MB | +{r['added_mb']} MB | {r['seconds']} s |"
                     for r in runs)
    write_section("bench_pixel_bombs", f"""
## Decompression bombs against the service (`python benchmarks/bench_pixel_bombs.py --parallel {args.parallel} --side {args.side}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}. {args.parallel} threads each upload a {runs[0]['file_kb']} KB PNG of
{args.side}x{args.side} pixels ({args.side ** 2 / 1e6:.1f} million, under the service's 40-million limit) at once; each
setting in a fresh process. Decoding runs within a process-wide budget of pixels (64 million at once), the
service's threads share two malloc arenas (so memory one decode frees is reused by the next), and a large image is
box-reduced right after decoding, so every later step works on a small one. Without the reduction, the same 8 bombs
cost about 4.7 GB more (measured once by hand while building this, not by this script).

| decoding | HTTP statuses | RSS idle | peak RSS | added | wall time |
|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
