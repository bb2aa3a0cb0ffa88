"""serve --ray against the one-process server: every image's answer, with 1, 2 and 3 shards, on real photo sets.

    python benchmarks/bench_ray_answers.py [--sets data/sample,../shared/data/clothing10] [--uploads 20]
                                           [--workdir /tmp/bench-ray-answers]

Fits each set once (default settings). Starts a local Ray cluster and Ray Serve on this machine; for 1, 2 and 3
shards, deploys the application of ``imgsim serve --ray`` and asks it over HTTP, and the one-process server (the
same FastAPI application in this process), for the 10 nearest images of every indexed image by id (the tuned
nprobe, query expansion as fitted) and of ``--uploads`` photos uploaded; counts the answers that differ in any id,
distance or score. Written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402

SHARDS = (1, 2, 3)


def fitted(data: Path, workdir: Path) -> Path:
    """A default fit of ``data`` under ``workdir`` (made once)."""
    from pipeline.bundle.layout import has_bundle

    artifacts = workdir / data.name
    if not has_bundle(artifacts):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(data), "--artifacts", str(artifacts)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return artifacts


def answers(post, ids: list[int], photos: list[Path]) -> list:
    """Each query's results as (id, distance, score) triples: by id, then by upload."""
    found = []
    for image_id in ids:
        body = post("/api/search", json={"id": image_id, "n": 10}).json()
        found.append([(hit["id"], hit["distance"], hit["score"]) for hit in body["results"]])
    for photo in photos:
        body = post("/api/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data={"n": "10"})
        found.append([(hit["id"], hit["distance"], hit["score"]) for hit in body.json()["results"]])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=f"data/sample,{ROOT.parent / 'shared' / 'data' / 'clothing10'}")
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ray-answers"))
    args = parser.parse_args()

    import httpx
    import ray
    from ray import serve
    from starlette.testclient import TestClient

    from pipeline.bundle.artifacts import Bundle
    from pipeline.serve.ray_server import APP_NAME, RayServeOptions, application
    from pipeline.search.searcher import Searcher
    from pipeline.serve.server import create_app

    sets = [Path(name) if Path(name).is_absolute() else ROOT / name for name in args.sets.split(",")]
    folders = {data.name: fitted(data, args.workdir) for data in sets}
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    rows = []
    try:
        for name, artifacts in folders.items():
            bundle = Bundle.load(artifacts)
            ids = bundle.catalog.ids.tolist()
            photos = [Path(path) for path in bundle.catalog.paths.tolist()[:: max(1, len(ids) // args.uploads)]]
            photos = photos[: args.uploads]
            tick = time.time()
            alone = answers(TestClient(create_app(Searcher(bundle))).post, ids, photos)
            alone_s = time.time() - tick
            for shards in SHARDS:
                serve.run(application(RayServeOptions(str(artifacts), shards=shards))[0], name=APP_NAME,
                          route_prefix="/")
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                    tick = time.time()
                    spread = answers(client.post, ids, photos)
                    spread_s = time.time() - tick
                differ = sum(one != other for one, other in zip(alone, spread))
                rows.append(f"| {name} | {len(ids):,} | {bundle.index.nlist} | {bundle.index.nprobe_} | {shards} | "
                            f"{len(alone):,} | {differ} | {alone_s / len(alone) * 1000:.1f} | "
                            f"{spread_s / len(spread) * 1000:.1f} |")
                print(rows[-1], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    markdown = "\n".join([
        f"Every indexed image by id, and {args.uploads} uploads, asked of `imgsim serve --ray` (a local Ray cluster, "
        f"over HTTP) and of the one-process server (in process), 10 results each; an answer differs when any id, "
        f"distance or score does ({machine()}; the ms are a query's mean, sequential, for orientation only).",
        "",
        "| set | images | clusters | nprobe | shards | queries | answers that differ | one process (ms) | "
        "serve --ray (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(markdown)
    write_section("bench_ray_answers", markdown)


if __name__ == "__main__":
    main()
