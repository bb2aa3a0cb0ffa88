"""Fit benchmark: 5,000 real 512x512 JPEGs with the default settings.

    python benchmarks/bench_fit.py [--images 5000] [--workdir /tmp/bench-fit] [--baseline GIT_REF]

Builds the image folder once (clothing10 photos, centre and offset crops, some mirrored, resized
to 512x512, JPEG quality 90), runs ``scripts/fit.py`` on it in a child process for each path
(the pretrained backbone, and ``--backbone none``), and reports for each, side by side: wall
time, seconds of each stage, the child's peak RSS, the time of ``scripts/add.py`` for 1% more
images, the time of ``scripts/sync.py`` after 1% of the fitted files were added, 1% changed and 1%
deleted, and of a sync that finds one new photo (on LiteRT the median of five, each into a fresh copy of the
bundle), each sync with the encoder on LiteRT and on Keras (``--runtime``, the same change synced into two copies
of the bundle), and the warm latency of one
predict. With ``--baseline``, the fit of that commit's code (checked out in a git worktree) runs
on the same images in the same run, for the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
from pipeline.search.searcher import SearchOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402

CLOTHING = ROOT.parent / "shared" / "data" / "clothing10"


def build_folder(folder: Path, count: int, first: int = 0, size: int = 512) -> None:
    """``count`` distinct 512x512 JPEGs (numbers ``first`` on) made from the clothing10 photos."""
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return
    sources = sorted(CLOTHING.rglob("*.jpg"))
    for i in range(first, first + count):
        source = sources[i % len(sources)]
        variant = i // len(sources)  # 0: centre crop, 1: top crop, 2: bottom crop, mirrored when odd
        image = cv2.imread(str(source))
        h, w = image.shape[:2]
        side = min(h, w)
        offset = [(max(h, w) - side) // 2, 0, max(h, w) - side][variant % 3]
        crop = image[offset : offset + side, :] if h >= w else image[:, offset : offset + side]
        if variant % 2:
            crop = crop[:, ::-1]
        out = folder / source.parent.name / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a child process to completion: (wall seconds, its own peak RSS in GB). Python's bytecode is
    written and read, as for an installed package, whatever PYTHONDONTWRITEBYTECODE says here."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return time.perf_counter() - start, usage.ru_maxrss / 1024**2


def change_one_percent(folder: Path, images: int, workdir: Path) -> None:
    """Delete 1% of the folder's photos, give another 1% other content, and add 1% new ones."""
    photos = sorted(folder.rglob("*.jpg"))
    step, count = len(photos) // (images // 100), images // 100
    for photo in photos[::step][:count]:
        photo.unlink()
    for photo, other in zip(photos[step // 2 :: step][:count], photos[step // 3 :: step][:count]):
        replacement = photo.with_name(f"{photo.stem}.new.jpg")
        cv2.imwrite(str(replacement), cv2.imread(str(other))[:, ::-1])  # another photo, mirrored
        os.replace(replacement, photo)  # a new file: the hard link to the source is cut
    build_folder(workdir / f"new-photos-{count}", count, first=images * 2)
    shutil.copytree(workdir / f"new-photos-{count}", folder / "new", dirs_exist_ok=True)


def timed_syncs(artifacts: Path, workdir: Path, name: str, rounds: int = 1) -> dict[str, tuple[float, float]]:
    """Sync the same change into a copy of ``artifacts`` per runtime: {runtime: (wall s, peak RSS GB)},
    LiteRT's the median of ``rounds`` syncs, each into a fresh copy; ``artifacts`` itself ends synced (by LiteRT)."""
    def sync(folder: Path, runtime: str) -> tuple[float, float]:
        return run_measured([sys.executable, str(ROOT / "scripts" / "sync.py"), "--artifacts", str(folder),
                             "--runtime", runtime])

    keras, spare = workdir / f"{name}-keras", workdir / f"{name}-spare"
    shutil.rmtree(keras, ignore_errors=True)
    shutil.copytree(artifacts, keras)
    litert = []
    for _ in range(rounds - 1):
        shutil.rmtree(spare, ignore_errors=True)
        shutil.copytree(artifacts, spare)
        litert.append(sync(spare, "litert"))
    shutil.rmtree(spare, ignore_errors=True)
    litert.append(sync(artifacts, "litert"))
    return {"litert": (statistics.median(wall for wall, _ in litert), max(rss for _, rss in litert)),
            "keras": sync(keras, "keras")}


def measure(backbone: str, source: Path, extra: Path, workdir: Path, images: int, image_size: int | None) -> dict:
    """Fit a copy of ``source`` with ``--backbone backbone`` (and ``--image-size``), add ``extra``, time warm
    queries, then change 1% of the copy and time a sync on each runtime, then one more photo's."""
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    data = workdir / f"fitted-{backbone}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(source, data, copy_function=os.link)  # hard links: no second copy of the photos on disk
    artifacts = workdir / f"artifacts-{backbone}"
    size = ["--image-size", str(image_size)] if image_size else []
    wall, peak_rss_gb = run_measured([sys.executable, str(ROOT / "scripts" / "fit.py"), str(data),
                                      "--artifacts", str(artifacts), "--backbone", backbone, *size])
    fitted = Bundle.load(artifacts)
    add_wall, _ = run_measured([sys.executable, str(ROOT / "scripts" / "add.py"), str(extra),
                                "--artifacts", str(artifacts)])
    searcher = Searcher(Bundle.load(artifacts))
    queries = sorted(data.rglob("*.jpg"))[:: max(1, images // 25)][:25]
    searcher.search_file(queries[0])  # warm-up: the first call builds the encoder's graph
    latencies = []
    for query in queries:
        tick = time.perf_counter()
        searcher.search_file(query, SearchOptions(n=10))
        latencies.append((time.perf_counter() - tick) * 1000)
    change_one_percent(data, images, workdir)
    syncs = timed_syncs(artifacts, workdir, f"artifacts-{backbone}-sync")
    synced = Bundle.load(artifacts).manifest.changes[-1]
    build_folder(workdir / "one-more", 1, first=images * 3)
    shutil.copytree(workdir / "one-more", data / "one-more", dirs_exist_ok=True)
    one_photo = timed_syncs(artifacts, workdir, f"artifacts-{backbone}-one", rounds=5)
    return {
        "backbone": backbone, "images": fitted.manifest.images, "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak_rss_gb, 2), "stage_seconds": fitted.manifest.stage_seconds,
        "epochs_run": len(fitted.manifest.history["loss"]), "clusters": fitted.index.nlist,
        "nprobe": fitted.index.nprobe_, "recall": fitted.manifest.recall_at_10[fitted.index.nprobe_],
        "settings": fitted.settings.to_dict(),
        "predict_ms_median": round(statistics.median(latencies), 1), "predict_ms_max": round(max(latencies), 1),
        "queries": len(latencies), "add_wall_s": round(add_wall, 1),
        "sync_wall_s": round(syncs["litert"][0], 1), "sync_peak_rss_gb": round(syncs["litert"][1], 2),
        "sync_keras_wall_s": round(syncs["keras"][0], 1), "sync_keras_peak_rss_gb": round(syncs["keras"][1], 2),
        "sync_share": round(syncs["litert"][0] / wall, 4), "sync_keras_share": round(syncs["keras"][0] / wall, 4),
        "one_photo_sync_s": round(one_photo["litert"][0], 2), "one_photo_sync_keras_s": round(one_photo["keras"][0], 2),
        "synced": {key: synced[key] for key in ("added", "changed", "removed")},
    }


def baseline_fit(ref: str, source: Path, workdir: Path) -> dict:
    """The fit of commit ``ref``'s code (a git worktree) on a copy of ``source``: wall s, peak RSS GB."""
    tree = workdir / f"baseline-{ref}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data, artifacts = workdir / "fitted-baseline", workdir / "artifacts-baseline"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(artifacts, ignore_errors=True)
    shutil.copytree(source, data, copy_function=os.link)
    wall, rss = run_measured([sys.executable, str(tree / "scripts" / "fit.py"), str(data), "--artifacts", str(artifacts)])
    return {"ref": ref, "wall_s": round(wall, 1), "peak_rss_gb": round(rss, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-fit"))
    parser.add_argument("--backbones", default="efficientnet-lite0,none",
                        help="the --backbone values to fit with, one after the other in this run")
    parser.add_argument("--image-size", type=int, help="model input size (default: each path's own default)")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also fit the same images with this commit's code (default settings), for the speed-up")
    args = parser.parse_args()

    data = args.workdir / f"images-{args.images}"
    print(f"building {args.images} 512x512 JPEGs in {data} ...", flush=True)
    build_folder(data, args.images)
    extra = args.workdir / f"added-{args.images // 100}"
    build_folder(extra, args.images // 100, first=args.images)  # 1% more, unlike any of the first ones

    baseline = baseline_fit(args.baseline, data, args.workdir) if args.baseline else None
    runs = [measure(backbone, data, extra, args.workdir, args.images, args.image_size)
            for backbone in args.backbones.split(",")]
    print(json.dumps({"baseline": baseline, "runs": runs}, indent=2))

    def cells(key, unit="", digits=1):
        return " | ".join(f"{run[key]:.{digits}f}{unit}" for run in runs)

    stage_names = list(dict.fromkeys(name for run in runs for name in run["stage_seconds"]))
    stage_rows = "\n".join(
        f"| {name} (s) | " + " | ".join(f"{run['stage_seconds'][name]:.1f}" if name in run["stage_seconds"] else "-"
                                       for run in runs) + " | |" for name in stage_names)
    header = " | ".join(f"`--backbone {run['backbone']}` (input {run['settings']['image_size']} px)" for run in runs)
    command = f"python benchmarks/bench_fit.py --images {args.images} --backbones {args.backbones}" + (
        f" --image-size {args.image_size}" if args.image_size else "") + (
        f" --baseline {args.baseline}" if args.baseline else "")
    section = "bench_fit" + (f"_{args.images}" if args.images != 5000 else "") + (
        f"_{args.image_size}" if args.image_size else "")
    default = runs[0] if runs[0]["backbone"] == "efficientnet-lite0" else None
    baseline_rows = "" if baseline is None or default is None else (
        f"| the same fit by the code of `{baseline['ref']}`, same images, same run: wall time (s), peak RSS (GB) | "
        f"{baseline['wall_s']:.1f}, {baseline['peak_rss_gb']:.2f} |" + " |" * (len(runs) - 1) + " |\n"
        f"| speed-up of the fit over `{baseline['ref']}` | {baseline['wall_s'] / default['wall_s']:.2f}x |"
        + " |" * (len(runs) - 1) + " |\n")
    write_section(section, f"""
## Fit: {args.images:,} images of 512x512{f' at {args.image_size} px input' if args.image_size else ''} (`{command}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, the fits one after the other in one run, nothing
else running, Python's bytecode cached as for an installed package. Images: real clothing10 photos, cropped and
resized to 512x512 JPEG. Default settings of each path;
epochs "auto" with early stopping. Each sync ran twice, on two copies of the bundle: with the encoder on LiteRT (the
default) and on Keras (`--runtime keras`).

| figure | {header} | target |
|---|{'---|' * len(runs)}---|
| fit wall time, process start to artifacts written (s) | {cells('wall_s')} | under 45 s at 5,000 images (issue 33) |
{baseline_rows}| peak RSS of the fit process (GB) | {cells('peak_rss_gb', digits=2)} | under 3 GB |
| warm predict, one file query, n=10, median of {runs[0]['queries']} (ms) | {cells('predict_ms_median')} | under 50 ms |
| warm predict, slowest of those (ms) | {cells('predict_ms_max')} | |
| `scripts/add.py` of {args.images // 100} more images (1%), process start to commit (s) | {cells('add_wall_s')} | |
| `scripts/sync.py` after 1% added, 1% changed, 1% deleted, process start to commit (s): LiteRT / Keras | {' | '.join(f"{r['sync_wall_s']:.1f} / {r['sync_keras_wall_s']:.1f}" for r in runs)} | |
| sync wall time / fit wall time, same run: LiteRT / Keras | {' | '.join(f"{r['sync_share']:.1%} / {r['sync_keras_share']:.1%}" for r in runs)} | under 5% |
| sync: added, changed, removed | {' | '.join(f"{r['synced']['added']}, {r['synced']['changed']}, {r['synced']['removed']}" for r in runs)} | |
| peak RSS of the sync process (GB): LiteRT / Keras | {' | '.join(f"{r['sync_peak_rss_gb']:.2f} / {r['sync_keras_peak_rss_gb']:.2f}" for r in runs)} | |
| a sync that finds one new photo, process start to commit (s): LiteRT (median of 5) / Keras | {' | '.join(f"{r['one_photo_sync_s']:.2f} / {r['one_photo_sync_keras_s']:.2f}" for r in runs)} | under 0.5 s (issue 33) |
| epochs run | {' | '.join(str(run['epochs_run']) for run in runs)} | |
| clusters, nprobe (recall@10 vs exact) | {' | '.join(f"{run['clusters']}, {run['nprobe']} ({run['recall']:.3f})" for run in runs)} | |
{stage_rows}

With the backbone, "features" is the one pass of EfficientNet-Lite0 over every image: its feature maps are cached
for training, and the descriptors are read from them ("embed"); "export" writes the encoder for LiteRT and checks
it against the Keras encoder on 64 of the images.
""")


if __name__ == "__main__":
    main()
