"""Reading a PyTorch weights file of the legacy (non-zip) layout without PyTorch and without trusting it.

The layout: five pickles (a magic number, a protocol version, system information, the state dict
whose tensors point at numbered storages, the list of those storages' keys), then each storage's
element count and raw little-endian bytes. :func:`read_state_dict` reads it as numpy arrays and
assumes nothing about the bytes:

- each pickle's opcodes are read first and its memo indices bounded, so a few bytes cannot make the
  unpickler allocate gigabytes (a "memo bomb");
- the unpickler knows four names (an ordered dict, the tensor-rebuild call and two storage types)
  and refuses every other one, so no pickled code runs;
- every tensor is checked against its storage (offset and strides inside it, none negative) and
  all tensors together may not hold more bytes than the file, so a tensor can neither read memory
  outside its storage nor blow a small file up into a huge array.

Anything else is a ValueError (or ``pickle.UnpicklingError``) that says what is wrong.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
from typing import Any

import numpy as np

MAX_MEMO = 1 << 16  # memo slots a pickle of a state dict may use (EfficientNet-Lite's use about 1,500)
MAX_DIMENSIONS = 8
_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}
_STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict into tensor descriptions; refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: the weights file may hold tensors only")

    def persistent_load(self, pid: Any) -> tuple[str, Any]:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[2], str)
                and any(pid[1] is dtype for dtype in _STORAGES.values())):
            raise pickle.UnpicklingError("refused a persistent object that is not a tensor storage")
        return pid[2], pid[1]  # (storage key, dtype)


class _TensorRef:
    """A tensor of the state dict: a view (offset, shape, strides) into a storage read later."""

    def __init__(self, storage: Any, offset: Any, shape: Any, strides: Any, *_ignored: Any):
        if not (isinstance(storage, tuple) and len(storage) == 2):
            raise ValueError("a tensor without a storage")
        self.key, self.dtype = storage
        self.offset = _whole(offset, "offset")
        if not (isinstance(shape, tuple) and isinstance(strides, tuple) and len(shape) == len(strides)
                and len(shape) <= MAX_DIMENSIONS):
            raise ValueError(f"a tensor of shape {shape!r} and strides {strides!r}")
        self.shape = tuple(_whole(size, "size") for size in shape)
        self.strides = tuple(_whole(stride, "stride") for stride in strides)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def last_element(self) -> int:
        """The index in its storage of the view's last element (offset + sum of (size - 1) * stride)."""
        return self.offset + sum((size - 1) * stride for size, stride in zip(self.shape, self.strides))


def _whole(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"a tensor's {what} must be a whole number from 0, got {value!r}")
    return value


def read_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """The state dict of a legacy PyTorch file's bytes, as numpy arrays by parameter name."""
    stream = io.BytesIO(data)
    for _header in range(3):  # magic number, protocol version, system info: plain values
        _load(stream)
    refs, keys = _load(stream), _load(stream)
    if not isinstance(refs, dict) or not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ValueError("no state dict in the file")
    for name, ref in refs.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{name} is not a tensor")
    dtypes = {ref.key: ref.dtype for ref in refs.values()}
    storages = {}
    for key in keys:
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError("truncated storage")
        (count,) = struct.unpack("<q", header)
        dtype = np.dtype(dtypes.get(key, np.float32)).newbyteorder("<")
        if not 0 <= count * dtype.itemsize <= len(data) - stream.tell():
            raise ValueError(f"storage {key} of {count} elements does not fit in the file")
        storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    if sum(ref.count * np.dtype(ref.dtype).itemsize for ref in refs.values()) > len(data):
        raise ValueError("the tensors hold more bytes than the file")
    return {name: _tensor(name, ref, storages) for name, ref in refs.items()}


def _load(stream: io.BytesIO) -> Any:
    """The next pickle of ``stream``, its opcodes checked before it is unpickled."""
    start = stream.tell()
    for opcode, argument, _ in pickletools.genops(stream):
        if opcode.name in _MEMO_OPCODES and not (isinstance(argument, int) and 0 <= argument < MAX_MEMO):
            raise pickle.UnpicklingError(f"memo index {argument!r} out of bounds")
    stream.seek(start)
    return _TensorsOnly(stream).load()


def _tensor(name: str, ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """A tensor copied out of its storage, once the view is known to lie inside it."""
    storage = storages.get(ref.key)
    if storage is None:
        raise ValueError(f"{name} points at storage {ref.key!r}, which is not in the file")
    if ref.dtype is not storage.dtype.type:
        raise ValueError(f"{name} is of another type than its storage")
    if ref.count == 0:
        return np.zeros(ref.shape, dtype=storage.dtype)
    if ref.last_element() >= len(storage):
        raise ValueError(f"{name} reaches past the end of its storage")
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[ref.offset :], ref.shape, tuple(s * itemsize for s in ref.strides),
                                           writeable=False).copy()
