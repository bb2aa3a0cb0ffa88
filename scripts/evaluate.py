"""Measure retrieval quality on a labelled folder: python scripts/evaluate.py DATA_DIR [-k 10] [--json]"""

import argparse
import json

from pipeline import cli


def main() -> None:
    parser = argparse.ArgumentParser(description="precision@k and mAP@k of the fitted pipeline and of classic baselines.")
    parser.add_argument("data_dir", help="folder of images in class folders (the folder name is the label)")
    parser.add_argument("--artifacts", default="artifacts", help="fitted artifacts folder (default: artifacts/)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.k < 1:
        parser.error("-k must be at least 1")

    def run() -> None:
        from pipeline.evaluate import evaluate  # imported late: TensorFlow takes seconds to load

        report = evaluate(args.data_dir, args.artifacts, args.k)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        k, ours = report["k"], report["pipeline"]
        print(f"{report['images']} images in {report['data_dir']}, each a query against all the others (k={k})")
        print(f"{'method':<36} {'precision@' + str(k):>13} {'mAP@' + str(k):>8}")
        pipeline = f"pipeline (nprobe {ours['nprobe']}, expansion {ours['query_expansion']})"
        print(f"{pipeline:<36} {ours['precision_at_k']:>13.4f} {ours['map_at_k']:>8.4f}")
        for name, scores in report["baselines"].items():
            print(f"{name:<36} {scores['precision_at_k']:>13.4f} {scores['map_at_k']:>8.4f}")
        print(f"recall@{k} of routed vs exact search: {ours['recall_vs_exact']:.4f}; "
              f"mean query {ours['query_ms']:.2f} ms routed, {ours['exact_query_ms']:.2f} ms exact "
              f"({ours['clusters']} clusters)")

    cli.run(run)


if __name__ == "__main__":
    main()
