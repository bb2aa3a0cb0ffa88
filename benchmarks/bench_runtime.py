"""The fitted encoder on LiteRT against Keras, side by side in one run: a cold query, and embedding throughput.

    python benchmarks/bench_runtime.py [--artifacts DIR] [--queries 7] [--images 1000] [--rounds 3]

Fits data/sample with the default settings first when DIR holds no fit. Then, alternating the two
runtimes (``--runtime litert`` and ``--runtime keras``) so that both meet the same machine:

- a cold ``scripts/predict.py --file``: a new process each time, process start to exit, and the
  process's peak RSS;
- embedding throughput in one process: ``--images`` real clothing10 photos through
  ``embed.embed_files`` (decode and embed, as add and sync run it), and the encoder alone on the
  same decoded images, each runtime at its own batch size, in a fresh child process per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.layout import has_bundle  # noqa: E402

RUNTIMES = ("litert", "keras")
QUERY = ROOT / "data" / "sample" / "shoes" / "16fd381e-9da4-493b-aa53-c217eab6bff0.jpg"
CLOTHING = ROOT.parent / "shared" / "data" / "clothing10"

# Run in a child process: embed the images once through embed_files (decode + embed), then time the encoder alone
# on the decoded images. Prints one JSON line.
THROUGHPUT = """
import json, sys, time
import numpy as np
from pipeline.bundle.artifacts import Bundle
from pipeline.data.dataset import decode_to_cache
from pipeline.data.images import find_images
from pipeline.model.embed import embed_files, map_cache
import tempfile

artifacts, runtime, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
bundle = Bundle.load(artifacts)
records = find_images(sys.argv[4])[:count]
encoder = bundle.encoder(runtime)
encoder.encode(np.zeros((encoder.batch_size, encoder.image_size, encoder.image_size, 3), np.uint8))  # warm
start = time.perf_counter()
embedded = embed_files(records, encoder, bundle.settings)
files_s = time.perf_counter() - start
with tempfile.TemporaryDirectory() as scratch:
    decoded = decode_to_cache(records, scratch + "/images.u8", bundle.settings.image_size)
    start = time.perf_counter()
    for _ in map_cache(encoder.encode, decoded.cache, encoder.batch_size, "encode"):
        pass
    encode_s = time.perf_counter() - start
print(json.dumps({"images": len(embedded.records), "files_per_s": len(embedded.records) / files_s,
                  "encoder_per_s": decoded.cache.count / encode_s, "batch": encoder.batch_size}))
"""


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Run a child process to completion: (wall seconds, its peak RSS in MB, its stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed")
    return wall, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/bench-runtime/artifacts"))
    parser.add_argument("--queries", type=int, default=7, help="cold predicts per runtime")
    parser.add_argument("--images", type=int, default=1000, help="clothing10 photos embedded per round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per runtime")
    args = parser.parse_args()

    if not has_bundle(args.artifacts):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(ROOT / "data" / "sample"),
                        "--artifacts", str(args.artifacts)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    cold: dict[str, list[tuple[float, float]]] = {runtime: [] for runtime in RUNTIMES}
    for _ in range(args.queries):
        for runtime in RUNTIMES:
            wall, rss, _ = run_measured([sys.executable, str(ROOT / "scripts" / "predict.py"), "--file", str(QUERY),
                                         "--artifacts", str(args.artifacts), "-n", "5", "--runtime", runtime])
            cold[runtime].append((wall, rss))
    throughput: dict[str, list[dict]] = {runtime: [] for runtime in RUNTIMES}
    for _ in range(args.rounds):
        for runtime in RUNTIMES:
            _, _, output = run_measured([sys.executable, "-c", THROUGHPUT, str(args.artifacts), runtime,
                                         str(args.images), str(CLOTHING)])
            throughput[runtime].append(json.loads(output.strip().splitlines()[-1]))

    figures = {runtime: {
        "cold_predict_s": round(statistics.median(w for w, _ in cold[runtime]), 2),
        "cold_predict_rss_mb": round(statistics.median(r for _, r in cold[runtime])),
        "files_per_s": round(statistics.median(t["files_per_s"] for t in throughput[runtime]), 1),
        "encoder_per_s": round(statistics.median(t["encoder_per_s"] for t in throughput[runtime]), 1),
        "batch": throughput[runtime][0]["batch"],
    } for runtime in RUNTIMES}
    print(json.dumps(figures, indent=2))
    lite, keras = figures["litert"], figures["keras"]

    def row(label: str, key: str, unit: str = "", ratio: bool = True, target: str = "") -> str:
        share = f"{lite[key] / keras[key]:.2f}x" if ratio else ""
        return f"| {label} | {lite[key]}{unit} | {keras[key]}{unit} | {share} | {target} |"

    write_section("bench_runtime", f"""
## LiteRT against Keras (`python benchmarks/bench_runtime.py --queries {args.queries} --images {args.images} --rounds {args.rounds}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, the two runtimes alternating in one run. The encoder
of a default fit of `data/sample` (EfficientNet-Lite0 at 224 px with the orientation block). Cold predict: a new
process each time, `scripts/predict.py --file` (n=5), process start to exit, median of {args.queries}. Throughput: a
fresh process per round, {args.images} clothing10 photos through `embed_files` (decode and embed, as add and sync
run it) and through the encoder alone (already decoded), each runtime at its own batch size, median of
{args.rounds} rounds.

| figure | `--runtime litert` | `--runtime keras` | LiteRT / Keras | target |
|---|---|---|---|---|
{row("cold predict, process start to exit (s)", "cold_predict_s", target="under 1.0 s")}
{row("cold predict, peak RSS (MB)", "cold_predict_rss_mb", target="under 300 MB")}
{row("embed_files: decode and embed (images/s)", "files_per_s", target="1.2x")}
{row("the encoder alone (images/s)", "encoder_per_s", target="1.2x")}
| images a call | {lite['batch']} | {keras['batch']} | | |
""")


if __name__ == "__main__":
    main()
