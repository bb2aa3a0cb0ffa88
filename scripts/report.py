"""Write the HTML report of a fit: python scripts/report.py [--artifacts DIR] [--out report.html] [--png DIR]"""

import argparse

from pipeline import cli


def main() -> None:
    parser = argparse.ArgumentParser(description="A self-contained HTML report of what the model learned.")
    parser.add_argument("--artifacts", default="artifacts", help="fitted artifacts folder (default: artifacts/)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--png", metavar="DIR", help="also save each figure as a PNG in DIR")
    parser.add_argument("--max-points", type=int, default=3000, help="t-SNE sample size (default 3000)")
    parser.add_argument("--thumbnails", type=int, default=8, help="images shown per cluster (default 8)")
    parser.add_argument("--max-clusters", type=int, default=60, help="clusters shown, largest first (default 60)")
    args = parser.parse_args()

    def run() -> None:
        from pipeline.report import build_report  # imported late: TensorFlow takes seconds to load

        path = build_report(args.artifacts, args.out, max_points=args.max_points,
                            thumbnails_per_cluster=args.thumbnails, max_clusters=args.max_clusters, png_dir=args.png)
        print(f"report: {path}" + (f" (figures in {args.png})" if args.png else ""))

    cli.run(run)


if __name__ == "__main__":
    main()
