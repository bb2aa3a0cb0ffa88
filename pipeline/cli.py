"""The command line: one console command, ``imgsim``, with a subcommand per operation.

    imgsim fit DATA_DIR [--artifacts DIR] [a flag for every FitConfig setting]
    imgsim predict (--file PATH | --url URL) [-n N] [--json] ...
    imgsim add NEW_DIR | sync | remove PATH_OR_ID... | duplicates | evaluate DATA_DIR | report | serve | upgrade

``scripts/*.py`` run the same subcommands. A command holds no logic beyond flags and printing;
typed errors become one line on stderr and an exit code (0 ok, 2 bad input, 1 anything else).
Only ``fit`` (and ``--runtime keras``) imports TensorFlow, inside the command; every other command runs the
fitted encoder's LiteRT export (:mod:`pipeline.runtime`), and checks its input before it loads a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from typing import Callable, Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from .config import (BACKBONE_DEFAULTS, CHOICES, MAX_BATCH_WINDOW_MS, RUNTIMES, SETTING_HELP, WORDS, FitConfig,
                     parse_count_or_word, parse_extensions)
from . import __version__
from .errors import InputError, PipelineError, shown

ARTIFACTS_HELP = "fitted artifacts folder"
MAX_ERROR_CHARACTERS = 2000  # an error line longer than this is cut in the middle
ALLOW_PICKLE_HELP = ("read a bundle of the previous format, whose index is a pickle: loading it can run code, so only "
                     "for a bundle you made yourself")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` (default: the process's arguments), run the subcommand, exit with its code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, never glued onto one
            code = args.command(args) or 0
    except PipelineError as exc:
        print(f"error: {shown(str(exc), MAX_ERROR_CHARACTERS)}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # the reader of the output went away (| head): stop quietly, as Unix tools do
        code = 1
    except OSError as exc:  # e.g. an output file in a read-only folder
        where = f"{shown(str(exc.filename))}: " if exc.filename else ""
        print(f"error: {where}{shown(str(exc.strerror or exc))}", file=sys.stderr)
        code = 1
    _exit(code)


def _exit(code: int) -> None:
    """End the process at once: Python's own teardown of TensorFlow's objects takes over a second
    (measured 1.3 s after a sync), and nothing of ours is left to clean up by then. A local Ray
    cluster that this process started is shut down first, and the output is flushed."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # what is left for a reader that went away is dropped
            pass
    os._exit(code)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command line."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one worth showing and its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgsim", description="Image-similarity search on your own photos.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"imgsim {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for name, add_flags, command, summary in (
        ("fit", _fit_flags, _fit, "train on a folder of images and index them"),
        ("predict", _predict_flags, _predict, "rank the fitted images by similarity to a query image"),
        ("add", _add_flags, _add, "embed new images with the fitted encoder and add them to the index"),
        ("sync", _sync_flags, _sync, "rescan the fitted folders: add new, re-embed changed, drop deleted images"),
        ("remove", _remove_flags, _remove, "drop images from the index by path or id"),
        ("duplicates", _duplicates_flags, _duplicates, "list groups of near-duplicate images"),
        ("evaluate", _evaluate_flags, _evaluate, "precision@k and mAP@k of the fit and of the reference baselines"),
        ("report", _report_flags, _report, "a self-contained HTML report of what the model learned"),
        ("serve", _serve_flags, _serve, "serve a web page at / and a JSON API at /api"),
        ("restore", _restore_flags, _restore, "make a kept earlier bundle the current one again"),
        ("upgrade", _upgrade_flags, _upgrade, "bring a bundle of an older format to the current one"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
                                  formatter_class=_HelpFormatter, allow_abbrev=False)
        sub.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
        add_flags(sub)
        sub.set_defaults(command=command)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.DEBUG if verbose else logging.INFO)
    # TensorFlow's Python notices (e.g. retracing) are not the user's concern unless asked for
    logging.getLogger("tensorflow").setLevel(logging.WARNING if verbose else logging.ERROR)


def check_writable(path: str, folder: bool = False) -> None:
    """InputError, before any work, when ``path`` (a file to write, or with ``folder`` a folder to
    make and fill) cannot be written: its folder missing or read-only, or a folder in its place."""
    target = os.path.abspath(path)
    parent = target if folder and os.path.isdir(target) else os.path.dirname(target)
    if not folder and os.path.isdir(target):
        raise InputError(f"{path}: cannot write the output there (it is a folder)")
    if not os.path.isdir(parent):
        raise InputError(f"{path}: cannot write the output there (no folder {parent})")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: cannot write the output there ({parent} is not writable)")


def print_outcome(skipped: list, artifacts: object, out=None) -> None:
    """The closing lines of a command that wrote artifacts: every skipped file, then where it went
    (on ``out``, default stdout)."""
    for item in skipped:
        print(f"skipped {shown(item.path)}: {shown(item.reason)}", file=out)
    print(f"artifacts: {artifacts}", file=out)


# fit: one flag per FitConfig field


def _fit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="folder of images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help="output folder")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write the training's curves (and, from pixels, reconstructions) for TensorBoard "
                             "into DIR: tensorboard --logdir DIR")
    _ray_flags(parser)
    hints = typing.get_type_hints(FitConfig)
    for field in dataclasses.fields(FitConfig):
        flag, kind = "--" + field.name.replace("_", "-"), hints[field.name]
        options: dict = {"help": SETTING_HELP[field.name], "default": field.default}
        if field.default is None:  # the backbone's default
            per_backbone = ", ".join(f"{defaults[field.name]} with {name}" for name, defaults in BACKBONE_DEFAULTS.items())
            options["help"] += f" (default: {per_backbone})"
            options["default"] = argparse.SUPPRESS
        if field.name in CHOICES:
            options["choices"] = CHOICES[field.name]
        elif field.name in WORDS:
            options["type"] = _count_or_word(WORDS[field.name])
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif field.name == "filters":
            options["type"] = _int_list
            options["default"] = ",".join(map(str, field.default))  # argparse parses a string default too
        elif field.name == "extensions":
            options["type"] = _extension_list
        else:
            options["type"] = next(t for t in (int, float, str) if t in typing.get_args(kind) + (kind,))
        if "choices" not in options and kind is not bool:
            options["metavar"] = field.name.upper()
        parser.add_argument(flag, dest=f"setting_{field.name}", **options)


