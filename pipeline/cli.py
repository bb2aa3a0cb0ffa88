"""What every script shares: logging set-up, and typed errors turned into one line and an exit code."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import PipelineError


def run(main: Callable[[], int | None]) -> None:
    """Run a script's main function and exit: 0 ok, 2 bad input, 1 anything else."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. retracing notices: not the user's concern
    try:
        code = main() or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def print_outcome(skipped: list, artifacts: object) -> None:
    """The closing lines of a command that wrote artifacts: every skipped file, then where it went."""
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}")
    print(f"artifacts: {artifacts}")
