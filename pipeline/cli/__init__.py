"""The command line: one console command, ``imgsim``, with a subcommand per operation.

    imgsim fit DATA_DIR [--artifacts DIR] [a flag for every FitConfig setting]
    imgsim predict (--file PATH | --url URL) [-n N] [--json] ...
    imgsim add NEW_DIR | sync | remove PATH_OR_ID... | duplicates | evaluate DATA_DIR | report | serve | upgrade

``scripts/*.py`` run the same subcommands. A command holds no logic beyond flags and printing;
typed errors become one line on stderr and an exit code (0 ok, 2 bad input, 1 anything else).
Only ``fit`` (and ``--runtime keras``) imports TensorFlow, inside the command; every other command runs the
fitted encoder's LiteRT export (:mod:`pipeline.model.runtime`), and checks its input before it loads a model.

The subcommands live beside this module by family (``collection``: the commands that write a bundle; ``query``;
``duplicates``; ``evaluation``), each with its flags; ``flags`` holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from typing import Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from .. import __version__
from ..errors import PipelineError, shown
from . import collection, duplicates, evaluation, query

MAX_ERROR_CHARACTERS = 2000  # an error line longer than this is cut in the middle
COMMANDS = {**collection.COMMANDS, **query.COMMANDS, **duplicates.COMMANDS, **evaluation.COMMANDS}
ORDER = ("fit", "predict", "add", "sync", "remove", "duplicates", "evaluate", "report", "serve", "restore", "upgrade")


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
    for name in ORDER:
        add_flags, command, summary = COMMANDS[name]
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