def _count_or_word(words: tuple[str, ...]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return parse_count_or_word(text, words)
        except PipelineError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _extension_list(text: str) -> tuple[str, ...]:
    try:
        return parse_extensions(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fit(args: argparse.Namespace) -> None:
    settings = {name[len("setting_"):]: value for name, value in vars(args).items() if name.startswith("setting_")}
    config = FitConfig(**settings)
    if args.tensorboard:
        from .tensorboard import require_tensorboard

        check_writable(args.tensorboard, folder=True)
        require_tensorboard()
    from .fit import fit  # TensorFlow takes seconds to load

    summary = fit(args.data_dir, args.artifacts, config, _engine(args), args.tensorboard)
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in summary.stage_seconds.items())
    print(f"fitted {summary.images} images ({len(summary.skipped)} skipped) in {summary.seconds:.1f}s: {stages}")
    print(f"{summary.epochs_run} epochs, {summary.clusters} clusters, nprobe {summary.nprobe} "
          f"(recall@10 vs exact search {summary.recall_at_10:.3f})")
    print_outcome(summary.skipped, summary.artifacts)


# predict


def _predict_flags(parser: argparse.ArgumentParser) -> None:
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--file", action="append", metavar="FILE",
                       help="query image file; repeat it to search with several photos as one query")
    query.add_argument("--url", help="query image URL (http or https)")
    parser.add_argument("-n", type=_positive, default=10, help="number of results")
    parser.add_argument("--nprobe", type=_count_or_word(("all",)),
                        help="clusters to search: a count, or all for exact search (default: tuned at fit)")
    parser.add_argument("--expansion", type=_non_negative,
                        help="nearest neighbours averaged into the query to rank the others; 0 ranks by distance "
                             "to the query alone (default: the fit's --query-expansion)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="save a montage of the query and its neighbours")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds allowed to download --url")
    parser.add_argument("--exclude-self", action="store_true", help="leave out indexed copies of the query image")
    parser.add_argument("--max-distance", type=_non_negative_float, metavar="D",
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
    _runtime_flag(parser)


def _runtime_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="what runs the fitted encoder: its LiteRT export (no TensorFlow; the default where "
                             "LiteRT is installed) or its Keras model (TensorFlow; for GPUs and comparison)")


