"""When training stops, and which epoch's weights it keeps (TensorFlow-free: the report replays it)."""

from __future__ import annotations

MIN_IMPROVEMENT = 1e-3  # an epoch is better only when it lowers the best loss by this share of it


class EarlyStopping:
    """Which epoch's weights training keeps, and when it stops: an epoch is better when it lowers
    the best loss so far by at least ``MIN_IMPROVEMENT`` of it (a smaller step is noise, not
    learning); training stops after ``patience`` epochs without a better one."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = self.epoch = 0

    def better(self, loss: float) -> bool:
        """Count one more epoch with ``loss``; True when it is the new best."""
        self.epoch += 1
        if self.best is not None and not self.best - loss >= MIN_IMPROVEMENT * abs(self.best):
            return False
        self.best, self.best_epoch = loss, self.epoch
        return True

    @property
    def should_stop(self) -> bool:
        return self.epoch - self.best_epoch >= self.patience


def kept_epoch(history: dict[str, list[float]]) -> int | None:
    """The epoch (from 1) whose weights a training with ``history`` kept, by :class:`EarlyStopping`'s
    rule over its validation loss (its training loss without a validation set); None if empty."""
    losses = history.get("val_loss") or history.get("loss")
    if not losses:
        return None
    stopping = EarlyStopping(patience=len(losses) + 1)
    for loss in losses:
        stopping.better(loss)
    return stopping.best_epoch
