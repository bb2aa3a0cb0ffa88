"""Embedding speed of each backbone's fitted encoder, side by side in one run (LiteRT, as every CPU command runs it).

    python benchmarks/bench_backbones.py [--backbones efficientnet-lite0,efficientnet-lite2@224] [--images 500] [--rounds 3]

Fits data/sample once per backbone with its defaults, or at the input size after ``@`` (in
``--workdir``, reused), then, the backbones
alternating round by round, embeds ``--images`` clothing10 photos in a fresh process: through
``embed_files`` (decode and embed, as add and sync run it) and through the encoder alone. Quality of
the same backbones is in docs/QUALITY.md (bench_quality); written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_runtime import CLOTHING, THROUGHPUT, run_measured  # noqa: E402
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.layout import has_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite2")
    parser.add_argument("--images", type=int, default=500, help="clothing10 photos embedded per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-backbones"))
    args = parser.parse_args()
    backbones = args.backbones.split(",")

    for backbone in backbones:
        artifacts = args.workdir / backbone
        name, _, size = backbone.partition("@")
        if not has_bundle(artifacts):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(ROOT / "data" / "sample"),
                            "--artifacts", str(artifacts), "--backbone", name, *(["--image-size", size] if size else [])],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds: dict[str, list[dict]] = {backbone: [] for backbone in backbones}
    for _ in range(args.rounds):
        for backbone in backbones:
            _, _, output = run_measured([sys.executable, "-c", THROUGHPUT, str(args.workdir / backbone), "litert",
                                         str(args.images), str(CLOTHING)])
            rounds[backbone].append(json.loads(output.strip().splitlines()[-1]))
    figures = {backbone: {key: round(statistics.median(r[key] for r in rounds[backbone]), 1)
                          for key in ("files_per_s", "encoder_per_s")} for backbone in backbones}
    print(json.dumps(figures, indent=2))
    first = figures[backbones[0]]
    rows = "\n".join(
        f"| `{backbone}` | {f['files_per_s']} | {f['encoder_per_s']} | "
        f"{first['files_per_s'] / f['files_per_s']:.2f}x | {first['encoder_per_s'] / f['encoder_per_s']:.2f}x |"
        for backbone, f in figures.items())
    write_section("bench_backbones", f"""
## Embedding speed by backbone (`python benchmarks/bench_backbones.py --backbones {args.backbones} --images {args.images} --rounds {args.rounds}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}, CPU only, LiteRT, the backbones alternating round by round in
one run. The encoder of a fit of `data/sample` with each backbone's defaults (its native input size, or the size
after `@`); a fresh process
per round embeds {args.images} clothing10 photos through `embed_files` (decode and embed) and through the encoder alone;
medians of {args.rounds} rounds. Their precision@10 on the four dev sets is in docs/QUALITY.md.

| backbone | decode and embed (images/s) | encoder alone (images/s) | time per image against `{backbones[0]}`, embed_files | encoder alone |
|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