def _whole_at_least(least: int, most: Optional[int] = None) -> Callable[[str], int]:
    """A flag's type: a whole number from ``least`` (to ``most``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {text}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {text}")
        return value

    return parse


def _number_from(least: float, strict: bool, most: float = math.inf) -> Callable[[str], float]:
    """A flag's type: a finite number above ``least`` (``strict``) or from it, and at most ``most``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {shown(text, 40)!r}") from None
        if not (value > least if strict else value >= least) or value == math.inf:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be a finite number {'above' if strict else 'from'} {least:g}, "
                                             f"got {shown(text, 40)}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {shown(text, 40)}")
        return value

    return parse


_positive, _non_negative = _whole_at_least(1), _whole_at_least(0)


def _box(text: str) -> tuple[float, float, float, float]:
    from .search import parse_box

    try:
        return parse_box(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
_non_negative_float, _positive_float = _number_from(0, strict=False), _number_from(0, strict=True)


def _predict(args: argparse.Namespace) -> None:
    from .artifacts import Bundle
    from .images import read_file
    from .search import Searcher, SearchOptions

    if args.plot:
        check_writable(args.plot)
    if (args.box or args.explain) and (len(args.file or []) > 1 or args.unlike):
        raise InputError("--box and --explain are about one photo: search several photos, or unlike ones, without them")
    if args.explain:
        check_writable(args.explain, folder=True)
    if args.url:
        from .fetch import check_url, fetch_url

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
        from .images import decode_image
        from .plots import save_montage

        titles = ["query"] + ["query too"] * (len(photos) - 1) + ["less like"] * len(unlike)
        save_montage([(decode_image(*photo, min_size=256), title) for photo, title in zip([*photos, *unlike], titles)],
                     result, args.plot)
        print(f"montage: {args.plot}", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON


def _write_explanations(searcher, query, result, folder: str, out) -> None:
    """--explain: one PNG a result, RANK-ID.png in ``folder``; where they went said on ``out``."""
    from pathlib import Path

    from .plots import explain_png

    Path(folder).mkdir(exist_ok=True)
    explanations = searcher.explain(query, [hit.id for hit in result.results])
    for hit, explanation in zip(result.results, explanations):
        png = explain_png(explanation, ("query", f"#{hit.rank}: {Path(hit.path).name}"))
        (Path(folder) / f"{hit.rank:02d}-{hit.id}.png").write_bytes(png)
    print(f"explained: {len(result.results)} results in {folder}", file=out)


# add, evaluate, report, serve


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("new_dir", help="folder of new images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    _mass_removal_flag(parser, "add")
    _ray_flags(parser)
    _runtime_flag(parser)


def _add(args: argparse.Namespace) -> None:
    from .collection import add_images

    print_change(add_images(args.new_dir, args.artifacts, _engine(args), args.allow_mass_removal))


def _sync_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    _mass_removal_flag(parser, "sync")
    _ray_flags(parser)
    _runtime_flag(parser)


def _sync(args: argparse.Namespace) -> None:
    from .collection import sync

    print_change(sync(args.artifacts, _engine(args), args.allow_mass_removal))


def _mass_removal_flag(parser: argparse.ArgumentParser, command: str) -> None:
    emptied = " or every image of an emptied folder" if command == "sync" else ""
    parser.add_argument("--allow-mass-removal", action="store_true",
                        help=f"let the {command} drop more than the fit's max_removal_share of the index (20%% by "
                             f"default), whether the files are gone or no longer decode{emptied}; without it such "
                             f"a {command} changes nothing")


def _ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="decode and embed on a Ray cluster: its address, or none to start one on this machine "
                             '(needs pip install -e ".[ray]")')
    parser.add_argument("--ray-workers", type=_positive, metavar="N",
                        help="encoder actors on the cluster (default: one per two CPUs)")
    parser.add_argument("--ray-gpus-per-worker", type=_non_negative_float, default=0.0, metavar="G",
                        help="GPUs each encoder actor takes, fractions allowed (needs the gpu extra and GPU nodes)")


def _engine(args: argparse.Namespace):
    """Where the command embeds: on the Ray cluster the flags ask for, else here."""
    if args.ray is None:
        from .engine import LocalEngine

        return LocalEngine(getattr(args, "runtime", None))
    from .distributed import RayEngine

    return RayEngine(address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                     gpus_per_worker=args.ray_gpus_per_worker, runtime=getattr(args, "runtime", None))


def _remove_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="PATH_OR_ID", help="indexed images, by path or by id")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)


