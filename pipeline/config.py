"""Every setting of a fit, with its default, in one dataclass."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Optional, Union

from .errors import InputError
from .pretrained import BACKBONES as PRETRAINED

OUTPUT_ACTIVATIONS = ("sigmoid", "tanh")
OPTIMIZERS = ("adam", "adadelta")
LOSSES = ("mse", "bce")
POOLINGS = ("flatten", "max", "avg")
ARCHITECTURES = ("conv", "dense")  # of the pixel autoencoder (pipeline/train/autoencoder.py)
METRICS = ("cosine", "euclidean")
INDEX_DTYPES = ("float32", "float16")  # how the index stores its vectors
PRECISIONS = ("fp32", "int8")  # how the exported encoder computes (its backbone in int8: pipeline/train/export.py)
BACKBONES = (*PRETRAINED, "none")
RUNTIMES = ("litert", "keras")  # what runs the fitted encoder (pipeline/model/runtime.py)
FEATURE_POOLINGS = ("regional", "gem", "average")  # how a backbone's feature map is pooled (pipeline/model/pooling.py)
EXTENSION = re.compile(r"\.[a-z0-9][a-z0-9_+-]{0,15}")  # a file extension as settings hold it
ORIENTATION_CELLS = 8  # the orientation histogram's grid is 8 x 8 cells
DESCRIPTOR_BLOCK_SIZE = 64  # the histograms are taken at this size at most (area-downscaled; histograms.HISTOGRAM_SIZE)
TRAINING_IMAGES = {"none": 100_000, **{name: 20_000 for name in PRETRAINED}}  # images an "auto" training sees in all
MAX_AUTO_EPOCHS = 60
MIN_BACKBONE_SIZE = 32  # the backbone downsamples 32 times
MAX_BATCH_WINDOW_MS = 1000.0  # a service's batching window: a longer one would hold every upload search that long
MAX_IMAGE_SIZE = 1024  # model input sizes above this are refused (a tampered manifest must not make queries huge)
BACKBONE_BATCH_SIZE = 32  # images per backbone call: its activations at 224 px take about 5 MB an image
# Settings whose default depends on the backbone (None in FitConfig means "the backbone's default");
# chosen on the four dev sets together, see docs/QUALITY.md.
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    **{name: dict(image_size=spec.native_size, whitening=0.0, orientation_weight=0.25, color_weight=0.1,
                  learning_rate=2e-4) for name, spec in PRETRAINED.items()},
    "none": dict(image_size=64, whitening=0.5, orientation_weight=0.5, color_weight=0.3, learning_rate=2e-3),
}


CHOICES = {"backbone": BACKBONES, "precision": PRECISIONS, "architecture": ARCHITECTURES, "feature_pooling": FEATURE_POOLINGS, "optimizer": OPTIMIZERS, "loss": LOSSES, "output_activation": OUTPUT_ACTIVATIONS,
           "pooling": POOLINGS, "metric": METRICS, "index_dtype": INDEX_DTYPES}
WORDS = {"epochs": ("auto",), "clusters": ("auto",), "nprobe": ("auto", "all")}  # words a count setting accepts
# One line of help per setting: the command line's flags are made from FitConfig's fields and these.
SETTING_HELP = {
    "precision": "how the exported encoder computes: fp32, or int8 (the pretrained backbone quantized, its "
                 "activations' ranges measured on the fit's own images, the head in float): faster on a CPU, at the "
                 "precision measured in docs/QUALITY.md; every image is then described by the int8 export",
    "index_dtype": "how the index stores its vectors: float16 halves the bundle's index and the memory a search "
                   "touches, at the recall cost measured in docs/BENCHMARKS.md",
    "train_sample": "the autoencoder (and the descriptor's PCA) learn from a random sample of at most this many "
                    "images; every image is embedded and indexed",
    "backbone": "frozen ImageNet network the autoencoder learns over, or none to learn from pixels alone",
    "image_size": "model input size in pixels",
    "feature_pooling": "with a backbone: how its feature map becomes the vector the autoencoder learns over: regional "
                       "(generalized means of the whole map and of four corner windows), gem or average",
    "architecture": "from pixels (--backbone none): conv (stride-2 convolution blocks) or dense (the deep, fully "
                    "connected autoencoder: the image flattened, dense layers with ReLU down to the latent, mirrored)",
    "autoencoder_size": "from pixels (--backbone none): size the pixel autoencoder works at: the input is area-downscaled to it",
    "latent_dim": "size of the learned latent and of each descriptor block after PCA",
    "filters": "from pixels (--backbone none): channels of each stride-2 conv block, comma-separated",
    "epochs": "maximum epochs (early stopping), or auto: a fixed number of training images in all",
    "batch_size": "training batch size",
    "learning_rate": "optimizer learning rate",
    "optimizer": "training optimizer",
    "loss": "from pixels (--backbone none): reconstruction loss",
    "output_activation": "from pixels (--backbone none): activation of the reconstruction",
    "noise": "from pixels (--backbone none): denoising input noise, 0 = off",
    "consistency": "from pixels (--backbone none): weight of the view-consistency term, 0 = reconstruction alone",
    "temperature": "from pixels (--backbone none): temperature of the view-consistency term",
    "min_crop": "from pixels (--backbone none): smallest crop of a training view, as a share of the image area (1 = no crops)",
    "color_jitter": "from pixels (--backbone none): colour jitter strength of the training views, 0 = none",
    "flip_augment": "from pixels (--backbone none): mirrored training views",
    "pooling": "from pixels (--backbone none): how the latent is taken from the code map",
    "whitening": "PCA whitening strength of each descriptor block: 0 none, 1 full",
    "orientation_weight": "share of the orientation histogram in the descriptor, 0 = none",
    "color_weight": "share of the colour histogram in the descriptor, 0 = none",
    "query_expansion": "nearest neighbours averaged into each query before ranking, 0 = none",
    "validation_split": "share of the images held out for early stopping",
    "patience": "epochs without a better validation loss before training stops",
    "clusters": "number of KMeans clusters, or auto",
    "metric": "distance between descriptors",
    "nprobe": "clusters searched per query: a count, all, or auto (the smallest reaching target_recall)",
    "target_recall": "recall@10 against exact search that nprobe auto must reach",
    "seed": "random seed of training, clustering and sampling",
    "extensions": "image files are the files of these extensions alone, comma-separated (jpg,png), no other file "
                  "opened: the fast path for a folder of many files of other kinds; by default every file whose "
                  "extension is an image format's, and any other that opens as an image",
    "decode_workers": "threads that decode images, 0 = one per CPU core",
    "max_file_mb": "image files larger than this many MB are skipped without being read",
    "keep_bundles": "bundles kept in the artifacts folder after each change: the current one and older ones that "
                    "imgsim restore can bring back",
    "max_removal_share": "a sync that would drop more than this share of the index (a folder emptied, a disk not "
                         "mounted) changes nothing unless given --allow-mass-removal",
}


@dataclass
class FitConfig:
    """Settings of one fit; stored in the artifacts' manifest.

    ``backbone`` is the frozen pretrained network the autoencoder learns over
    (``"efficientnet-lite0"``, ``-lite1`` or ``-lite2``), or ``"none"`` to learn from pixels alone. ``image_size`` is the
    model's input (the backbone's input, or the pixel autoencoder's). Settings left at None take
    the backbone's default (BACKBONE_DEFAULTS). ``precision`` "int8" exports the encoder with its
    backbone quantized (:mod:`pipeline.train.export`), and every image is described by that export, as
    queries are.

    Over a backbone, the autoencoder reads the backbone's feature map and reconstructs its channel
    profile through a ``latent_dim`` bottleneck (see :mod:`pipeline.train.autoencoder`). From pixels
    (``backbone="none"``), the conv autoencoder works on the image area-downscaled to
    ``autoencoder_size`` (or at full size when that is not smaller) with ``filters`` (``architecture``
    "conv"), or flattened through dense layers (``architecture`` "dense", the filters ignored); training adds
    ``consistency`` times a view-consistency term between two random views of each image (crops of
    at least ``min_crop`` of the area, mirroring when ``flip_augment``, ``color_jitter``); 0 trains
    on reconstruction alone; ``pooling`` is how its code map becomes the latent (flatten it, or its
    global max or average). ``epochs="auto"`` trains on about TRAINING_IMAGES images in all,
    whatever the folder's size.

    The descriptor: the learned latent, the orientation histogram (when ``orientation_weight`` > 0)
    and the colour histogram (when ``color_weight`` > 0), each PCA-projected to at most
    ``latent_dim`` values, each axis scaled by variance ** (-whitening / 2) (0 keeps PCA's scale,
    1 whitens fully), and given unit length; the blocks are weighted
    ``1 - orientation_weight - color_weight``, ``orientation_weight`` and ``color_weight`` and
    concatenated.
    A search averages the query with its ``query_expansion`` nearest neighbours and searches again
    (0: a single search). See docs/QUALITY.md.

    ``clusters`` and ``nprobe`` accept ``"auto"``: the number of clusters is then chosen from the
    number of images, and ``nprobe`` is the smallest that reaches ``target_recall`` against exact
    search on held-out queries.
    """

    backbone: str = "efficientnet-lite0"
    image_size: Optional[int] = None
    feature_pooling: str = "regional"
    precision: str = "fp32"
    architecture: str = "conv"
    autoencoder_size: int = 32
    latent_dim: int = 128
    filters: tuple[int, ...] = (32, 64, 128, 256)
    epochs: Union[int, str] = "auto"
    batch_size: int = 128
    learning_rate: Optional[float] = None
    optimizer: str = "adam"
    loss: str = "mse"
    output_activation: str = "sigmoid"
    noise: float = 0.0
    consistency: float = 1.0
    temperature: float = 0.2
    min_crop: float = 0.25
    color_jitter: float = 0.4
    flip_augment: bool = True
    pooling: str = "flatten"
    whitening: Optional[float] = None
    orientation_weight: Optional[float] = None
    color_weight: Optional[float] = None
    query_expansion: int = 3
    validation_split: float = 0.1
    patience: int = 2
    clusters: Union[int, str] = "auto"
    metric: str = "cosine"
    nprobe: Union[int, str] = "auto"
    target_recall: float = 0.95
    index_dtype: str = "float32"
    seed: int = 0
    train_sample: int = 20_000  # the autoencoder trains on a random sample of at most this many images
    extensions: tuple[str, ...] = ()  # file extensions that alone are images (lower case, with the dot); () = any image
    decode_workers: int = 0  # threads that decode images; 0 = one per CPU core
    max_file_mb: int = 256  # image files larger than this are skipped unread
    keep_bundles: int = 2  # bundles kept in the artifacts folder: the current one and those imgsim restore can bring back
    max_removal_share: float = 0.2  # a sync that would drop more of the index is refused (unless --allow-mass-removal)

    def __post_init__(self) -> None:
        self.filters = tuple(self.filters) if isinstance(self.filters, (list, tuple)) else self.filters
        self.extensions = tuple(self.extensions) if isinstance(self.extensions, (list, tuple)) else self.extensions
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        for name, default in BACKBONE_DEFAULTS[self.backbone].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self.validate()

    @property
    def uses_backbone(self) -> bool:
        return self.backbone != "none"

    @property
    def embedding_batch_size(self) -> int:
        """Images per encoder call when embedding (bounded memory through the backbone)."""
        return min(self.batch_size, BACKBONE_BATCH_SIZE) if self.uses_backbone else self.batch_size

    @property
    def image_extensions(self) -> Optional[frozenset[str]]:
        """The extensions that alone make image files, or None: every image, by extension or by content."""
        return frozenset(self.extensions) or None

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * 2**20

    @property
    def learned_size(self) -> int:
        """The size at which the conv autoencoder sees the image."""
        return min(self.autoencoder_size, self.image_size)

    def training_epochs(self, train_images: int) -> int:
        """The number of epochs to train for ``train_images`` images (resolves ``"auto"``)."""
        if self.epochs != "auto":
            return int(self.epochs)
        return max(1, min(MAX_AUTO_EPOCHS, round(TRAINING_IMAGES[self.backbone] / max(train_images, 1))))

    def validate(self) -> None:
        """Raise InputError naming the first setting that is of the wrong type or out of range."""
        self._validate_types()
        choices = {
            "architecture": ARCHITECTURES,
            "feature_pooling": FEATURE_POOLINGS,
            "optimizer": OPTIMIZERS,
            "loss": LOSSES,
            "output_activation": OUTPUT_ACTIVATIONS,
            "pooling": POOLINGS,
            "metric": METRICS,
            "index_dtype": INDEX_DTYPES,
            "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"image_size must lie between 1 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.uses_backbone:
            if self.image_size < MIN_BACKBONE_SIZE:
                raise InputError(f"image_size must be at least {MIN_BACKBONE_SIZE} with a backbone, got {self.image_size}")
        else:
            self._validate_pixel_autoencoder()
        if self.orientation_weight > 0 and min(self.image_size, DESCRIPTOR_BLOCK_SIZE) % ORIENTATION_CELLS:
            raise InputError(f"image_size must be a multiple of {ORIENTATION_CELLS} for the orientation histogram "
                             f"(or orientation_weight 0), got {self.image_size}")
        if self.precision == "int8" and not self.uses_backbone:
            raise InputError("precision int8 quantizes the pretrained backbone; with --backbone none there is none")
        if self.uses_backbone and self.architecture != "conv":
            raise InputError(f"architecture {self.architecture!r} is for --backbone none (over a backbone the "
                             "autoencoder reads its feature map)")
        for extension in self.extensions:
            if not EXTENSION.fullmatch(extension):
                raise InputError(f"extensions must be file extensions like .jpg (lower case, with the dot), got "
                                 f"{extension!r}")
        if not 0.0 <= self.max_removal_share <= 1.0:
            raise InputError(f"max_removal_share must lie in [0, 1], got {self.max_removal_share}")
        for name in ("latent_dim", "batch_size", "max_file_mb", "train_sample", "keep_bundles"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs != "auto" and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise InputError(f"epochs must be a positive integer or 'auto', got {self.epochs!r}")
        for name in ("whitening", "orientation_weight", "color_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.orientation_weight + self.color_weight >= 1.0:
            raise InputError("orientation_weight + color_weight must be below 1 (the learned latent needs some weight)")
        if not 0.0 < self.min_crop <= 1.0:
            raise InputError(f"min_crop must lie in (0, 1], got {self.min_crop}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise InputError(f"color_jitter must lie in [0, 1), got {self.color_jitter}")
        if self.consistency < 0 or self.temperature <= 0:
            raise InputError("consistency must be at least 0 and temperature above 0")
        if not isinstance(self.query_expansion, int) or self.query_expansion < 0:
            raise InputError(f"query_expansion must be a non-negative integer, got {self.query_expansion!r}")
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

    def _validate_types(self) -> None:
        """Each setting of the type its field declares (a manifest edited by hand is read through this)."""
        hints = typing.get_type_hints(FitConfig)
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), hints[field.name]
            allowed = typing.get_args(kind) or (kind,)
            if field.name == "filters":
                ok = isinstance(value, tuple) and all(type(f) is int for f in value)
            elif field.name == "extensions":
                ok = isinstance(value, tuple) and all(type(e) is str for e in value)
            else:
                ok = any(type(value) is t or (t is float and type(value) is int) or (t is tuple and type(value) is tuple)
                         for t in allowed if t is not type(None)) or (value is None and type(None) in allowed)
            if not ok:
                raise InputError(f"{field.name} must be of type {' or '.join(getattr(t, '__name__', str(t)) for t in allowed)}"
                                 f", got {value!r}")

    def _validate_pixel_autoencoder(self) -> None:
        if self.architecture == "conv":
            if not self.filters:
                raise InputError("filters must name at least one convolution block")
            stride = 2 ** len(self.filters)
            if self.learned_size < stride or self.learned_size % stride:
                name = "autoencoder_size" if self.autoencoder_size < self.image_size else "image_size"
                raise InputError(
                    f"{name} must be a multiple of {stride} (2 ** number of filter blocks), got {self.learned_size}"
                )
        if self.image_size % self.learned_size:
            raise InputError(f"image_size ({self.image_size}) must be a multiple of autoencoder_size "
                             f"({self.autoencoder_size})")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["filters"] = list(self.filters)
        data["extensions"] = list(self.extensions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitConfig":
        """Build from a manifest's settings; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def parse_extensions(text: str) -> tuple[str, ...]:
    """Parse ``--extensions jpg,.PNG`` as (".jpg", ".png"); InputError for anything that is not an extension."""
    extensions = tuple(dict.fromkeys("." + part.strip().lower().lstrip(".") for part in text.split(",")))
    bad = next((extension for extension in extensions if not EXTENSION.fullmatch(extension)), None)
    if bad is not None:
        raise InputError(f"expected file extensions, comma-separated (jpg,png), got {text!r}")
    return extensions


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
