"""Every setting of a fit, with its default, in one dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from .errors import InputError

OUTPUT_ACTIVATIONS = ("sigmoid", "tanh")
OPTIMIZERS = ("adam", "adadelta")
LOSSES = ("mse", "bce")
POOLINGS = ("flatten", "max", "avg")
METRICS = ("cosine", "euclidean")


@dataclass
class FitConfig:
    """Settings of one fit; stored in the artifacts' manifest.

    ``pooling`` is how the encoder's code map becomes a vector (flatten it, or its global max or
    average); a PCA layer then projects it to at most ``latent_dim`` values, scaling each axis by
    variance ** (-whitening / 2): 0 keeps PCA's scale, 1 whitens fully (see docs/QUALITY.md).
    ``clusters`` and ``nprobe`` accept ``"auto"``: the number of clusters is then chosen from the
    number of images, and ``nprobe`` is the smallest that reaches ``target_recall`` against exact
    search on held-out queries.
    """

    image_size: int = 64
    latent_dim: int = 128
    filters: tuple[int, ...] = (32, 64, 128, 256)
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    loss: str = "mse"
    output_activation: str = "sigmoid"
    noise: float = 0.1
    pooling: str = "flatten"
    whitening: float = 0.5
    flip_augment: bool = True
    validation_split: float = 0.1
    patience: int = 3
    clusters: Union[int, str] = "auto"
    metric: str = "cosine"
    nprobe: Union[int, str] = "auto"
    target_recall: float = 0.95
    seed: int = 0
    decode_workers: int = 0  # threads that decode images; 0 = one per CPU core

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first setting that is out of range."""
        choices = {
            "optimizer": OPTIMIZERS,
            "loss": LOSSES,
            "output_activation": OUTPUT_ACTIVATIONS,
            "pooling": POOLINGS,
            "metric": METRICS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.filters:
            raise InputError("filters must name at least one convolution block")
        stride = 2 ** len(self.filters)
        if self.image_size < stride or self.image_size % stride:
            raise InputError(
                f"image_size must be a multiple of {stride} (2 ** number of filter blocks), got {self.image_size}"
            )
        if self.loss == "bce" and self.output_activation != "sigmoid":
            raise InputError("loss 'bce' needs output_activation 'sigmoid' (targets lie in [0, 1])")
        for name in ("latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.whitening <= 1.0:
            raise InputError(f"whitening must lie in [0, 1], got {self.whitening}")
        if not 0.0 <= self.noise < 1.0:
            raise InputError(f"noise must lie in [0, 1), got {self.noise}")
        if not 0.0 <= self.validation_split < 0.5:
            raise InputError(f"validation_split must lie in [0, 0.5), got {self.validation_split}")
        if not 0.0 < self.target_recall <= 1.0:
            raise InputError(f"target_recall must lie in (0, 1], got {self.target_recall}")
        if self.clusters != "auto" and (not isinstance(self.clusters, int) or self.clusters < 1):
            raise InputError(f"clusters must be a positive integer or 'auto', got {self.clusters!r}")
        if self.nprobe not in ("auto", "all") and (not isinstance(self.nprobe, int) or self.nprobe < 1):
            raise InputError(f"nprobe must be a positive integer, 'auto' or 'all', got {self.nprobe!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitConfig":
        """Build from a manifest's settings; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def parse_count_or_word(text: str, words: tuple[str, ...]) -> Union[int, str]:
    """Parse a flag that is a positive integer or one of ``words`` (e.g. ``--clusters auto``)."""
    if text in words:
        return text
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"expected a positive integer or one of {', '.join(words)}, got {text!r}") from None
    if value < 1:
        raise InputError(f"expected a positive integer or one of {', '.join(words)}, got {text!r}")
    return value
