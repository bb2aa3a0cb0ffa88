"""Keep third-party start-up noise off the terminal.

TensorFlow's native libraries print several lines to stderr while ``import tensorflow`` runs
(absl's "log messages before absl::InitializeLog()", oneDNN notices), before any Python logging
setting can apply. :func:`silence_tensorflow` is called once, by ``pipeline/__init__.py``, before
anything imports TensorFlow: it sets TensorFlow's own log level and runs that first import with
the process's stderr pointed at /dev/null, so the package's own one-line errors stand alone.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 (what native code writes to) at /dev/null, then restore it: for the
    lines that native libraries print while loading (TensorFlow's import, LiteRT's "Created
    TensorFlow Lite XNNPACK delegate"), which no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with a loader that executes it while stderr is silenced."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only: the rest of TensorFlow's modules load as usual
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module) -> None:
                with native_stderr_silenced():
                    execute(module)

            spec.loader.exec_module = exec_module
        return spec


def silence_tensorflow() -> None:
    """Quiet TensorFlow's logging and its import (idempotent; a no-op once it is imported)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # whatever the user's setting: at 2, a machine without a GPU hears cuInit fail
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
