"""Commands beside an oversized encoder export: what they cost in memory, and what they say.

    python benchmarks/bench_big_export.py --artifacts artifacts [--gigabytes 3]

Copies a fitted artifacts folder, makes its bundle's ``encoder.tflite`` a sparse file of
``--gigabytes`` GB (re-hashed into the manifest, as a tamperer would, so only its size can tell),
and runs, each in a fresh process as a user would: ``remove`` of one id, ``duplicates``,
``restore --list`` (none of which runs the encoder) and ``predict`` (which must refuse the export).
Prints each command's exit code, peak resident memory (the child's ru_maxrss), wall time and last
line, and writes the table to docs/BENCHMARKS.md. Target (issue 29): peak RSS under 400 MB for the
three that never run the encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.bundle.layout import EXPORT, MANIFEST, current_folder

# runs the command as its child and prints the child's peak RSS in kB: this process's own is not counted
_PEAK = ("import resource, subprocess, sys; process = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(process.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "print((process.stderr or process.stdout).strip().splitlines()[-1][:160] if (process.stderr or process.stdout)"
         ".strip() else '')")
TARGET_MB = 400


def oversized_copy(artifacts: Path, destination: Path, gigabytes: float) -> Path:
    """A copy of ``artifacts`` whose current export is a sparse file of ``gigabytes`` GB, re-hashed."""
    shutil.copytree(artifacts, destination, symlinks=True)
    folder = current_folder(destination)
    export = folder / EXPORT
    export.unlink()  # a hard link to the original bundle's: never write through it
    with open(export, "wb") as handle:
        handle.truncate(int(gigabytes * 2**30))
    digest = hashlib.sha256()
    with open(export, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["export_sha256"] = digest.hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--gigabytes", type=float, default=3.0)
    args = parser.parse_args()
    bundle = Bundle.load(args.artifacts)
    query = bundle.catalog.paths[0]
    with tempfile.TemporaryDirectory() as scratch:
        copied = oversized_copy(Path(args.artifacts), Path(scratch) / "artifacts", args.gigabytes)
        imgsim = [sys.executable, "-m", "pipeline.cli"]
        cases = [["remove", str(bundle.catalog.ids[-1])], ["duplicates"], ["restore", "--list"],
                 ["predict", "--file", query]]
        rows = []
        for case in cases:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _PEAK, *imgsim, *case, "--artifacts", str(copied)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=600).stdout.splitlines()
            seconds = time.perf_counter() - started
            code, peak_kb, last = int(out[0]), int(out[1]), out[2] if len(out) > 2 else ""
            rows.append((" ".join(["imgsim", *case[:1], *(["--list"] if "--list" in case else [])]), code,
                         peak_kb / 1024, seconds, last))
    lines = ["| command | exit | peak RSS | wall | its last line |", "|---|---|---|---|---|"]
    for command, code, peak_mb, seconds, last in rows:
        lines.append(f"| `{command}` | {code} | {peak_mb:.0f} MB | {seconds:.1f} s | {last.replace('|', '/')} |")
    print("\n".join(lines))
    write_section("big_export", f"## Commands beside a {args.gigabytes:g} GB export\n\n"
                  f"`python benchmarks/bench_big_export.py --artifacts DIR --gigabytes {args.gigabytes:g}` "
                  f"({machine()}; a bundle of {len(bundle.catalog)} images whose export was made a sparse "
                  f"{args.gigabytes:g} GB file and re-hashed into the manifest). Target (issue 29): under "
                  f"{TARGET_MB} MB for the commands that never run the encoder; `predict` refuses the export unread "
                  "(over the 512 MiB limit).\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
