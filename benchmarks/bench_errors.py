"""Bad input on every subcommand: one line, exit 2, and how long it takes to say so.

    python benchmarks/bench_errors.py [--rounds 5]

Each case runs ``imgsim`` (this checkout's, in a fresh process, as a user would) in an empty
folder, ``--rounds`` times; the median wall time is the time from typing the command to its one
line of error. The target (issue 23): under 0.5 s when the error is about the input, with no model
loaded first. Prints each case and writes the table to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402

CASES = [  # every subcommand, with input that is wrong before any work starts
    ["fit", "missing"],
    ["fit", "."],
    ["fit", ".", "--epochs", "0"],
    ["predict", "--file", "q.jpg", "-n", "-1"],
    ["predict", "--url", "http://127.0.0.1:9/x.jpg", "--timeout", "nan"],
    ["predict", "--file", "q.jpg", "--plot", "missing/x.png"],
    ["add", "missing"],
    ["sync"],
    ["remove", "3"],
    ["duplicates", "--html", "missing/groups.html"],
    ["evaluate", "missing"],
    ["report", "--out", "missing/report.html"],
    ["report"],
    ["serve", "--port", "99999"],
    ["restore"],
    ["upgrade"],
    ["no-such-command"],
]
TARGET_S = 0.5
IMGSIM = [str(Path(sys.executable).with_name("imgsim"))]  # the installed command, as a user types it


def run_case(args: list[str], folder: Path, rounds: int) -> dict:
    """The case's exit code, its stderr and the median of ``rounds`` wall times."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        process = subprocess.run([*IMGSIM, *args], capture_output=True, text=True, cwd=folder, timeout=120)
        times.append(time.perf_counter() - start)
    return {"command": "imgsim " + " ".join(args), "exit": process.returncode, "stderr": process.stderr.strip(),
            "lines": len(process.stderr.splitlines()), "median_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in CASES:
            row = run_case(case, Path(folder), args.rounds)
            print(f"{row['median_s']:.2f} s  exit {row['exit']}  {row['command']}: {row['stderr']}", flush=True)
            rows.append(row)
    slowest = max(row["median_s"] for row in rows)
    table = "\n".join(f"| `{row['command']}` | {row['exit']} | {row['lines']} | {row['median_s']:.2f} s | "
                      f"{row['stderr'].removeprefix('error: ')[:90]} |" for row in rows)
    write_section("bench_errors", f"""
## Bad input on every subcommand (`python benchmarks/bench_errors.py --rounds {args.rounds}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}: each command in a fresh process in an empty folder, median of
{args.rounds} runs, from start to its error. Target: one line, exit 2, under {TARGET_S} s when the error is about the
input. Slowest: {slowest:.2f} s; every case {'met' if slowest < TARGET_S and all(
        r['exit'] == 2 and r['lines'] == 1 for r in rows) else 'did not meet'} the target in this run.

| command | exit | lines | median | error (shortened) |
|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
