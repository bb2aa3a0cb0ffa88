"""Mixed requests against the service while the command line syncs and removes beside it: no error, no photo lost.

    python benchmarks/bench_mixed.py [--requests 2000] [--clients 8] [--workdir /tmp/bench-mixed]

Fits a copy of data/sample, starts ``imgsim serve`` on it (following its folder every 0.5 s), and
sends ``--requests`` requests from ``--clients`` concurrent clients: uploads (40%), searches by the
id of a result seen before (20%), thumbnails (20%), originals (10%), stats, health and duplicates
(10%). Meanwhile another thread runs the command line over and over: ``imgsim remove`` of a random
indexed photo, a photo moved out of the folder then ``imgsim sync``, moved back then ``imgsim sync``,
a new photo dropped in then ``imgsim sync``. Counts as an error: any 5xx, any refused connection,
any 4xx but a 404 for an id that a removal or sync took out meanwhile. At the end, one more sync,
then every photo on disk that was not removed by hand must be indexed, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_server import start_server  # noqa: E402
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.data.images import find_images  # noqa: E402


def imgsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def writers(photos: Path, spare: list[Path], artifacts: Path, stop: threading.Event, log: list[str]) -> None:
    """The command line beside the service: removals, moves out and back, new photos, each followed by a sync."""
    rng, parked, added = random.Random(1), photos.parent / "parked", 0
    parked.mkdir(exist_ok=True)
    while not stop.is_set():
        catalog = Bundle.load(artifacts).catalog
        step = rng.choice(["remove", "move-out", "move-back", "new"])
        if step == "remove" and len(catalog) > 150:
            result = imgsim("remove", str(rng.choice(catalog.ids.tolist())), "--artifacts", str(artifacts))
        else:
            if step == "move-out":
                photo = rng.choice(sorted(photos.rglob("*.jpg")))
                shutil.move(photo, parked / f"{photo.parent.name}__{photo.name}")
            elif step == "move-back" and list(parked.iterdir()):
                back = rng.choice(sorted(parked.iterdir()))
                label, name = back.name.split("__", 1)
                shutil.move(back, photos / label / name)
            elif step == "new" and added < len(spare):
                shutil.copy(spare[added], photos / "new" / spare[added].name)
                added += 1
            result = imgsim("sync", "--artifacts", str(artifacts))
        log.append(f"{step}: {result.returncode} {result.stderr.strip()[-200:] if result.returncode else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-mixed"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    photos, artifacts = args.workdir / "photos", args.workdir / "artifacts"
    shutil.copytree(ROOT / "data" / "sample", photos, ignore=shutil.ignore_patterns("*.md"))
    (photos / "new").mkdir()
    spare = sorted((ROOT.parent / "shared" / "data" / "clothing10").rglob("*.jpg"))[::50][:30]
    fit = imgsim("fit", str(photos), "--artifacts", str(artifacts))
    assert fit.returncode == 0, fit.stderr
    uploads = [path.read_bytes() for path in sorted(photos.rglob("*.jpg"))[::5]]

    server, url = start_server(artifacts, 5.0, "litert", ["--reload-seconds", "0.5"])
    stop, log, seen_ids, outcomes = threading.Event(), [], [0], []
    background = threading.Thread(target=writers, args=(photos, spare, artifacts, stop, log))
    start = time.perf_counter()
    background.start()

    def one(number: int) -> tuple[str, int]:
        rng = random.Random(number)
        kind = rng.choices(["upload", "by-id", "thumbnail", "original", "other"], [40, 20, 20, 10, 10])[0]
        image_id = rng.choice(seen_ids)
        with httpx.Client(base_url=url, timeout=60) as client:
            try:
                if kind == "upload":
                    response = client.post("/api/search", files={"image": ("q.jpg", rng.choice(uploads), "image/jpeg")})
                elif kind == "by-id":
                    response = client.post("/api/search", json={"id": image_id, "n": 5})
                elif kind == "thumbnail":
                    response = client.get(f"/api/images/{image_id}")
                elif kind == "original":
                    response = client.get(f"/api/images/{image_id}/full")
                else:
                    response = client.get(rng.choice(["/api/stats", "/api/health", "/api/duplicates"]))
            except httpx.HTTPError:
                return kind, -1
        if response.status_code == 200 and kind in ("upload", "by-id"):
            seen_ids.extend(hit["id"] for hit in response.json()["results"])
        stale = response.status_code == 404 and kind in ("by-id", "thumbnail", "original")
        return kind, 200 if stale else response.status_code

    try:
        with ThreadPoolExecutor(args.clients) as pool:
            outcomes = list(pool.map(one, range(args.requests)))
    finally:
        stop.set()
        background.join()
        server.terminate()
        server.wait(timeout=30)
    elapsed = time.perf_counter() - start
    final = imgsim("sync", "--artifacts", str(artifacts), "--allow-mass-removal")
    bundle = Bundle.load(artifacts)
    removed = set(bundle.manifest.removed)
    on_disk = {record.path for record in find_images(photos)} - removed
    indexed = set(bundle.catalog.paths)
    errors = [outcome for outcome in outcomes if outcome[1] != 200]
    figures = {"requests": len(outcomes), "errors": len(errors), "error_kinds": sorted(set(map(str, errors)))[:10],
               "cli_operations": len(log), "cli_failures": [line for line in log if not line.split(": ")[1].startswith("0")],
               "seconds": round(elapsed, 1), "photos_on_disk": len(on_disk), "indexed": len(indexed),
               "lost": len(on_disk - indexed), "stray": len(indexed - on_disk), "final_sync": final.returncode}
    print(json.dumps(figures, indent=2))
    write_section("bench_mixed", f"""
## Mixed requests beside command-line writers (`python benchmarks/bench_mixed.py --requests {args.requests} --clients {args.clients}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}. A fit of a copy of `data/sample` served by `imgsim serve
--reload-seconds 0.5`; {args.clients} clients send {figures['requests']:,} requests (uploads 40%, searches by an id seen
in an earlier answer 20%, thumbnails 20%, originals 10%, stats, health and duplicates 10%) while the command line runs
{figures['cli_operations']} removals and syncs beside them (photos removed by id, moved out and back, new ones dropped
in), in {figures['seconds']} s. A 404 for an id that a writer took out meanwhile is the right answer, not an error.

| figure | measured | target |
|---|---|---|
| errors (5xx, refused connections, any other 4xx) | {figures['errors']} | 0 |
| command-line writers that failed | {len(figures['cli_failures'])} | 0 |
| photos on disk (not removed by hand) missing from the index after a last sync | {figures['lost']} | 0 |
| indexed photos that are not on disk | {figures['stray']} | 0 |
""")


if __name__ == "__main__":
    main()
