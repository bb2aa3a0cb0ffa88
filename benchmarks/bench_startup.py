"""Start-up: how long a command takes from process start to exit, and its peak memory, as a user types it.

    python benchmarks/bench_startup.py --artifacts DIR [--rounds 7] [--before-repo DIR --before-artifacts DIR]

Runs, each ``--rounds`` times in a fresh process: a cold ``imgsim predict --file`` on the first
indexed image, ``imgsim upgrade`` of a current bundle, and ``imgsim fit`` of a folder holding one
fake .jpg (refused). With ``--before-repo`` (another checkout of this project, with its own fit in
``--before-artifacts``), the same commands run with that checkout's package in the same run,
alternating, for an A/B on one machine at one moment. Prints medians and writes docs/BENCHMARKS.md.
Targets (issue 33): predict < 0.5 s and < 250 MB; upgrade < 0.5 s; the fake folder < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402

_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(command: list[str], repo: Path, cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak MB) of one run of ``python -m pipeline.cli COMMAND`` with ``repo``'s package."""
    environment = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "pipeline.cli", *command],
                            capture_output=True, text=True, cwd=cwd, env=environment, timeout=300).stdout
    return time.perf_counter() - started, int(output.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before-repo", type=Path)
    parser.add_argument("--before-artifacts")
    args = parser.parse_args()
    trees = {"now": (ROOT, Path(args.artifacts).resolve())}
    if args.before_repo:
        trees["before"] = (args.before_repo.resolve(), Path(args.before_artifacts).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        fake = Path(scratch) / "photos" / "cats"
        fake.mkdir(parents=True)
        (fake / "a.jpg").write_text("not a photo")
        cases = {
            "cold `predict --file`": lambda artifacts: ["predict", "--file", Bundle.load(args.artifacts).catalog.paths[0],
                                                        "-n", "10", "--artifacts", str(artifacts)],
            "`upgrade` of a current bundle": lambda artifacts: ["upgrade", "--artifacts", str(artifacts)],
            "`fit` of a folder of one fake .jpg": lambda artifacts: ["fit", str(fake.parent), "--artifacts",
                                                                     str(Path(scratch) / "none")],
        }
        figures = {(case, tree): [] for case in cases for tree in trees}
        for _ in range(args.rounds):
            for case, command in cases.items():
                for tree, (repo, artifacts) in trees.items():  # alternating: both meet the same moments
                    figures[(case, tree)].append(timed(command(artifacts), repo, Path(scratch)))
    lines = ["| command | " + " | ".join(f"{tree}: median wall, peak RSS" for tree in trees) + " |",
             "|---|" + "---|" * len(trees)]
    for case in cases:
        cells = [f"{statistics.median(t for t, _ in figures[(case, tree)]):.2f} s, "
                 f"{max(m for _, m in figures[(case, tree)]):.0f} MB" for tree in trees]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    before = f"; before: {args.before_repo}" if args.before_repo else ""
    write_section("startup", f"## Start-up: process start to exit\n\n`python benchmarks/bench_startup.py --artifacts DIR "
                  f"--rounds {args.rounds}{' --before-repo DIR --before-artifacts DIR' if args.before_repo else ''}` "
                  f"({machine()}; {args.rounds} rounds, alternating{before}). Targets (issue 33): predict < 0.5 s and "
                  "< 250 MB, upgrade of a current bundle < 0.5 s, a folder of one fake image < 1 s.\n\n"
                  + "\n".join(lines))


if __name__ == "__main__":
    main()
