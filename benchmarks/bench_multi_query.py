"""Several photos as one query, and photos whose look counts against a result, on the labelled dev sets.

    python benchmarks/bench_multi_query.py [--sets clothing10,cifar10-test,caltech101,flowers5] [--workdir DIR]
                                           [--triples 40] [--beta 0.5]

On a default fit of each set (kept in ``--workdir``, made if missing, as bench_ranking makes them),
from the stored descriptors (what a query of an indexed photo gives): for each class, ``--triples``
random sets of 3 of its photos; each photo alone as a query, and the 3 as one query (the mean of
their unit descriptors), routed with the tuned nprobe and the fit's expansion, the 3 photos left out
of every result list; precision@10 against the class. Then "less like": each class's photos with one
photo of the class most often found among its results (its confusable class) as ``unlike``
(Rocchio: the query's unit descriptor less ``--beta`` times the unlike one's), counting that class
among the 10 results with and without. Prints the figures and writes docs/QUALITY.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from benchmarks.devsets import SETS, default_fit  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.search.searcher import combined_query  # noqa: E402

K = 10


def neighbour_labels(bundle: Bundle, queries: np.ndarray, leave_out: np.ndarray) -> np.ndarray:
    """The labels of the K results of each query, its ``leave_out`` ids left out of its results."""
    index, labels = bundle.index, np.asarray(bundle.catalog.labels.tolist())
    hits = index.search(queries, K + leave_out.shape[1], index.nprobe_, index.expansion, leave_out)
    rows = [[i for i in row if i >= 0 and i not in left][:K] for row, left in zip(hits.ids, leave_out)]
    return np.array([labels[row] for row in rows])


def measure(bundle: Bundle, triples: int, beta: float, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    labels = np.asarray(bundle.catalog.labels.tolist())
    unit = np.asarray(bundle.embeddings, np.float32)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) >= 4:
            picks += [rng.choice(members, 3, replace=False) for _ in range(triples)]
    picks = np.array(picks)
    truth = labels[picks[:, 0]]
    single = np.mean([(neighbour_labels(bundle, unit[picks[:, i]], picks) == truth[:, None]).mean()
                      for i in range(3)])
    combined = np.stack([combined_query(unit[triple], np.empty((0, unit.shape[1]))) for triple in picks])
    multi = (neighbour_labels(bundle, combined, picks) == truth[:, None]).mean()

    alone = neighbour_labels(bundle, unit[picks[:, 0]], picks[:, :1])
    confusable = {}
    for label in np.unique(truth):
        wrong = Counter(alone[truth == label][alone[truth == label] != label].ravel().tolist())
        if wrong:
            confusable[label] = wrong.most_common(1)[0][0]
    queries, unlikes, others = [], [], []
    for row, triple in enumerate(picks):
        other = confusable.get(truth[row])
        if other is None:
            continue
        queries.append(triple[0])
        unlikes.append(rng.choice(np.flatnonzero(labels == other)))
        others.append(other)
    queries, unlikes, others = np.array(queries), np.array(unlikes), np.array(others)
    leave_out = np.stack([queries, unlikes], axis=1)
    without = neighbour_labels(bundle, unit[queries], leave_out)
    rocchio = np.stack([combined_query(unit[q][None], unit[u][None], beta) for q, u in zip(queries, unlikes)])
    with_unlike = neighbour_labels(bundle, rocchio, leave_out)
    return {"queries": len(picks), "single": float(single), "multi": float(multi), "unlike_queries": len(queries),
            "confusable_without": float((without == others[:, None]).sum(axis=1).mean()),
            "confusable_with": float((with_unlike == others[:, None]).sum(axis=1).mean()),
            "precision_without": float((without == labels[queries][:, None]).mean()),
            "precision_with": float((with_unlike == labels[queries][:, None]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-ranking"))
    parser.add_argument("--triples", type=int, default=40)
    parser.add_argument("--beta", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        artifacts = default_fit(name, args.workdir)
        figures = measure(Bundle.load(artifacts), args.triples, args.beta)
        rows.append((name, figures))
        print(name, figures, flush=True)
    gains = [figures["multi"] - figures["single"] for _, figures in rows]
    lines = ["| set | triples | precision@10, one photo / three as one query | gain | unlike queries | results of the "
             "confusable class, without / with unlike | precision@10 without / with unlike |",
             "|---|---|---|---|---|---|---|"]
    for (name, f), gain in zip(rows, gains):
        lines.append(f"| {name} | {f['queries']} | {f['single']:.4f} / {f['multi']:.4f} | {gain:+.4f} | "
                     f"{f['unlike_queries']} | {f['confusable_without']:.2f} / {f['confusable_with']:.2f} | "
                     f"{f['precision_without']:.4f} / {f['precision_with']:.4f} |")
    lines.append(f"\nMean gain of three photos over one: {np.mean(gains):+.4f} precision@10.")
    print("\n".join(lines))
    write_section("bench_multi_query", "## Several photos as one query, and less like (issue 34)\n\n"
                  f"`python benchmarks/bench_multi_query.py --triples {args.triples} --beta {args.beta}` ({machine()}; "
                  "a default fit of each set; the stored descriptors as the queries; the query photos left out of "
                  "the results; routed, the fit's expansion; three photos: the mean of their unit descriptors; less "
                  f"like: the query's unit descriptor less {args.beta} times the unlike photo's).\n\n"
                  + "\n".join(lines), QUALITY_MD)


if __name__ == "__main__":
    main()
