"""Serve the search page and API: python scripts/serve.py [--artifacts DIR] [--host 127.0.0.1] [--port 8000]"""

import argparse

from pipeline import cli


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fitted index: a web page at / and a JSON API at /api.")
    parser.add_argument("--artifacts", default="artifacts", help="fitted artifacts folder (default: artifacts/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="let URL queries reach loopback and private-network addresses")
    args = parser.parse_args()

    def run() -> None:
        import uvicorn

        from pipeline.search import Searcher  # imported late: TensorFlow takes seconds to load
        from pipeline.server import MAX_PIXELS, create_app

        app = create_app(Searcher(args.artifacts, max_pixels=MAX_PIXELS), allow_private_urls=args.allow_private_urls)
        print(f"serving {args.artifacts} on http://{args.host}:{args.port}/", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    cli.run(run)


if __name__ == "__main__":
    main()