def _remove(args: argparse.Namespace) -> None:
    from .collection import remove_images

    print_change(remove_images(args.images, args.artifacts))


# what a pair must reach to be verified a copy: the defaults are verification.Thresholds', not imported here (that
# module loads OpenCV, and every command builds the parser; tests/test_duplicates.py checks that the help states them)
_THRESHOLD_FLAGS = (
    ("--min-inliers", _whole_at_least(3, 400), "N", "feature matches that must agree with one affine map (default: 12)"),
    ("--min-inlier-ratio", _number_from(0, False, 1), "R", "the share of the feature matches that must agree with it (default: 0.15)"),
    ("--min-correlation", _number_from(0, False, 1), "C",
     "the two images aligned must correlate by this much (default: 0.9)"),
    ("--max-changed", _number_from(0, False, 1), "S",
     "and differ on at most this share of their overlap (default: 0.05)"))


def _duplicates_flags(parser: argparse.ArgumentParser) -> None:
    # the default is duplicates.CANDIDATE_DISTANCE, not imported here for the same reason as the thresholds'
    parser.add_argument("folder", nargs="?", metavar="DIR",
                        help="look in this folder, with no fit: the pretrained backbone's descriptors and the same "
                             "verification; nothing is written but the cache (--cache). Without it: the fitted "
                             "collection in --artifacts")
    parser.add_argument("--max-distance", type=_non_negative_float, metavar="D",
                        help="compare two images only when their descriptors are closer than this (cosine "
                             "distance; default: 0.5); each image's nearest is always compared. Every pair compared "
                             "is verified on the images themselves")
    for flag, parse, metavar, text in _THRESHOLD_FLAGS:
        parser.add_argument(flag, type=parse, metavar=metavar, help=text)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a list")
    parser.add_argument("--ground-truth", metavar="FILE",
                        help="score the groups against your own labels: a JSON object of each file to the list of "
                             "its copies (as imagededup's evaluate takes); prints pair precision, recall and F1")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained page of the groups")
    parser.add_argument("--move-to", metavar="DIR",
                        help="move every group's images but the one to keep into DIR, at their paths relative to "
                             "the folder they were found in (never deleting, never overwriting), then drop them from "
                             "the index (with a fit)")
    parser.add_argument("--extensions", type=_extension_list, metavar="EXTENSIONS",
                        help="with DIR: " + SETTING_HELP["extensions"])
    parser.add_argument("--cache", metavar="DIR",
                        help="with DIR: where descriptors, local features and verdicts are kept by content (default: "
                             "$XDG_CACHE_HOME/imgsim/duplicates, else ~/.cache/imgsim/duplicates)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)


def _duplicates(args: argparse.Namespace) -> int:
    from .ground_truth import read_ground_truth, score_groups

    if args.html:
        check_writable(args.html)
    labels = read_ground_truth(args.ground_truth) if args.ground_truth else None
    found, roots, paths = _find_copies(args)
    scores = None
    if labels is not None:
        groups = [[member.path for member in group.members] for group in found.groups]
        try:
            scores = score_groups(groups, labels, paths, roots)
        except InputError as exc:
            raise InputError(f"{args.ground_truth}: {exc}") from None
    if args.json:
        extra = {} if scores is None else {"ground_truth": scores.to_dict()}
        print(json.dumps({**found.to_dict(), **extra}, indent=2))
    else:
        _print_groups(found, scores)
    out = sys.stderr if args.json else sys.stdout
    if args.html:
        from .pages import write_duplicates_page

        print(f"page: {write_duplicates_page(found, roots, args.html)}", file=out)
    if args.move_to:
        return _move_duplicates(found.groups, roots, args, out)
    return 0


def _find_copies(args: argparse.Namespace):
    """The copies the command looks for, in a folder or a fit: (Duplicates, the folders, every image's path
    when a ground truth needs them)."""
    from .duplicates import CANDIDATE_DISTANCE  # OpenCV and SciPy: once the input is known good

    distance = CANDIDATE_DISTANCE if args.max_distance is None else args.max_distance
    if args.folder is not None:
        from .folder_copies import find_in_folder
        from .images import find_images

        found = find_in_folder(args.folder, distance, _thresholds(args), args.cache, extensions=args.extensions)
        paths = ([record.path for record in find_images(args.folder, extensions=args.extensions)]
                 if args.ground_truth else [])
        return found, [os.path.realpath(args.folder)], paths
    if args.cache is not None:
        raise InputError("--cache is for a folder (imgsim duplicates DIR); a fit's cache is in its artifacts folder")
    if args.extensions is not None:
        raise InputError("--extensions is for a folder (imgsim duplicates DIR); a fit keeps its own (fit --extensions)")
    from .artifacts import Bundle
    from .duplicates import find_duplicates

    bundle = Bundle.load(args.artifacts, args.allow_pickle)
    return (find_duplicates(bundle, distance, thresholds=_thresholds(args)), bundle.manifest.roots,
            bundle.catalog.paths.tolist())


def _print_groups(found, scores) -> None:
    """The groups as the command lists them, with the scores against a ground truth if any."""
    images = sum(len(group.members) for group in found.groups)
    groups, pairs = len(found.groups), found.compared
    print(f"{groups} group{'' if groups == 1 else 's'} of copies ({images} of {found.images} images), "
          f"from {pairs} candidate pair{'' if pairs == 1 else 's'} verified on the images")
    for number, group in enumerate(found.groups, start=1):
        print(f"group {number}: {len(group.members)} images; keep {group.keeper.id}: {group.why}")
        for member in group.members:
            check = member.verification
            mark = ", ".join(filter(None, ["keep" if member is group.keeper else "",
                                           "representative" if check is None else check.alignment,
                                           "mirrored" if check is not None and check.mirrored else ""]))
            print(f"  {member.id:>7}  {member.path}  ({member.width}x{member.height}, {mark})")
    for path in found.unreadable:
        print(f"unreadable, not compared: {shown(path)}")
    if scores is not None:
        print(scores.line())


def _thresholds(args: argparse.Namespace):
    """The verification's thresholds: the defaults, but those given as flags."""
    from .verification import Thresholds

    given = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, *_ in _THRESHOLD_FLAGS}
    return Thresholds(**{name: value for name, value in given.items() if value is not None})


