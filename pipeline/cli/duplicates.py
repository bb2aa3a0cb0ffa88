"""imgsim duplicates: groups of copies in a fit or in a folder with no fit, verified on the pixels, listed,
scored against a person's labels, written as a page, or moved aside."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import SETTING_HELP
from ..errors import InputError, shown
from .flags import (ALLOW_PICKLE_HELP, ARTIFACTS_HELP, check_writable, extension_list, non_negative_float,
                    number_from, print_change, whole_at_least)


# what a pair must reach to be verified a copy: the defaults are verification.Thresholds', not imported here (that
# module loads OpenCV, and every command builds the parser; tests/test_duplicates.py checks that the help states them)
_THRESHOLD_FLAGS = (
    ("--min-inliers", whole_at_least(3, 400), "N", "feature matches that must agree with one affine map (default: 12)"),
    ("--min-inlier-ratio", number_from(0, False, 1), "R", "the share of the feature matches that must agree with it (default: 0.15)"),
    ("--min-correlation", number_from(0, False, 1), "C",
     "the two images aligned must correlate by this much (default: 0.9)"),
    ("--max-changed", number_from(0, False, 1), "S",
     "and differ on at most this share of their overlap (default: 0.05)"))


def _duplicates_flags(parser: argparse.ArgumentParser) -> None:
    # the default is duplicates.CANDIDATE_DISTANCE, not imported here for the same reason as the thresholds'
    parser.add_argument("folder", nargs="?", metavar="DIR",
                        help="look in this folder, with no fit: the pretrained backbone's descriptors and the same "
                             "verification; nothing is written but the cache (--cache). Without it: the fitted "
                             "collection in --artifacts")
    parser.add_argument("--max-distance", type=non_negative_float, metavar="D",
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
    parser.add_argument("--extensions", type=extension_list, metavar="EXTENSIONS",
                        help="with DIR: " + SETTING_HELP["extensions"])
    parser.add_argument("--cache", metavar="DIR",
                        help="with DIR: where descriptors, local features and verdicts are kept by content (default: "
                             "$XDG_CACHE_HOME/imgsim/duplicates, else ~/.cache/imgsim/duplicates)")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)


def _duplicates(args: argparse.Namespace) -> int:
    from ..collection.ground_truth import read_ground_truth, score_groups

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
        from ..report.pages import write_duplicates_page

        print(f"page: {write_duplicates_page(found, roots, args.html)}", file=out)
    if args.move_to:
        return _move_duplicates(found.groups, roots, args, out)
    return 0


def _find_copies(args: argparse.Namespace):
    """The copies the command looks for, in a folder or a fit: (Duplicates, the folders, every image's path
    when a ground truth needs them)."""
    from ..collection.duplicates import CANDIDATE_DISTANCE  # OpenCV and SciPy: once the input is known good

    distance = CANDIDATE_DISTANCE if args.max_distance is None else args.max_distance
    if args.folder is not None:
        from ..collection.folder_copies import find_in_folder
        from ..data.images import find_images

        records = find_images(args.folder, extensions=args.extensions)  # listed once: the ground truth needs it too
        found = find_in_folder(args.folder, distance, _thresholds(args), args.cache, records=records)
        return found, [os.path.realpath(args.folder)], [record.path for record in records] if args.ground_truth else []
    if args.cache is not None:
        raise InputError("--cache is for a folder (imgsim duplicates DIR); a fit's cache is in its artifacts folder")
    if args.extensions is not None:
        raise InputError("--extensions is for a folder (imgsim duplicates DIR); a fit keeps its own (fit --extensions)")
    from ..bundle.artifacts import Bundle
    from ..collection.duplicates import find_duplicates

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
    from ..collection.verification import Thresholds

    given = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, *_ in _THRESHOLD_FLAGS}
    return Thresholds(**{name: value for name, value in given.items() if value is not None})


def _move_duplicates(groups, roots: list[str], args: argparse.Namespace, out) -> int:
    """--move-to: move the copies, drop what moved from the index (with a fit), say what happened."""
    from ..collection.changes import remove_images
    from ..collection.groups import move_duplicates

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


COMMANDS = {"duplicates": (_duplicates_flags, _duplicates, "list groups of near-duplicate images")}
