"""Why the nearest to the query is kept first: the ranking as it is, against sorting by one distance alone.

    python benchmarks/bench_ranking.py [--sets clothing10,cifar10-test,caltech101,flowers5] [--workdir DIR]

For each labelled set of ``../shared/data``: a fit with the default settings (kept in ``--workdir``
and reused), then every indexed image as a query against all the others (leave-one-out, routed with
the tuned nprobe, the fit's query expansion), ranked two ways on the same fit: as the index ranks
(the nearest to the query kept first, at its distance to the query; the others by their distance to
the expanded query) and sorted by one distance alone (each result at its distance to the expanded
query, the nearest to the query at the smaller of its two distances). Prints precision@1,
precision@10 and mAP@10 of both and writes them to docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from pipeline.index import clustered as index_module  # noqa: E402
from benchmarks.devsets import SETS, default_fit  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.index.clustered import SearchHits, nearest_of_rows  # noqa: E402
from pipeline.index.metrics import LabelledSet, without_self  # noqa: E402

K = 10


def sorted_by_one_distance(hits: SearchHits, first: SearchHits, usable: np.ndarray) -> SearchHits:
    """The alternative: the nearest to the query at the smaller of its two distances, every row sorted by it."""
    ids, distances = hits.ids.copy(), hits.distances.copy()
    for row, nearest, distance, keep in nearest_of_rows(hits, first, usable):
        if not keep.all():
            distance = min(distance, distances[row][~keep][0])
        rest_ids, rest_distances = ids[row][keep][: ids.shape[1] - 1], distances[row][keep][: ids.shape[1] - 1]
        place = int(np.searchsorted(rest_distances, distance))
        ids[row], distances[row] = np.insert(rest_ids, place, nearest), np.insert(rest_distances, place, distance)
    return SearchHits(distances, ids, hits.probed)


def scores(bundle: Bundle) -> dict[str, float]:
    """precision@1, precision@10 and mAP@10 of leave-one-out searches, routed, with the fit's expansion."""
    index, vectors = bundle.index, np.asarray(bundle.embeddings)
    own = np.arange(len(vectors))[:, None]
    ids = without_self(index.search(vectors, K + 1, index.nprobe_, index.expansion, own).ids, K)
    scored = LabelledSet.of(list(bundle.catalog.labels)).score(ids)
    return {"precision_at_1": scored["precision_at_1"], "precision_at_10": scored["precision_at_k"],
            "map_at_10": scored["map_at_k"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ranking"))
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        artifacts = default_fit(name, args.workdir)
        bundle = Bundle.load(artifacts)
        kept_first = scores(bundle)
        ranking = index_module._nearest_first
        index_module._nearest_first = sorted_by_one_distance
        try:
            one_distance = scores(bundle)
        finally:
            index_module._nearest_first = ranking
        rows.append((name, len(bundle.catalog), bundle.index.expansion, kept_first, one_distance))
        print(name, kept_first, one_distance, flush=True)
    lines = ["| set | images | expansion | precision@1 kept first / one distance | precision@10 kept first / one "
             "distance | mAP@10 kept first / one distance |", "|---|---|---|---|---|---|"]
    for name, images, expansion, kept_first, one_distance in rows:
        lines.append(f"| {name} | {images} | {expansion} | " + " | ".join(
            f"{kept_first[key]:.4f} / {one_distance[key]:.4f}" for key in ("precision_at_1", "precision_at_10",
                                                                          "map_at_10")) + " |")
    print("\n".join(lines))
    write_section("bench_ranking", "## Why the nearest to the query is kept first (issue 31)\n\n"
                  f"`python benchmarks/bench_ranking.py --sets {args.sets}` ({machine()}; a default fit of each set, "
                  "leave-one-out, routed, the fit's query expansion). 'kept first': the index's ranking, the nearest "
                  "to the query first at its distance to the query, the rest by their distance to the expanded query; "
                  "'one distance': every result at its distance to the expanded query, the nearest to the query at "
                  "the smaller of its two distances, sorted by it. The results' score (the number they are shown in "
                  "the order of) follows the ranking kept first.\n\n" + "\n".join(lines), QUALITY_MD)


if __name__ == "__main__":
    main()
