"""The verifier's thresholds on the hard-negative benchmark: what each setting would accept, from the cached verdicts.

    python benchmarks/bench_thresholds.py [--workdir /tmp/bench-duplicates]

Run after ``bench_duplicates.py``: its folder (``sources.json`` says which photo each file comes from), its fit and
the verdicts cache of the fit's run. Every verdict that aligned its pair keeps what it measured (inliers and their
share, correlation, changed share), so the verdict of another setting can be told without matching again: a pair is
the same photo when its correlation is at least ``--min-correlation`` and its changed share at most ``--max-changed``
(and, for a pair aligned by features, its inliers and their share pass the others; those can only be judged stricter
than the run's, which refused what fell below its own). Scored over the candidate pairs verified, true when both
files come from one photo: the pairs accepted that are true (precision) and the true pairs accepted (recall). Writes
docs/QUALITY.md. Issue 32: the defaults justified on this benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.collection.duplicates import CACHE_FOLDER  # noqa: E402
from pipeline.collection.verification import Thresholds  # noqa: E402

GRID = {"max_changed": (0.03, 0.04, 0.05, 0.06, 0.07, 0.08), "min_correlation": (0.85, 0.9, 0.95),
        "min_inliers": (12, 16, 20), "min_inlier_ratio": (0.15, 0.2, 0.25)}


def accepts(verdict: dict, thresholds: Thresholds) -> bool:
    """Whether ``verdict`` (as the cache keeps it) is the same photo under ``thresholds``."""
    if verdict["alignment"] == "none":
        return False
    if verdict["alignment"] == "affine" and (verdict["inliers"] < thresholds.min_inliers
                                             or verdict["inlier_ratio"] < thresholds.min_inlier_ratio):
        return False
    return verdict["correlation"] >= thresholds.min_correlation and verdict["changed"] <= thresholds.max_changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-duplicates"))
    args = parser.parse_args()
    source_of = json.loads((args.workdir / "photos" / "sources.json").read_text())
    bundle = Bundle.load(args.workdir / "artifacts")
    photo_of_hash = {stored: source_of[path] for path, stored in zip(bundle.catalog.paths, bundle.catalog.hashes)}
    stored = json.loads((args.workdir / "artifacts" / CACHE_FOLDER / "verdicts.json").read_text())
    assert stored["thresholds"] == {name: getattr(Thresholds(), name) for name in stored["thresholds"]}, \
        "the cache was decided with other thresholds than the defaults"
    pairs = {}  # (hash, hash) -> the better of the plain and the mirrored verdict, as grouping would use them
    for key, verdict in stored["pairs"].items():
        first, second = key.split("/")[0].split(":")
        if first in photo_of_hash and second in photo_of_hash:
            pairs.setdefault((first, second), []).append(verdict)
    truth = {pair: photo_of_hash[pair[0]] == photo_of_hash[pair[1]] for pair in pairs}
    true_total = sum(truth.values())

    def scores(thresholds: Thresholds) -> tuple[float, float, int, int]:
        accepted = [pair for pair, verdicts in pairs.items() if any(accepts(v, thresholds) for v in verdicts)]
        right = sum(truth[pair] for pair in accepted)
        return right / max(1, len(accepted)), right / max(1, true_total), len(accepted) - right, true_total - right

    default = Thresholds()
    rows = []
    for name, values in GRID.items():
        for value in values:
            precision, recall, wrong, missed = scores(Thresholds(**{**default.__dict__, name: value}))
            mark = " (default)" if value == getattr(default, name) else ""
            rows.append(f"| `--{name.replace('_', '-')} {value:g}`{mark} | {precision:.4f} | {recall:.4f} | {wrong} | "
                        f"{missed} |")
            print(rows[-1], flush=True)
    write_section("bench_thresholds", f"""## The verifier's thresholds on the hard-negative benchmark (`python benchmarks/bench_thresholds.py`)

Measured on {machine()}, from the verdicts `bench_duplicates` cached: {len(pairs):,} candidate pairs verified among
its 9,992 images, {true_total:,} of them two files of one photo. Each row changes one threshold from the defaults;
a pair counts as accepted when its verdict (or its mirrored one) passes. These are verdicts on candidate pairs, not
the groups (which verify each image against a representative), so they show the trade-off each threshold makes,
not the benchmark's pair scores. Inliers and their share can only be judged stricter than the defaults (the run
refused a pair below them before comparing it).

| setting | precision of the pairs accepted | recall of the true pairs | look-alikes accepted | true pairs refused |
|---|---|---|---|---|
{chr(10).join(rows)}
""", QUALITY_MD)


if __name__ == "__main__":
    main()
