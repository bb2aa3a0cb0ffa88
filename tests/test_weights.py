"""The weights reader on crafted files: every view checked against its storage, sizes bounded by the file, memo
indices bounded, no pickled code run; each failure one clear error."""

import collections
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from pipeline.errors import ArtifactError
from pipeline.model.backbone import load_weights


class FloatStorage:
    """Stands for torch.FloatStorage while crafting (pickled by reference, as torch pickles it)."""


class LongStorage:
    """Stands for torch.LongStorage."""


def _rebuild_tensor_v2(*args):
    """Stands for torch._utils._rebuild_tensor_v2."""


class _Storage:
    def __init__(self, key: str, kind=FloatStorage, size: int = 0):
        self.key, self.kind, self.size = key, kind, size


class _Tensor:
    def __init__(self, storage, offset, shape, strides):
        self.args = (storage, offset, shape, strides, False, collections.OrderedDict())

    def __reduce__(self):
        return _rebuild_tensor_v2, self.args


class _Run:
    """Unpickling this calls ``open(marker, "w")``: what a crafted weights file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(autouse=True)
def fake_torch(monkeypatch):
    """Modules named as PyTorch's, so that the crafted pickles name torch's classes and functions."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage, torch.LongStorage, utils._rebuild_tensor_v2 = FloatStorage, LongStorage, _rebuild_tensor_v2
    for thing, module in ((FloatStorage, "torch"), (LongStorage, "torch"), (_rebuild_tensor_v2, "torch._utils")):
        monkeypatch.setattr(thing, "__module__", module)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.size)
        return None


def _pickled(value) -> bytes:
    import io

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(value)
    return buffer.getvalue()


def crafted(tensors: dict, storages: dict, keys=None, state_pickle: bytes | None = None) -> bytes:
    """A file in PyTorch's legacy layout: header pickles, the state dict, the storage keys, then each
    storage as its element count and bytes (``storages``: key -> (count written, raw bytes))."""
    header = b"".join(pickle.dumps(value, protocol=2) for value in (0x1950A86A20F9469CFC6C, 1001, {}))
    keys = list(storages) if keys is None else keys
    body = b"".join(struct.pack("<q", count) + raw for count, raw in storages.values())
    return header + (state_pickle if state_pickle is not None else _pickled(tensors)) + _pickled(keys) + body


def floats(*values) -> tuple[int, bytes]:
    return len(values), np.asarray(values, dtype="<f4").tobytes()


def read(tmp_path, data: bytes):
    path = tmp_path / "crafted.pth"
    path.write_bytes(data)
    return load_weights(path=path, check_sha256=False)


