"""Report benchmark: scripts/report.py on a bundle of 100,000 indexed images.

    python benchmarks/bench_report.py [--images 100000] [--workdir /tmp/bench-report]

There is no folder of 100,000 photos on this machine, so the bundle is made from a real fit of
data/sample: its embeddings, repeated with small Gaussian jitter to --images rows, each row
pointing at the real photo it came from (for thumbnails and reconstructions), then clustered and
indexed by the pipeline's own code. The report's cost depends on the number of rows (sampling,
t-SNE, clusters, galleries), which this exercises; it times the whole command.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, sample_fit, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.bundle.catalog import Catalog  # noqa: E402
from pipeline.bundle.writer import ArtifactWriter  # noqa: E402
from pipeline.index.cluster import build_index  # noqa: E402


def build_bundle(source: Path, target: Path, rows: int) -> Bundle:
    """A bundle of ``rows`` vectors: the source bundle's, repeated with jitter, indexed anew."""
    bundle = Bundle.load(source)
    real, catalog = np.asarray(bundle.embeddings), bundle.catalog
    picks = np.arange(rows) % len(real)
    rng = np.random.default_rng(0)
    bundle.embeddings = (real[picks] + rng.normal(0, 0.3, (rows, real.shape[1])) * real.std(axis=0)).astype(np.float32)
    bundle.index, bundle.manifest.recall_at_10 = build_index(bundle.embeddings, bundle.settings)
    paths, labels = catalog.paths.tolist(), catalog.labels.tolist()
    bundle.catalog = Catalog([paths[i] for i in picks], [labels[i] for i in picks],
                             [hashlib.sha1(str(i).encode()).hexdigest() for i in range(rows)])
    bundle.manifest.next_id = rows
    with ArtifactWriter(target) as writer:
        bundle.save(writer)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-report"))
    args = parser.parse_args()

    source, bundle = sample_fit(args.workdir / "sample-fit"), args.workdir / f"bundle-{args.images}"
    print(f"building a bundle of {args.images:,} rows ...", flush=True)
    clusters = build_bundle(source, bundle, args.images).index.nlist
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--artifacts", str(bundle),
                    "--out", str(args.workdir / "report.html")], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    size = (args.workdir / "report.html").stat().st_size
    print(f"report of {args.images:,} images: {wall:.1f} s, {size / 1e6:.1f} MB")
    write_section("bench_report", f"""
## Report at {args.images:,} images (`python benchmarks/bench_report.py --images {args.images}`)

Measured {time.strftime('%Y-%m-%d')} on {machine()}. `scripts/report.py` end to end (process start to HTML
written) on a bundle of {args.images:,} indexed vectors in {clusters} clusters, with the default
3,000-point t-SNE sample and 60 galleries. The bundle repeats a real fit of `data/sample` (200 photos) with small
jitter, since no folder of {args.images:,} photos is at hand; thumbnails and reconstructions read the real photos.

| figure | measured | target |
|---|---|---|
| report wall time | {wall:.1f} s | under 120 s |
| HTML size (self-contained) | {size / 1e6:.1f} MB | |
""")


if __name__ == "__main__":
    main()
