"""Retrieval quality on the four labelled dev sets: a fit of each, then evaluate, in one run.

    python benchmarks/bench_quality.py [--sets clothing10,cifar10-test,caltech101,flowers5] [--name default]
                                       [--runtime litert] [--workdir /tmp/bench-quality] [-- FIT FLAGS...]

For each set of ``../shared/data``: ``scripts/fit.py SET`` (with the fit flags given after ``--``;
default settings otherwise) in a child process (wall time, peak RSS), then ``scripts/evaluate.py
SET --json`` on that fit (its encoder on ``--runtime``). Prints one JSON object and writes the
table (precision@10, precision@1, mAP@10 of the pipeline as predict answers, the backbone's pooled
features, the reference baselines, recall of routed against exact search, fit time) as the
section ``bench_quality_NAME`` of docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SETS = ("clothing10", "cifar10-test", "caltech101", "flowers5")
REFERENCES = ("raw_pixels_l2", "raw_pixels", "pca_whitened", "hsv_histogram")


def run(command: list[str]) -> tuple[float, float, str]:
    """Run a child process to completion: (wall s, peak RSS GB, stdout); stop on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(command)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024**2, output


def measure(name: str, workdir: Path, runtime: str, fit_flags: list[str]) -> dict:
    """Fit the set ``name`` and evaluate the fit."""
    data, artifacts = SHARED / name, workdir / name
    wall, rss, _ = run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(data), "--artifacts", str(artifacts),
                        *fit_flags])
    _, _, output = run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(data), "--artifacts",
                        str(artifacts), "--json", "--runtime", runtime])
    report = json.loads(output)
    manifest = json.loads((artifacts / (artifacts / "CURRENT").read_text().strip() / "manifest.json").read_text())
    return {"set": name, "fit_s": round(wall, 1), "fit_rss_gb": round(rss, 2), "report": report,
            "epochs": len(manifest["history"].get("loss", [])), "stage_seconds": manifest["stage_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--name", default="default", help="the section's name (several settings side by side)")
    parser.add_argument("--runtime", default="litert", choices=("litert", "keras"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-quality"))
    args, fit_flags = parser.parse_known_args()
    fit_flags = [flag for flag in fit_flags if flag != "--"]

    runs = [measure(name, args.workdir / args.name, args.runtime, fit_flags) for name in args.sets.split(",")]
    print(json.dumps(runs, indent=2))

    def cells(get) -> str:
        return " | ".join(get(run) for run in runs)

    def scores(run: dict, key: str) -> str:
        return f"{run['report']['baselines'][key]['precision_at_k']:.3f}" if key in run["report"]["baselines"] else "-"

    pipeline = [run["report"]["pipeline"] for run in runs]
    mean = sum(p["precision_at_k"] for p in pipeline) / len(pipeline)
    blocks = sorted({key for run in runs for key in run["report"]["baselines"] if key.endswith("_block")})
    block_rows = "\n".join(f"| the {key.removesuffix('_block')} block alone, precision@10 | "
                           f"{cells(lambda run, key=key: scores(run, key))} |" for key in blocks)
    command = f"python benchmarks/bench_quality.py --name {args.name} --runtime {args.runtime}" + (
        f" -- {' '.join(fit_flags)}" if fit_flags else "")
    write_section(f"bench_quality_{args.name}", f"""
### {args.name}: `{command}`

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, one set after the other in one run: a fit of each
set{' with `' + ' '.join(fit_flags) + '`' if fit_flags else ' with the default settings'}, then `scripts/evaluate.py`
on it (the encoder on {args.runtime}). The pipeline row is the search as `predict` answers it: routed (tuned nprobe),
with its query expansion; k = 10. Mean precision@10 over the sets: **{mean:.3f}**.

| | {' | '.join(run['set'] for run in runs)} |
|---|{'---|' * len(runs)}
| **pipeline precision@10** | {cells(lambda run: f"**{run['report']['pipeline']['precision_at_k']:.3f}**")} |
| pipeline precision@1 / mAP@10 | {cells(lambda run: f"{run['report']['pipeline']['precision_at_1']:.3f} / {run['report']['pipeline']['map_at_k']:.3f}")} |
| the backbone's pooled features, precision@10 / precision@1 | {cells(lambda run: f"{run['report']['baselines']['backbone_pooled']['precision_at_k']:.3f} / {run['report']['baselines']['backbone_pooled']['precision_at_1']:.3f}" if 'backbone_pooled' in run['report']['baselines'] else "-")} |
{block_rows}
| best reference baseline, precision@10 | {cells(lambda run: f"{max(run['report']['baselines'][key]['precision_at_k'] for key in REFERENCES):.3f}")} |
| recall@10 of routed vs exact (nprobe of clusters) | {cells(lambda run: f"{run['report']['pipeline']['recall_vs_exact']:.3f} ({run['report']['pipeline']['nprobe']} of {run['report']['pipeline']['clusters']})")} |
| fit wall time, peak RSS (epochs) | {cells(lambda run: f"{run['fit_s']:.0f} s, {run['fit_rss_gb']:.2f} GB ({run['epochs']})")} |
| training's share of the fit | {cells(lambda run: f"{run['stage_seconds'].get('train', 0) / run['fit_s']:.0%}")} |
""", QUALITY_MD)


if __name__ == "__main__":
    main()