def test_a_crafted_file_of_plain_tensors_reads_right_views_included(tmp_path):
    storage = _Storage("0")
    weights = read(tmp_path, crafted(
        {"a": _Tensor(storage, 0, (2, 3), (3, 1)), "a.T": _Tensor(storage, 0, (3, 2), (1, 3)),
         "tail": _Tensor(storage, 4, (2,), (1,)), "steps": _Tensor(_Storage("1", LongStorage), 0, (2,), (1,)),
         "empty": _Tensor(storage, 0, (0, 4), (4, 1))},
        {"0": floats(0, 1, 2, 3, 4, 5), "1": (2, np.asarray([7, 9], "<i8").tobytes())}))
    np.testing.assert_array_equal(weights["a"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(weights["a.T"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(weights["tail"], [4, 5])
    assert weights["steps"].dtype == np.int64 and weights["steps"].tolist() == [7, 9] and weights["empty"].shape == (0, 4)


# built when a test runs, with the fake torch modules in place
HOSTILE = {
    "view-past-its-storage": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (4096,), (1,))},  # the file is larger
                                              {"0": floats(1), "1": floats(*range(5000))}),
                              "w reaches past the end of its storage"),
    "stride-of-2^40": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (2,), (2**40,))}, {"0": floats(1, 2)}),
                       "w reaches past the end of its storage"),
    "offset-past-the-end": (lambda: crafted({"w": _Tensor(_Storage("0"), 5, (1,), (1,))}, {"0": floats(1, 2)}),
                            "w reaches past the end of its storage"),
    "huge-tensor-from-a-tiny-file": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (400_000_000,), (0,))}, {"0": floats(1)}),
                                     "the tensors hold more bytes than the file"),
    "many-views-of-one-float": (lambda: crafted({f"w{i}": _Tensor(_Storage("0"), 0, (64,), (0,)) for i in range(64)},
                                        {"0": floats(1)}), "the tensors hold more bytes than the file"),
    "negative-offset": (lambda: crafted({"w": _Tensor(_Storage("0"), -1, (1,), (1,))}, {"0": floats(1, 2)}),
                        "offset must be a whole number from 0, got -1"),
    "negative-stride": (lambda: crafted({"w": _Tensor(_Storage("0"), 1, (2,), (-1,))}, {"0": floats(1, 2)}),
                        "stride must be a whole number from 0, got -1"),
    "fractional-size": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (1.5,), (1,))}, {"0": floats(1, 2)}),
                        "size must be a whole number from 0, got 1.5"),
    "shape-a-list": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, [2], [1])}, {"0": floats(1, 2)}),
                     "a tensor of shape \\[2\\]"),
    "nine-dimensions": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (1,) * 9, (1,) * 9)}, {"0": floats(1)}),
                        "a tensor of shape"),
    "missing-storage": (lambda: crafted({"w": _Tensor(_Storage("7"), 0, (1,), (1,))}, {"0": floats(1)}),
                        "w points at storage '7', which is not in the file"),
    "storage-of-negative-length": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (1,), (1,))}, {"0": (-5, b"")}),
                                   "storage 0 of -5 elements does not fit in the file"),
    "storage-longer-than-the-file": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (1,), (1,))}, {"0": (2**40, b"\0" * 8)}),
                                     "storage 0 of 1099511627776 elements does not fit in the file"),
    "truncated-storages": (lambda: crafted({"w": _Tensor(_Storage("0"), 0, (1,), (1,))}, {"0": floats(1)})[:-6],
                           "truncated storage|does not fit"),
    "storage-of-another-type": (lambda: crafted({"w": _Tensor(_Storage("0", _Run), 0, (1,), (1,))}, {"0": floats(1)}),
                                "refused"),
    "tensor-without-a-storage": (lambda: crafted({"w": _Tensor("0", 0, (1,), (1,))}, {"0": floats(1)}),
                                 "a tensor without a storage"),
    "not-a-tensor": (lambda: crafted({"w": 3}, {}), "w is not a tensor"),
    "not-a-state-dict": (lambda: crafted([], {}), "no state dict in the file"),
    "memo-index-of-4e8": (lambda: crafted({}, {}, state_pickle=b"\x80\x02]r" + struct.pack("<I", 400_000_000) + b"."),
                          "memo index 400000000 out of bounds"),
    "memo-bomb-35-bytes": (lambda: crafted({}, {}, state_pickle=b"\x80\x02}r" + struct.pack("<I", 190_000_000) + b"h\x00."),
                           "memo index 190000000 out of bounds"),
    "get-of-an-unknown-memo": (lambda: crafted({}, {}, state_pickle=b"\x80\x02h\x05."), "Memo value not found at index 5"),
    "a-string-longer-than-the-file": (lambda: crafted({}, {}, state_pickle=b"\x80\x02X" + struct.pack("<I", 2**31) + b"ab."),
                                      "bytes in a unicodestring4, but only 9 remain"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_weights_file_is_one_clear_error(tmp_path, kind):
    make, message = HOSTILE[kind]
    data = make()
    with pytest.raises(ArtifactError, match=f"crafted.pth: not a readable weights file \\(.*({message})"):
        read(tmp_path, data)


def test_a_crafted_weights_file_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ArtifactError, match=r"not a readable weights file \(refused to load (io|builtins).open"):
        read(tmp_path, crafted({"_conv_stem.weight": _Run(marker)}, {}))
    assert not marker.exists()