def _move_duplicates(groups, roots: list[str], args: argparse.Namespace, out) -> int:
    """--move-to: move the copies, drop what moved from the index (with a fit), say what happened."""
    from .collection import remove_images
    from .duplicates import move_duplicates

    moved, left, problem = move_duplicates(groups, roots, args.move_to, _thresholds(args))
    for path in left:
        print(f"not moved, not verified as a copy on the images now: {shown(path)}", file=out)
    print(f"moved {len(moved)} files into {args.move_to}", file=out)
    if moved and args.folder is None:
        print_change(remove_images(moved, args.artifacts), out)
    if problem is not None:
        raise InputError(f"{problem}; the files moved before it are " +
                         ("out of the index" if args.folder is None else "in their new place"))
    return 0


def print_change(change, out=None) -> None:
    """What an add, sync or removal did (once): its counts, each image it took out of the index, each
    file removed by hand that it brought back, each file it found unreadable, and where the bundle
    is (on ``out``, default stdout)."""
    counts = [f"{change.added} added", f"{change.changed} changed", f"{change.removed} removed"]
    if change.action != "remove":
        counts += [f"{change.unchanged} unchanged", f"{len(change.skipped)} skipped"]
    print(f"{change.action}: {', '.join(counts)} in {change.seconds:.1f}s; {change.images} indexed, nprobe "
          f"{change.nprobe}", file=out)
    for image_id, path in change.dropped:
        print(f"removed {image_id}: {shown(path)}", file=out)
    for path in change.readded:
        print(f"re-added {shown(path)}: it had been removed by hand, and this add named its folder", file=out)
    if change.known_unreadable:
        print(f"{change.known_unreadable} file{'s' if change.known_unreadable > 1 else ''} unreadable when last read "
              f"and unchanged since, not read again (listed when first found)", file=out)
    print_outcome(change.skipped, change.artifacts, out)


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="folder of images in class folders (the folder name is the label)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("-k", type=_positive, default=10, help="neighbours per query")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _runtime_flag(parser)


