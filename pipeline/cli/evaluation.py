"""The commands that look at a fit: evaluate (precision@k and mAP@k against the reference baselines) and
report (the t-SNE map, the clusters' galleries, the training's figures)."""

from __future__ import annotations

import argparse
import json

from .flags import ALLOW_PICKLE_HELP, ARTIFACTS_HELP, check_writable, positive, runtime_flag


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="folder of images in class folders (the folder name is the label)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("-k", type=positive, default=10, help="neighbours per query")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    runtime_flag(parser)


def _evaluate(args: argparse.Namespace) -> None:
    from ..bundle.artifacts import Bundle
    from ..evaluate import evaluate

    report = evaluate(args.data_dir, Bundle.load(args.artifacts, args.allow_pickle), args.k, args.runtime)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    k, ours = report["k"], report["pipeline"]
    print(f"{report['images']} images in {report['data_dir']}, each a query against all the others (k={k}; searched "
          f"in {report['collection']})")
    print(f"{'method':<36} {'precision@1':>12} {'precision@' + str(k):>13} {'mAP@' + str(k):>8}")
    pipeline = f"pipeline (nprobe {ours['nprobe']}, expansion {ours['query_expansion']})"
    for name, scores in {pipeline: ours, **report["baselines"]}.items():
        print(f"{name:<36} {scores['precision_at_1']:>12.4f} {scores['precision_at_k']:>13.4f} {scores['map_at_k']:>8.4f}")
    print(f"recall@{k} of routed vs exact search: {ours['recall_vs_exact']:.4f}; "
          f"mean query {ours['query_ms']:.2f} ms routed, {ours['exact_query_ms']:.2f} ms exact "
          f"({ours['clusters']} clusters)")


def _report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    parser.add_argument("--png", metavar="DIR", help="also save each figure as a PNG in DIR")
    parser.add_argument("--max-points", type=positive, default=3000, help="t-SNE sample size")
    parser.add_argument("--thumbnails", type=positive, default=8, help="images shown per cluster")
    parser.add_argument("--max-clusters", type=positive, default=60, help="clusters shown, largest first")
    parser.add_argument("--projector", metavar="DIR",
                        help="also write the vectors, labels, paths and a thumbnail sprite for TensorBoard's "
                             "embedding projector into DIR: tensorboard --logdir DIR")


def _report(args: argparse.Namespace) -> None:
    from ..bundle.artifacts import Bundle

    check_writable(args.out)
    for folder in filter(None, (args.png, args.projector)):
        check_writable(folder, folder=True)
    if args.projector:
        from ..train.tensorboard import require_tensorboard

        require_tensorboard()
    bundle = Bundle.load(args.artifacts, args.allow_pickle)
    from ..report.build import build_report  # Matplotlib and scikit-learn's t-SNE: only once the bundle is known good

    path = build_report(bundle, args.out, max_points=args.max_points, thumbnails_per_cluster=args.thumbnails,
                        max_clusters=args.max_clusters, png_dir=args.png)
    print(f"report: {path}" + (f" (figures in {args.png})" if args.png else ""))
    if args.projector:
        from ..train.tensorboard import write_projector

        print(f"projector: {write_projector(bundle, args.projector)} (tensorboard --logdir {args.projector})")


COMMANDS = {
    "evaluate": (_evaluate_flags, _evaluate, "precision@k and mAP@k of the fit and of the reference baselines"),
    "report": (_report_flags, _report, "a self-contained HTML report of what the model learned"),
}
