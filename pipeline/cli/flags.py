"""What the subcommands share: flag types that refuse bad values in one line, the flags of several commands
(--runtime, --ray, --allow-mass-removal), the engine they choose, and the closing lines of a command that wrote a
bundle."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional

from ..config import RUNTIMES, parse_count_or_word, parse_extensions
from ..errors import InputError, PipelineError, shown


ARTIFACTS_HELP = "fitted artifacts folder"
ALLOW_PICKLE_HELP = ("read a bundle of the previous format, whose index is a pickle: loading it can run code, so only "
                     "for a bundle you made yourself")


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


def count_or_word(words: tuple[str, ...]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return parse_count_or_word(text, words)
        except PipelineError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def extension_list(text: str) -> tuple[str, ...]:
    try:
        return parse_extensions(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def runtime_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="what runs the fitted encoder: its LiteRT export (no TensorFlow; the default where "
                             "LiteRT is installed) or its Keras model (TensorFlow; for GPUs and comparison)")


def whole_at_least(least: int, most: Optional[int] = None) -> Callable[[str], int]:
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


def number_from(least: float, strict: bool, most: float = math.inf) -> Callable[[str], float]:
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
positive, non_negative = whole_at_least(1), whole_at_least(0)
non_negative_float, positive_float = number_from(0, strict=False), number_from(0, strict=True)


def mass_removal_flag(parser: argparse.ArgumentParser, command: str) -> None:
    emptied = " or every image of an emptied folder" if command == "sync" else ""
    parser.add_argument("--allow-mass-removal", action="store_true",
                        help=f"let the {command} drop more than the fit's max_removal_share of the index (20%% by "
                             f"default), whether the files are gone or no longer decode{emptied}; without it such "
                             f"a {command} changes nothing")


def ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="decode and embed on a Ray cluster: its address, or none to start one on this machine "
                             '(needs pip install -e ".[ray]")')
    parser.add_argument("--ray-workers", type=positive, metavar="N",
                        help="encoder actors on the cluster (default: one per two CPUs)")
    parser.add_argument("--ray-gpus-per-worker", type=non_negative_float, default=0.0, metavar="G",
                        help="GPUs each encoder actor takes, fractions allowed (needs the gpu extra and GPU nodes)")


def engine(args: argparse.Namespace):
    """Where the command embeds: on the Ray cluster the flags ask for, else here."""
    if args.ray is None:
        from ..engines.engine import LocalEngine

        return LocalEngine(getattr(args, "runtime", None))
    from ..engines.distributed import RayEngine

    return RayEngine(address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                     gpus_per_worker=args.ray_gpus_per_worker, runtime=getattr(args, "runtime", None))


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