def _evaluate(args: argparse.Namespace) -> None:
    from .artifacts import Bundle
    from .evaluate import evaluate

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
    parser.add_argument("--max-points", type=_positive, default=3000, help="t-SNE sample size")
    parser.add_argument("--thumbnails", type=_positive, default=8, help="images shown per cluster")
    parser.add_argument("--max-clusters", type=_positive, default=60, help="clusters shown, largest first")
    parser.add_argument("--projector", metavar="DIR",
                        help="also write the vectors, labels, paths and a thumbnail sprite for TensorBoard's "
                             "embedding projector into DIR: tensorboard --logdir DIR")


def _report(args: argparse.Namespace) -> None:
    from .artifacts import Bundle

    check_writable(args.out)
    for folder in filter(None, (args.png, args.projector)):
        check_writable(folder, folder=True)
    if args.projector:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    bundle = Bundle.load(args.artifacts, args.allow_pickle)
    from .report import build_report  # Matplotlib and scikit-learn's t-SNE: only once the bundle is known good

    path = build_report(bundle, args.out, max_points=args.max_points, thumbnails_per_cluster=args.thumbnails,
                        max_clusters=args.max_clusters, png_dir=args.png)
    print(f"report: {path}" + (f" (figures in {args.png})" if args.png else ""))
    if args.projector:
        from .tensorboard import write_projector

        print(f"projector: {write_projector(bundle, args.projector)} (tensorboard --logdir {args.projector})")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_whole_at_least(1, 65535), default=8000, help="port to listen on")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="let URL queries reach loopback and private-network addresses")
    parser.add_argument("--batch-window-ms", type=_number_from(0, strict=False, most=MAX_BATCH_WINDOW_MS), default=5.0,
                        metavar="MS", help="queries arriving within this many ms of each other are encoded in one call "
                                           f"(0: each alone; at most {MAX_BATCH_WINDOW_MS:g})")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("--reload-seconds", type=_non_negative_float, default=2.0, metavar="S",
                        help="look this often for a newer bundle in the artifacts folder (from a fit, add, sync or "
                             "remove run meanwhile) and serve it; 0: never")
    parser.add_argument("--write-token-file", metavar="FILE",
                        help="allow DELETE /api/images/ID for requests with 'Authorization: Bearer TOKEN', TOKEN being "
                             "this file's content (at least 16 characters; or $IMGSIM_WRITE_TOKEN; neither: deleting "
                             "is off). Never on the command line, where other users of the machine can read it")
    parser.add_argument("--allowed-hosts", metavar="HOST,...",
                        help="the host names requests may address (their Host header); default: the --host address and "
                             "localhost, or any host when bound to every address (0.0.0.0 or ::)")
    parser.add_argument("--max-queue-ms", type=_non_negative_float, default=500.0, metavar="MS",
                        help="a search expected to wait longer than this is refused at once with 503 and Retry-After")
    _runtime_flag(parser)
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="serve as a Ray Serve application on a Ray cluster: 'auto' or an address joins a running "
                             "one; no address starts one on this machine (needs pip install -e \".[ray]\")")
    parser.add_argument("--shards", type=_positive, metavar="N",
                        help="with --ray: index shards, each holding whole clusters (default: one per 1.5 GiB of the "
                             "index's vectors)")
    parser.add_argument("--shard-replicas", type=_positive, default=1, metavar="R",
                        help="with --ray: replicas of each shard (2: a replica lost fails no query)")
    parser.add_argument("--encoder-replicas", type=_replica_bounds, default=(1, 1), metavar="MIN[-MAX]",
                        help="with --ray: encoder replicas, autoscaled between MIN and MAX by the queries waiting")
    parser.add_argument("--encoder-gpus", type=_non_negative_float, default=0.0, metavar="G",
                        help="with --ray: each encoder replica takes G of a GPU (0.25: four share one) and runs the "
                             "encoder on it, in mixed precision (0: LiteRT on CPUs)")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .artifacts import Bundle
    from .search import Searcher
    from .server import create_app
    from .service import MAX_QUERY_PIXELS, check_write_token

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
    from .service import MAX_QUERY_PIXELS

    if args.runtime == "keras" or args.allow_pickle:
        raise InputError("serve --ray runs the fit's LiteRT export: --runtime keras and --allow-pickle are for serve "
                         "without --ray")
    try:
        from .ray_server import RayServeOptions, run
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
    from .images import read_file

    try:
        return read_file(path, 4096).decode().strip() or None
    except UnicodeDecodeError:
        raise InputError(f"{path}: the write token file is not text") from None


