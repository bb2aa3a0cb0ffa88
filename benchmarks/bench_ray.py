"""Embedding on Ray: images a second in one process and on a local Ray cluster with 1 and 2 encoder workers.

    python benchmarks/bench_ray.py [--images 5000] [--small 200] [--workdir /tmp/bench-ray]

The same 512x512 JPEGs as bench_fit.py, embedded with the encoder of a default fit of ``--small`` of
them, side by side in one run: ``LocalEngine.embed`` in this process, then ``RayEngine.embed`` on a
local cluster of this machine's cores with 1 and 2 actors (one CPU and one TensorFlow thread
each). Each is timed on ``--images`` and on ``--small`` images; the difference gives the rate
without Ray's fixed start-up (actors loading TensorFlow and the encoder), and that start-up.
Parallel efficiency = rate with 2 workers / (2 x rate with 1). Written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_fit import build_folder  # noqa: E402
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.layout import has_bundle  # noqa: E402


def timed(embed, records) -> float:
    start = time.perf_counter()
    result = embed(records)
    assert len(result.records) == len(records), "every image should be embedded"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ray"))
    args = parser.parse_args()

    data = args.workdir / f"images-{args.images}"
    build_folder(data, args.images)
    artifacts = args.workdir / "artifacts"
    if not has_bundle(artifacts):
        subset = args.workdir / "fit-subset"
        build_folder(subset, args.small)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(subset), "--artifacts", str(artifacts)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    import ray

    from pipeline.bundle.artifacts import Bundle
    from pipeline.engines.distributed import RayEngine
    from pipeline.engines.engine import LocalEngine
    from pipeline.data.images import find_images

    bundle = Bundle.load(artifacts)
    records = find_images(data)
    small = records[: args.small]
    runs = {"one process": lambda r: LocalEngine().embed(r, bundle, bundle.settings)}
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    for workers in (1, 2):
        engine = RayEngine(workers=workers, cpus_per_worker=1.0)
        runs[f"Ray, {workers} worker{'s' * (workers > 1)}"] = (
            lambda r, engine=engine: engine.embed(r, bundle, bundle.settings))
    figures = {}
    for name, embed in runs.items():
        full, few = timed(embed, records), timed(embed, small)
        rate = (len(records) - len(small)) / max(1e-9, full - few)
        figures[name] = {"seconds": round(full, 1), "small_seconds": round(few, 1), "rate": round(rate, 1),
                         "overhead_s": round(max(0.0, few - len(small) / rate), 1)}
        print(name, figures[name], flush=True)
    ray.shutdown()
    one, two = figures["Ray, 1 worker"]["rate"], figures["Ray, 2 workers"]["rate"]
    efficiency = two / (2 * one)
    print(json.dumps({"figures": figures, "efficiency": efficiency}, indent=2))
    rows = "\n".join(f"| {name} | {f['seconds']} | {f['rate']} | {f['small_seconds']} | {f['overhead_s']} |"
                     for name, f in figures.items())
    write_section("bench_ray", f"""
## Embedding on Ray (`python benchmarks/bench_ray.py --images {args.images}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, one run, nothing else running. {args.images:,} 512x512
JPEGs (as bench_fit) embedded with the encoder of a default fit (EfficientNet-Lite0 at 224 px): in one process
(`embed_files`, TensorFlow on all cores), and on a local Ray cluster (`--ray`) with 1 and 2 encoder actors of one CPU
and one TensorFlow thread each, decoding in Ray tasks. The rate leaves out the fixed start-up: it is
({args.images:,} - {args.small}) / (time for {args.images:,} - time for {args.small}); the start-up is the rest of the
{args.small}-image time.

| engine | {args.images:,} images (s) | images/s | {args.small} images (s) | fixed start-up (s) |
|---|---|---|---|---|
{rows}

Parallel efficiency at 2 workers: {two} / (2 x {one}) = **{efficiency:.2f}** (target at least 0.8). On this 2-core
machine two workers use both cores, as TensorFlow alone does in one process; the workers' gain comes on a cluster,
where each node adds its cores (docs/SCALE.md).
""")


if __name__ == "__main__":
    main()
