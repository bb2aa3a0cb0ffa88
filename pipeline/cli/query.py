"""The commands that answer queries: predict (one query, printed) and serve (the web page and JSON API, on one
machine or as a Ray Serve application)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from ..config import MAX_BATCH_WINDOW_MS
from ..errors import InputError, PipelineError
from .flags import (ALLOW_PICKLE_HELP, ARTIFACTS_HELP, check_writable, count_or_word, non_negative,
                    non_negative_float, number_from, positive, positive_float, runtime_flag, whole_at_least)


def _predict_flags(parser: argparse.ArgumentParser) -> None:
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--file", action="append", metavar="FILE",
                       help="query image file; repeat it to search with several photos as one query")
    query.add_argument("--url", help="query image URL (http or https)")
    parser.add_argument("-n", type=positive, default=10, help="number of results")
    parser.add_argument("--nprobe", type=count_or_word(("all",)),
                        help="clusters to search: a count, or all for exact search (default: tuned at fit)")
    parser.add_argument("--expansion", type=non_negative,
                        help="nearest neighbours averaged into the query to rank the others; 0 ranks by distance "
                             "to the query alone (default: the fit's --query-expansion)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="save a montage of the query and its neighbours")
    parser.add_argument("--timeout", type=positive_float, default=10.0, help="seconds allowed to download --url")
    parser.add_argument("--exclude-self", action="store_true", help="leave out indexed copies of the query image")
    parser.add_argument("--max-distance", type=non_negative_float, metavar="D",
                        help="keep only results at most D from the query (the 'to query' column): fewer than n "
                             "when fewer are that close")
    parser.add_argument("--unlike", action="append", metavar="FILE",
                        help="a photo whose look should count against a result (repeatable)")
    parser.add_argument("--explain", metavar="DIR",
                        help="also write, for each result, a PNG of the query and the result side by side, each under "
                             "a heatmap of where it shows what the other one shows, into DIR")
    parser.add_argument("--box", type=_box, metavar="X,Y,W,H",
                        help="search by this region of the query photo: its left, top, width and height as fractions "
                             "of the photo's width and height (0 to 1)")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    runtime_flag(parser)


def _box(text: str) -> tuple[float, float, float, float]:
    from ..search.searcher import parse_box

    try:
        return parse_box(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _predict(args: argparse.Namespace) -> None:
    from ..bundle.artifacts import Bundle
    from ..data.images import read_file
    from ..search.searcher import Searcher, SearchOptions

    if args.plot:
        check_writable(args.plot)
    if (args.box or args.explain) and (len(args.file or []) > 1 or args.unlike):
        raise InputError("--box and --explain are about one photo: search several photos, or unlike ones, without them")
    if args.explain:
        check_writable(args.explain, folder=True)
    if args.url:
        from ..data.fetch import check_url, fetch_url

        check_url(args.url)  # a malformed URL is told before anything loads
    options = SearchOptions(n=args.n, nprobe=args.nprobe, expansion=args.expansion, exclude_self=args.exclude_self,
                            max_distance=args.max_distance)
    photos = [(read_file(path), path) for path in args.file or []]
    unlike = [(read_file(path), path) for path in args.unlike or []]
    bundle = Bundle.load(args.artifacts, args.allow_pickle)  # cheap: the model loads with the Searcher
    photos = photos or [(fetch_url(args.url, args.timeout), args.url)]
    searcher = Searcher(bundle, runtime=args.runtime)
    if len(photos) > 1 or unlike:
        result = searcher.search_photos(photos, unlike, options)
    else:
        result = searcher.search_bytes(*photos[0], options, args.box)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"query {result.query}: nprobe {result.nprobe}, clusters {result.clusters}, expansion {result.expansion}")
        if result.combined:
            print(f"one query from {result.combined}")
        if result.box:
            print("by the region x {:.3f}, y {:.3f}, width {:.3f}, height {:.3f} of the query photo".format(*result.box))
        print(f"{'rank':>4}  {'score':>8}  {'distance':>8}  {'to query':>8}  {'cluster':>7}  {'label':<12}  path")
        for hit in result.results:
            marker = ("  (same image as the query)" if hit.same_image else
                      "  (nearest to the query itself: kept first)" if hit.ranked_by == "query" and result.expansion
                      else "")
            print(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.distance:>8.4f}  {hit.query_distance:>8.4f}  "
                  f"{hit.cluster:>7}  {hit.label or '-':<12}  {hit.path}{marker}")
        if not result.results:
            print("the index holds no image" if not len(bundle.catalog) else
                  f"no indexed image within distance {args.max_distance} of the query")
    if args.explain:
        _write_explanations(searcher, searcher.prepared(*photos[0], args.box), result, args.explain,
                            sys.stderr if args.json else sys.stdout)
    if args.plot:
        from ..data.images import decode_image
        from ..report.plots import save_montage

        titles = ["query"] + ["query too"] * (len(photos) - 1) + ["less like"] * len(unlike)
        save_montage([(decode_image(*photo, min_size=256), title) for photo, title in zip([*photos, *unlike], titles)],
                     result, args.plot)
        print(f"montage: {args.plot}", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON


def _write_explanations(searcher, query, result, folder: str, out) -> None:
    """--explain: one PNG a result, RANK-ID.png in ``folder``; where they went said on ``out``."""
    from pathlib import Path

    from ..report.plots import explain_png

    Path(folder).mkdir(exist_ok=True)
    explanations = searcher.explain(query, [hit.id for hit in result.results])
    for hit, explanation in zip(result.results, explanations):
        png = explain_png(explanation, ("query", f"#{hit.rank}: {Path(hit.path).name}"))
        (Path(folder) / f"{hit.rank:02d}-{hit.id}.png").write_bytes(png)
    print(f"explained: {len(result.results)} results in {folder}", file=out)


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=whole_at_least(1, 65535), default=8000, help="port to listen on")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="let URL queries reach loopback and private-network addresses")
    parser.add_argument("--batch-window-ms", type=number_from(0, strict=False, most=MAX_BATCH_WINDOW_MS), default=5.0,
                        metavar="MS", help="queries arriving within this many ms of each other are encoded in one call "
                                           f"(0: each alone; at most {MAX_BATCH_WINDOW_MS:g})")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("--reload-seconds", type=non_negative_float, default=2.0, metavar="S",
                        help="look this often for a newer bundle in the artifacts folder (from a fit, add, sync or "
                             "remove run meanwhile) and serve it; 0: never")
    parser.add_argument("--write-token-file", metavar="FILE",
                        help="allow DELETE /api/images/ID for requests with 'Authorization: Bearer TOKEN', TOKEN being "
                             "this file's content (at least 16 characters; or $IMGSIM_WRITE_TOKEN; neither: deleting "
                             "is off). Never on the command line, where other users of the machine can read it")
    parser.add_argument("--allowed-hosts", metavar="HOST,...",
                        help="the host names requests may address (their Host header); default: the --host address and "
                             "localhost, or any host when bound to every address (0.0.0.0 or ::)")
    parser.add_argument("--max-queue-ms", type=non_negative_float, default=500.0, metavar="MS",
                        help="a search expected to wait longer than this is refused at once with 503 and Retry-After")
    runtime_flag(parser)
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="serve as a Ray Serve application on a Ray cluster: 'auto' or an address joins a running "
                             "one; no address starts one on this machine (needs pip install -e \".[ray]\")")
    parser.add_argument("--shards", type=positive, metavar="N",
                        help="with --ray: index shards, each holding whole clusters (default: one per 1.5 GiB of the "
                             "index's vectors)")
    parser.add_argument("--shard-replicas", type=positive, default=1, metavar="R",
                        help="with --ray: replicas of each shard (2: a replica lost fails no query)")
    parser.add_argument("--encoder-replicas", type=_replica_bounds, default=(1, 1), metavar="MIN[-MAX]",
                        help="with --ray: encoder replicas, autoscaled between MIN and MAX by the queries waiting")
    parser.add_argument("--encoder-gpus", type=non_negative_float, default=0.0, metavar="G",
                        help="with --ray: each encoder replica takes G of a GPU (0.25: four share one) and runs the "
                             "encoder on it, in mixed precision (0: LiteRT on CPUs)")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ..bundle.artifacts import Bundle
    from ..search.searcher import Searcher
    from ..serve.server import create_app
    from ..serve.service import MAX_QUERY_PIXELS, check_write_token

    token = _write_token(args.write_token_file)
    check_write_token(token)  # before anything loads
    if args.allowed_hosts:
        hosts = [host.strip() for host in args.allowed_hosts.split(",") if host.strip()]
    else:
        hosts = None if args.host in ("0.0.0.0", "::", "") else [args.host, "localhost", "127.0.0.1", "::1"]
    service = {"allow_private_urls": args.allow_private_urls, "write_token": token, "reload_seconds": args.reload_seconds,
               "allowed_hosts": hosts, "max_queue_ms": args.max_queue_ms}
    if args.ray is not None:
        return _serve_on_ray(args, service)
    if args.shards is not None or args.shard_replicas != 1 or args.encoder_replicas != (1, 1) or args.encoder_gpus:
        raise InputError("--shards, --shard-replicas, --encoder-replicas and --encoder-gpus are for serve --ray")
    searcher = Searcher(Bundle.load(args.artifacts, args.allow_pickle), max_pixels=MAX_QUERY_PIXELS,
                        batch_window_ms=args.batch_window_ms, runtime=args.runtime)
    app = create_app(searcher, **service)
    print(f"serving {args.artifacts} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _serve_on_ray(args: argparse.Namespace, service: dict) -> None:
    from ..serve.service import MAX_QUERY_PIXELS

    if args.runtime == "keras" or args.allow_pickle:
        raise InputError("serve --ray runs the fit's LiteRT export: --runtime keras and --allow-pickle are for serve "
                         "without --ray")
    try:
        from ..serve.ray_server import RayServeOptions, run
    except ImportError:
        raise InputError('--ray needs the Ray extra: pip install -e ".[ray]"') from None
    options = RayServeOptions(args.artifacts, args.shards, args.shard_replicas, args.encoder_replicas,
                              args.batch_window_ms, MAX_QUERY_PIXELS, service, args.encoder_gpus)
    run(options, None if args.ray == "local" else args.ray, args.host, args.port)


def _replica_bounds(text: str) -> tuple[int, int]:
    """MIN or MIN-MAX replicas, whole numbers from 1, MIN at most MAX."""
    low, _, high = text.partition("-")
    if not (low.isdecimal() and (high or low).isdecimal() and 1 <= int(low) <= int(high or low) <= 1000):
        raise argparse.ArgumentTypeError(f"replicas must be MIN or MIN-MAX, whole numbers from 1 with MIN <= MAX, "
                                         f"got {text!r}")
    return int(low), int(high or low)


def _write_token(path: Optional[str]) -> Optional[str]:
    """The service's write token: the file's content, else $IMGSIM_WRITE_TOKEN, else none."""
    if path is None:
        return os.environ.get("IMGSIM_WRITE_TOKEN") or None
    from ..data.images import read_file

    try:
        return read_file(path, 4096).decode().strip() or None
    except UnicodeDecodeError:
        raise InputError(f"{path}: the write token file is not text") from None


COMMANDS = {
    "predict": (_predict_flags, _predict, "rank the fitted images by similarity to a query image"),
    "serve": (_serve_flags, _serve, "serve a web page at / and a JSON API at /api"),
}
