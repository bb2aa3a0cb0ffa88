"""The commands that write a bundle: fit, add, sync, remove, restore and upgrade."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import BACKBONE_DEFAULTS, CHOICES, SETTING_HELP, WORDS, FitConfig
from .flags import (ARTIFACTS_HELP, check_writable, count_or_word, engine, extension_list, int_list, mass_removal_flag,
                    print_change, print_outcome, ray_flags, runtime_flag)


def _fit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="folder of images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help="output folder")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also write the training's curves (and, from pixels, reconstructions) for TensorBoard "
                             "into DIR: tensorboard --logdir DIR")
    ray_flags(parser)
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
            options["type"] = count_or_word(WORDS[field.name])
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif field.name == "filters":
            options["type"] = int_list
            options["default"] = ",".join(map(str, field.default))  # argparse parses a string default too
        elif field.name == "extensions":
            options["type"] = extension_list
        else:
            options["type"] = next(t for t in (int, float, str) if t in typing.get_args(kind) + (kind,))
        if "choices" not in options and kind is not bool:
            options["metavar"] = field.name.upper()
        parser.add_argument(flag, dest=f"setting_{field.name}", **options)


def _fit(args: argparse.Namespace) -> None:
    settings = {name[len("setting_"):]: value for name, value in vars(args).items() if name.startswith("setting_")}
    config = FitConfig(**settings)
    if args.tensorboard:
        from ..train.tensorboard import require_tensorboard

        check_writable(args.tensorboard, folder=True)
        require_tensorboard()
    from ..fit import fit  # TensorFlow takes seconds to load

    summary = fit(args.data_dir, args.artifacts, config, engine(args), args.tensorboard)
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in summary.stage_seconds.items())
    print(f"fitted {summary.images} images ({len(summary.skipped)} skipped) in {summary.seconds:.1f}s: {stages}")
    print(f"{summary.epochs_run} epochs, {summary.clusters} clusters, nprobe {summary.nprobe} "
          f"(recall@10 vs exact search {summary.recall_at_10:.3f})")
    print_outcome(summary.skipped, summary.artifacts)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("new_dir", help="folder of new images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    mass_removal_flag(parser, "add")
    ray_flags(parser)
    runtime_flag(parser)


def _add(args: argparse.Namespace) -> None:
    from ..collection.changes import add_images

    print_change(add_images(args.new_dir, args.artifacts, engine(args), args.allow_mass_removal))


def _sync_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)
    mass_removal_flag(parser, "sync")
    ray_flags(parser)
    runtime_flag(parser)


def _sync(args: argparse.Namespace) -> None:
    from ..collection.changes import sync

    print_change(sync(args.artifacts, engine(args), args.allow_mass_removal))


def _remove_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="PATH_OR_ID", help="indexed images, by path or by id")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)


def _remove(args: argparse.Namespace) -> None:
    from ..collection.changes import remove_images

    print_change(remove_images(args.images, args.artifacts))


def _restore_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", help="the kept bundle to restore (default: the one before the current)")
    parser.add_argument("--list", action="store_true", help="list the kept bundles, oldest first, and restore nothing")
    parser.add_argument("--artifacts", default="artifacts", help=ARTIFACTS_HELP)


def _restore(args: argparse.Namespace) -> None:
    from ..bundle.artifacts import Bundle, restore
    from ..bundle.layout import bundles, pointed_folder
    from ..errors import ArtifactError

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
    from ..bundle.artifacts import Bundle, upgrade_catalog
    from ..bundle.layout import PROBES, SINCE_VERSION
    from ..bundle.manifest import FORMAT_VERSION

    bundle = Bundle.load(args.artifacts)  # no fit there: one line before TensorFlow loads
    if bundle.manifest.format_version == FORMAT_VERSION:
        print(f"the bundle is of the current format ({FORMAT_VERSION}) already: {bundle.folder}")
        return
    if bundle.manifest.format_version >= SINCE_VERSION[PROBES]:
        print(f"upgraded the bundle to format {FORMAT_VERSION} (its catalog made columnar): "
              f"{upgrade_catalog(args.artifacts)}")
        return
    from ..train.export import upgrade  # TensorFlow: the export is made from the Keras encoder

    folder, _ = upgrade(args.artifacts)
    print(f"upgraded the bundle to format {FORMAT_VERSION} (the LiteRT export and the probe images, checked "
          f"against the indexed descriptors; the catalog made columnar): {folder}")


COMMANDS = {
    "fit": (_fit_flags, _fit, "train on a folder of images and index them"),
    "add": (_add_flags, _add, "embed new images with the fitted encoder and add them to the index"),
    "sync": (_sync_flags, _sync, "rescan the fitted folders: add new, re-embed changed, drop deleted images"),
    "remove": (_remove_flags, _remove, "drop images from the index by path or id"),
    "restore": (_restore_flags, _restore, "make a kept earlier bundle the current one again"),
    "upgrade": (_upgrade_flags, _upgrade, "bring a bundle of an older format to the current one"),
}