def _restore_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", help="the kept bundle to restore (default: the one before the current)")
    parser.add_argument("--list", action="store_true", help="list the kept bundles, oldest first, and restore nothing")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)


def _restore(args: argparse.Namespace) -> None:
    from .artifacts import Bundle, bundles, pointed_folder, restore
    from .errors import ArtifactError

    if args.list:
        current = pointed_folder(args.artifacts)
        for folder in bundles(args.artifacts):
            try:
                manifest = Bundle.load_folder(folder).manifest
                described = f"{manifest.images} images, {(manifest.changes or [{'action': 'fit'}])[-1]['action']}"
            except ArtifactError as exc:
                described = f"cannot be restored: {exc}"
            print(f"{folder.name}  {described}{'  (current)' if folder == current else ''}")
        return
    print(f"restored: {restore(args.artifacts, args.bundle)}")


def _upgrade_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)


def _upgrade(args: argparse.Namespace) -> None:
    from .artifacts import PROBES, SINCE_VERSION, Bundle, upgrade_catalog
    from .manifest import FORMAT_VERSION

    bundle = Bundle.load(args.artifacts)  # no fit there: one line before TensorFlow loads
    if bundle.manifest.format_version == FORMAT_VERSION:
        print(f"the bundle is of the current format ({FORMAT_VERSION}) already: {bundle.folder}")
        return
    if bundle.manifest.format_version >= SINCE_VERSION[PROBES]:
        print(f"upgraded the bundle to format {FORMAT_VERSION} (its catalog made columnar): "
              f"{upgrade_catalog(args.artifacts)}")
        return
    from .export import upgrade  # TensorFlow: the export is made from the Keras encoder

    folder, _ = upgrade(args.artifacts)
    print(f"upgraded the bundle to format {FORMAT_VERSION} (the LiteRT export and the probe images, checked "
          f"against the indexed descriptors; the catalog made columnar): {folder}")


if __name__ == "__main__":
    main()
