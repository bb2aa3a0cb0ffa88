"""The fit's clock: each stage timed, and where the whole fit stands said as each one starts.

A module of its own because both sides use it: :mod:`pipeline.fit`, which knows the stages and their
shares, and :mod:`pipeline.train.encoder`, which runs some of them; neither imports the other for it.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("pipeline.fit")  # the fit's own lines, as they were


class FitClock:
    """Times a fit's stages (``seconds``) and logs where the whole fit stands as each one starts:
    stage k of n, the time so far and, from the second stage on, an estimate of the time left
    (the time so far scaled by the shares still to run)."""

    def __init__(self, shares: dict[str, float], started: float):
        self.shares, self.started = shares, started
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        elapsed = time.perf_counter() - self.started
        done = sum(self.shares[finished] for finished in self.seconds)
        left = f", about {_duration(elapsed * (1 - done) / done)} left" if done else ""
        log.info("fit stage %d/%d: %s (%s so far%s)", list(self.shares).index(name) + 1, len(self.shares), name,
                 _duration(elapsed), left)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
