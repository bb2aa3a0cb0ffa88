"""Find the indexed images most like a query: python scripts/predict.py (--file PATH | --url URL) [-n N]"""

import argparse
import json

from pipeline import cli
from pipeline.config import parse_count_or_word


def main() -> None:
    parser = argparse.ArgumentParser(description="Rank the fitted images by similarity to a query image.")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--file", help="query image file")
    query.add_argument("--url", help="query image URL (http or https)")
    parser.add_argument("-n", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--nprobe", help="clusters to search: a count, or all for exact search (default: tuned at fit)")
    parser.add_argument("--expansion", type=int,
                        help="nearest neighbours averaged into the query to rank the others; 0 ranks by distance "
                             "alone (default: the fit's --query-expansion)")
    parser.add_argument("--artifacts", default="artifacts", help="fitted artifacts folder (default: artifacts/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="save a montage of the query and its neighbours")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed to download --url (default 10)")
    parser.add_argument("--exclude-self", action="store_true", help="leave out indexed copies of the query image")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("-n must be at least 1")
    if args.expansion is not None and args.expansion < 0:
        parser.error("--expansion must be at least 0")

    def run() -> None:
        from pipeline.fetch import fetch_url
        from pipeline.images import read_file
        from pipeline.search import Searcher  # imported late: TensorFlow takes seconds to load

        searcher = Searcher(args.artifacts)
        options = dict(n=args.n, exclude_self=args.exclude_self, expansion=args.expansion,
                       nprobe=parse_count_or_word(args.nprobe, ("all",)) if args.nprobe else None)
        data, source = (read_file(args.file), args.file) if args.file else (fetch_url(args.url, args.timeout), args.url)
        result = searcher.search_bytes(data, source, **options)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(f"query {result.query}: nprobe {result.nprobe}, clusters {result.clusters}, "
                  f"expansion {result.expansion}")
            print(f"{'rank':>4}  {'distance':>8}  {'cluster':>7}  {'label':<12}  path")
            for hit in result.results:
                marker = "  (same image as the query)" if hit.same_image else ""
                print(f"{hit.rank:>4}  {hit.distance:>8.4f}  {hit.cluster:>7}  {hit.label or '-':<12}  {hit.path}{marker}")
        if args.plot:
            from pipeline.images import decode_image
            from pipeline.plots import save_montage

            save_montage(decode_image(data, source), result, args.plot)
            print(f"montage: {args.plot}")

    cli.run(run)


if __name__ == "__main__":
    main()
