"""The columnar catalog at 10 million rows: opened, its RSS, lookups by id; the JSON catalog beside it at 1 million.

    python benchmarks/bench_catalog.py [--rows 10000000] [--json-rows 1000000] [--workdir /tmp/bench-catalog]

Builds (once) catalogs of synthetic rows as a folder of photos would give them (paths like
``/photos/<class>/IMG_<n>.jpg``, 100 labels, random content hashes, sizes and modification times):
``--rows`` of them as bundle format 8 stores its catalog (``catalog.arrow``), and ``--json-rows`` as
format 7 stored it (``catalog.json``), with the Arrow catalog of the same rows. Then, each in a fresh
child process: the time to open the catalog as a bundle does (:meth:`Catalog.read`, or reading and
checking the JSON), the process's RSS after it, and the median over 200 rounds of looking up 10
random ids (row, path, label and content hash of each), side by side in one run. Written to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, rss_mb, write_section  # noqa: E402

LOOKUPS, ROUNDS = 10, 200


def build(path: Path, rows: int) -> None:
    """A catalog of ``rows`` synthetic rows at ``path`` (.arrow, or .json as format 7 wrote it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.bundle.catalog import SCHEMA, Catalog

    rng = np.random.default_rng(0)
    numbers = np.arange(rows, dtype=np.int64)
    labels = pc.binary_join_element_wise("class-", pa.array(numbers % 100).cast(pa.string()), "")
    paths = pc.binary_join_element_wise("/photos/", labels, "/IMG_", pa.array(numbers).cast(pa.string()), ".jpg", "")
    table = pa.table({
        "id": pa.array(numbers), "path": paths.cast(pa.large_string()), "label": labels.cast(pa.large_string()),
        "hash": pa.FixedSizeBinaryArray.from_buffers(pa.binary(20), rows, [None, pa.py_buffer(
            rng.integers(0, 256, rows * 20, dtype=np.uint8).tobytes())]),
        "size": pa.array(rng.integers(50_000, 5_000_000, rows)),
        "mtime": pa.array(rng.integers(1.6e18, 1.8e18, rows, dtype=np.int64)),
    }, schema=SCHEMA)
    catalog = Catalog._of(table, np.zeros(rows, np.int64), path)
    if path.suffix == ".json":
        path.write_text(json.dumps(catalog.to_json()))
    else:
        catalog.write(path)


def child(path: str, started: float) -> None:
    """Open the catalog, time it and the lookups, print one JSON line."""
    from pipeline.bundle.catalog import Catalog

    opened_at = time.time()
    if path.endswith(".json"):
        catalog = Catalog.from_json(json.loads(Path(path).read_text()), Path(path))
    else:
        catalog = Catalog.read(Path(path))
    opened = time.time()
    open_rss = rss_mb()
    rng = np.random.default_rng(1)
    ids, times = catalog.id_array(), []
    for _ in range(ROUNDS):
        wanted = rng.choice(len(catalog), LOOKUPS, replace=False)
        tick = time.perf_counter()
        rows = [catalog.row_of(int(ids[i])) for i in wanted]
        found = [(catalog.paths[row], catalog.labels[row], catalog.hashes[row]) for row in rows]
        times.append((time.perf_counter() - tick) * 1000)
        assert all(path.startswith("/photos/") for path, _, _ in found)
    print(json.dumps({"rows": len(catalog), "import_s": opened_at - started, "open_s": opened - opened_at,
                      "open_rss_mb": open_rss, "lookup_ms": statistics.median(times),
                      "lookup_p99_ms": float(np.percentile(times, 99)), "after_rss_mb": rss_mb(),
                      "after_anon_mb": rss_mb("RssAnon"), "after_file_mb": rss_mb("RssFile")}))


def measure(path: Path) -> dict:
    process = subprocess.run([sys.executable, __file__, "--child", str(path), str(time.time())],
                             capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(process.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--json-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-catalog"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], float(args.child[1]))
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = {f"Arrow, {args.rows:,} rows": args.workdir / f"catalog-{args.rows}.arrow",
             f"Arrow, {args.json_rows:,} rows": args.workdir / f"catalog-{args.json_rows}.arrow",
             f"JSON (format 7), {args.json_rows:,} rows": args.workdir / f"catalog-{args.json_rows}.json"}
    for path in cases.values():
        if not path.exists():
            print(f"building {path}", flush=True)
            build(path, int(path.stem.split("-")[1]))
    results = {name: measure(path) for name, path in cases.items()}
    rows = [f"| {name} | {path.stat().st_size / 1e6:,.0f} | {r['open_s']:.3f} | {r['open_rss_mb']:.0f} | "
            f"{r['lookup_ms']:.3f} | {r['lookup_p99_ms']:.3f} | {r['after_anon_mb']:.0f} + {r['after_file_mb']:.0f} |"
            for (name, r), path in zip(results.items(),
                                                                                            cases.values())]
    markdown = "\n".join([
        f"Catalog of synthetic rows (paths `/photos/class-k/IMG_n.jpg`, 100 labels, random hashes), each opened in a "
        f"fresh process as a bundle opens it ({machine()}). RSS is the whole process's after opening (Python, NumPy "
        f"and pyarrow included); a lookup is {LOOKUPS} random ids to their rows, paths, labels and content hashes, "
        f"median (and p99) of {ROUNDS} rounds. Targets at 10 million rows: opened in < 1 s, < 300 MB RSS, a lookup "
        f"of 10 ids < 1 ms. The file pages a lookup touches (with the kernel's read-ahead) count in RSS as page cache "
        f"that the kernel takes back under memory pressure; the last column splits them from anonymous memory.",
        "",
        "| catalog | file (MB) | open (s) | RSS after open (MB) | 10-id lookup p50 (ms) | p99 (ms) | RSS after "
        f"{ROUNDS} lookups: anonymous + file pages (MB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(markdown)
    write_section("bench_catalog", markdown)


if __name__ == "__main__":
    main()
