"""The catalog: what is known of each indexed image, and the id it keeps for life.

Row i of the catalog is row i of the embeddings and of the index; rows move when images are removed.
An image's **id** does not: ids are handed out once (:attr:`Manifest.next_id`), never reused, and
are what the command line, the API and the page name images by, so an id a client holds stays the
same image until that image is removed, whatever else is added or removed meanwhile. Ids only grow
row by row (a fit numbers its images in order, later images get higher ids, removals keep the order),
so the row of an id is a binary search.

The catalog is columnar: an Arrow table (id, path, label, content hash, file size and modification
time), stored as an uncompressed Arrow IPC file (``catalog.arrow``, bundle format 8 on) and read
memory-mapped, so opening one costs neither time nor memory in proportion to its rows: the
operating system reads the pages a lookup touches. Nothing turns every row into Python objects
unless asked (:meth:`Column.tolist`, iterating a column). Values are checked where they are read:
a path that is not absolute is an ArtifactError naming the file. Bundles before format 8 keep a
JSON catalog (:meth:`Catalog.from_json`), read into the same table; ``imgsim upgrade`` converts them.

The clusters are not stored: they are the index's assignments, which the bundle sets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from ..errors import ArtifactError

_SHA1 = re.compile(r"[0-9a-f]{40}")
SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("path", pa.large_string(), nullable=False),
    pa.field("label", pa.large_string()),
    pa.field("hash", pa.binary(20), nullable=False),  # SHA-1 of the file's bytes
    pa.field("size", pa.int64()),  # the file's stat when it was read (null: not known): a sync re-reads only
    pa.field("mtime", pa.int64()),  # files whose size or modification time (ns) changed
])
_ROWS_A_BATCH = 65_536  # rows converted to Python objects at a time when a column is iterated


@dataclass(frozen=True)
class _Check:
    """What each value of a column must be, and the error when one is not."""

    valid: Callable[[Any], bool]
    error: Callable[[], Exception]


class Column(Sequence):
    """One catalog column, read-only: each value is converted to Python when it is read (one by
    index, all of them by :meth:`tolist` or by iterating), and checked then."""

    def __init__(self, values: pa.ChunkedArray, to_python: Callable[[Any], Any] = lambda value: value,
                 to_arrow: Callable[[Any], Any] = lambda value: value, check: Optional[_Check] = None):
        self.values = values
        self._to_python, self._to_arrow, self._check = to_python, to_arrow, check

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, key):
        if isinstance(key, slice):
            if key.step not in (None, 1):
                return self.tolist()[key]
            start, stop, _ = key.indices(len(self))
            return self._converted(self.values.slice(start, max(0, stop - start)))
        position = int(key)
        if not -len(self) <= position < len(self):
            raise IndexError(f"row {position} of a catalog of {len(self)}")
        value = self.values[position].as_py()
        if value is None:
            return None
        if self._check is not None and not self._check.valid(value):
            raise self._check.error()
        return self._to_python(value)

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), _ROWS_A_BATCH):
            yield from self._converted(self.values.slice(start, _ROWS_A_BATCH))

    def tolist(self) -> list:
        """Every value as a Python object."""
        return self._converted(self.values)

    def index(self, value: Any, start: int = 0, stop: Optional[int] = None) -> int:
        import pyarrow.compute as pc  # lazily, as everywhere here: its import costs every command 28 ms

        part = self.values.slice(start, (len(self) if stop is None else stop) - start)
        found = -1 if value is None else pc.index(part, pa.scalar(self._to_arrow(value), self.values.type)).as_py()
        if found < 0:
            raise ValueError(f"{value!r} is not in the catalog")
        return start + found

    def count(self, value: Any) -> int:
        import pyarrow.compute as pc

        if value is None:
            return self.values.null_count
        return int(pc.sum(pc.equal(self.values, pa.scalar(self._to_arrow(value), self.values.type))).as_py() or 0)

    def __contains__(self, value: Any) -> bool:
        return (value is None and self.values.null_count > 0) or (value is not None and self.count(value) > 0)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Column({len(self)} values of {self.values.type})"

    def _converted(self, values: pa.ChunkedArray | pa.Array) -> list:
        converted = values.to_pylist()
        if self._check is not None and not all(value is None or self._check.valid(value) for value in converted):
            raise self._check.error()
        return [self._to_python(value) if value is not None else None for value in converted]


class Catalog:
    """What is known of each indexed image; row i is row i of the embeddings and the index."""

    def __init__(self, paths: Sequence[str], labels: Sequence[Optional[str]], hashes: Sequence[str],
                 stats: Optional[Sequence[Optional[Sequence[int]]]] = None, ids: Optional[Sequence[int]] = None,
                 clusters: Optional[Sequence[int]] = None):
        """A catalog from Python values: ``hashes`` as hex SHA-1 digests, ``stats`` as [size, mtime]
        pairs or None, ``ids`` by default the rows' numbers (a bundle's append gives new images theirs)."""
        stats = [None] * len(paths) if stats is None else stats
        table = pa.Table.from_arrays([
            _int64s_array(np.arange(len(paths)) if ids is None else ids),
            _strings_array(paths), _strings_array(labels), _digests_array(hashes),
            _int64s_array([None if stat is None else stat[0] for stat in stats]),
            _int64s_array([None if stat is None else stat[1] for stat in stats]),
        ], schema=SCHEMA)
        self._set(table, None if clusters is None else np.asarray(clusters, np.int64), Path("catalog"))

    def _set(self, table: pa.Table, clusters: Optional[np.ndarray], source: Path) -> None:
        self.table, self._clusters, self.source = table, clusters, source
        self._ids: Optional[np.ndarray] = None
        self._hashes: Optional[np.ndarray] = None
        self._hash_order: Optional[np.ndarray] = None

    @classmethod
    def _of(cls, table: pa.Table, clusters: Optional[np.ndarray], source: Path) -> "Catalog":
        catalog = cls.__new__(cls)
        catalog._set(table, clusters, source)
        return catalog

    def __len__(self) -> int:
        return self.table.num_rows

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        mine, theirs = self._clusters, other._clusters
        same_clusters = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and np.array_equal(mine, theirs))
        return same_clusters and self.table.equals(other.table)

    __hash__ = None  # type: ignore[assignment]

    @property
    def ids(self) -> Column:
        return Column(self.table.column("id"))

    @property
    def paths(self) -> Column:
        return Column(self.table.column("path"), check=_Check(
            lambda path: path.startswith("/") and "\0" not in path,
            lambda: ArtifactError(f"{self.source}: corrupt catalog (paths must be absolute paths); fit again")))

    @property
    def labels(self) -> Column:
        return Column(self.table.column("label"))

    @property
    def hashes(self) -> Column:
        """The content hashes, as hex SHA-1 digests."""
        return Column(self.table.column("hash"), bytes.hex, bytes.fromhex)

    @property
    def stats(self) -> list[Optional[list[int]]]:
        """Each file's [size, mtime in ns] when it was read, or None."""
        sizes, times = self.table.column("size").to_pylist(), self.table.column("mtime").to_pylist()
        return [None if size is None or time is None else [size, time] for size, time in zip(sizes, times)]

    @property
    def clusters(self) -> Column:
        """The cluster of each image (the index's assignments, as the bundle set them)."""
        if self._clusters is None:
            raise ArtifactError(f"{self.source}: the catalog's clusters were never set")
        return Column(pa.chunked_array([_int64s_array(self._clusters)]))

    @clusters.setter
    def clusters(self, assignments: Sequence[int] | np.ndarray) -> None:
        assignments = np.asarray(assignments, np.int64)
        if len(assignments) != len(self):
            raise ValueError(f"{len(assignments)} clusters for a catalog of {len(self)}")
        self._clusters = assignments

    def cluster_array(self) -> Optional[np.ndarray]:
        """The clusters as an array, or None before the bundle set them."""
        return self._clusters

    def id_array(self) -> np.ndarray:
        """The ids as an int64 array (over the file's pages, not copied)."""
        if self._ids is None:
            chunks = [_int64s(chunk) for chunk in self.table.column("id").chunks]
            self._ids = chunks[0] if len(chunks) == 1 else np.concatenate([np.zeros(0, np.int64), *chunks])
        return self._ids

    def row_of(self, image_id: int) -> Optional[int]:
        """The row of the image with id ``image_id``, or None when no indexed image has it."""
        ids = self.id_array()
        row = int(np.searchsorted(ids, image_id))
        return row if row < len(ids) and ids[row] == image_id else None

    def rows_with_hash(self, digest: str) -> list[int]:
        """The rows of the indexed copies of the content with hex SHA-1 ``digest`` (by a binary search
        over the hashes in sorted order, sorted once)."""
        wanted = _stored_hash(digest)
        if wanted is None:
            return []
        hashes, ordered = self._hash_array(), self.hash_order()
        start, rows = _search(hashes, ordered, wanted), []
        while start < len(ordered) and hashes[ordered[start]] == wanted:
            rows.append(int(ordered[start]))
            start += 1
        return sorted(rows)

    def rows_with_hashes(self, digests: Sequence[str]) -> dict[str, list[int]]:
        """The rows of the indexed copies of each of a few hex SHA-1 ``digests`` (those the catalog
        holds), by one pass over the hashes a digest, nothing sorted: :meth:`rows_with_hash` sorts
        every hash once, which pays for itself only over many lookups."""
        hashes, found = self._hash_array(), {}
        for digest in digests:
            wanted = _stored_hash(digest)
            rows = np.flatnonzero(hashes == wanted) if wanted is not None else []
            if len(rows):
                found[digest] = rows.tolist()
        return found

    def hash_order(self) -> np.ndarray:
        """The rows in the order of their content hashes (sorted on first use, then kept)."""
        if self._hash_order is None:
            self._hash_order = np.argsort(self._hash_array(), kind="stable")
        return self._hash_order

    def _hash_array(self) -> np.ndarray:
        """The hashes as 20-byte strings (over the file's pages when the catalog is one chunk)."""
        if self._hashes is None:
            column = self.table.column("hash").combine_chunks()
            self._hashes = (np.frombuffer(column.buffers()[1], "S20", count=len(column), offset=column.offset * 20)
                            if len(column) else np.zeros(0, "S20"))
        return self._hashes

    def label_names(self) -> list[str]:
        """The distinct labels, sorted (no label not counted)."""
        import pyarrow.compute as pc

        return sorted(label for label in pc.unique(self.table.column("label")).to_pylist() if label is not None)

    def indexed_paths(self, paths: Sequence[str]) -> set[str]:
        """Which of ``paths`` are indexed (one pass over the catalog's paths)."""
        if not paths:
            return set()
        import pyarrow.compute as pc

        found = pc.is_in(self.table.column("path"), value_set=_strings_array(list(paths)))
        return set(self.table.column("path").filter(found).to_pylist())

    def select(self, keep: np.ndarray) -> "Catalog":
        """The entries where the boolean mask ``keep`` is true, in order."""
        keep = np.asarray(keep, bool)
        mask = pa.Array.from_buffers(pa.bool_(), len(keep), [None, pa.py_buffer(np.packbits(keep, bitorder="little"))])
        return Catalog._of(self.table.filter(mask),
                           None if self._clusters is None else self._clusters[keep], self.source)

    def __add__(self, other: "Catalog") -> "Catalog":
        clusters = (None if self._clusters is None or other._clusters is None
                    else np.concatenate([self._clusters, other._clusters]))
        return Catalog._of(pa.concat_tables([self.table, other.table]), clusters, self.source)

    def numbered(self, first_id: int) -> "Catalog":
        """This catalog with ids from ``first_id`` on, row by row."""
        ids = _int64s_array(np.arange(first_id, first_id + len(self)))
        return Catalog._of(self.table.set_column(0, SCHEMA.field("id"), ids), self._clusters, self.source)

    def write(self, path: Path) -> None:
        """Write the catalog as an uncompressed Arrow IPC file (one record batch), to be memory-mapped."""
        table = self.table.combine_chunks()
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_table(table, max_chunksize=max(1, len(table)))

    @classmethod
    def read(cls, path: Path) -> "Catalog":
        """The catalog in the Arrow file ``path``, memory-mapped; ArtifactError naming it for a file
        that is not one, columns not the catalog's, an id missing or not above the one before."""
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise ArtifactError(f"{path}: unreadable catalog ({str(exc).splitlines()[0]}); fit again") from None
        if [(field.name, field.type) for field in table.schema] != [(field.name, field.type) for field in SCHEMA]:
            described = ", ".join(f"{field.name} {field.type}" for field in table.schema)
            raise ArtifactError(f"{path}: corrupt catalog (its columns are {described}); fit again")
        for name in ("id", "path", "hash"):
            if table.column(name).null_count:
                raise ArtifactError(f"{path}: corrupt catalog (a row has no {name}); fit again")
        catalog = cls._of(table, None, path)
        ids = catalog.id_array()
        if len(ids) and (ids[0] < 0 or not np.all(ids[1:] > ids[:-1])):
            raise ArtifactError(f"{path}: corrupt catalog (ids must be whole numbers from 0, growing row by row: "
                                f"an id is given to two images or out of order); fit again")
        return catalog

    def to_json(self) -> dict[str, list]:
        """The catalog as bundles before format 8 stored it (clusters included)."""
        return {"paths": self.paths.tolist(), "labels": self.labels.tolist(), "hashes": self.hashes.tolist(),
                "clusters": self.clusters.tolist(), "stats": self.stats, "ids": self.ids.tolist()}

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path) -> "Catalog":
        """A catalog from its JSON object (bundles before format 8), every column checked:
        ArtifactError naming ``path`` and the first thing wrong. A catalog from before ids (format 5
        and older) numbers its rows."""
        raw = dict(raw)
        paths = raw.get("paths")
        if isinstance(paths, list):
            raw.setdefault("stats", [None] * len(paths))  # catalogs before format 5 kept no stats
            raw.setdefault("ids", list(range(len(paths))))  # before format 6: ids were rows
        checks = {
            "paths": (lambda p: type(p) is str and os.path.isabs(p) and "\0" not in p, "absolute paths"),
            "labels": (lambda label: label is None or type(label) is str, "strings or null"),
            "hashes": (lambda h: type(h) is str and _SHA1.fullmatch(h) is not None, "SHA-1 digests"),
            "clusters": (lambda c: type(c) is int and c >= 0, "whole numbers from 0"),
            "stats": (lambda s: s is None or (type(s) is list and len(s) == 2 and all(type(v) is int for v in s)),
                      "[size, time] pairs or null"),
            "ids": (lambda i: type(i) is int and i >= 0, "whole numbers from 0"),
        }
        if set(raw) != set(checks):
            raise ArtifactError(f"{path}: corrupt catalog (its columns are {sorted(raw)}); fit again")
        lengths = {len(column) if type(column) is list else -1 for column in raw.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise ArtifactError(f"{path}: corrupt catalog (its columns differ in length or are not lists); fit again")
        for name, (valid, what) in checks.items():
            if not all(valid(value) for value in raw[name]):
                raise ArtifactError(f"{path}: corrupt catalog ({name} must be {what}); fit again")
        if any(later <= earlier for earlier, later in zip(raw["ids"], raw["ids"][1:])):
            raise ArtifactError(f"{path}: corrupt catalog (an id is given to two images or out of order); fit again")
        catalog = cls(raw["paths"], raw["labels"], raw["hashes"], raw["stats"], raw["ids"], raw["clusters"])
        catalog.source = path
        return catalog


# Arrow arrays are made from buffers here, not with pa.array or pa.table: those import pandas where it is installed
# (0.17 s of a sync or a query process)

def _int64s_array(values: Sequence[Optional[int]] | np.ndarray) -> pa.Array:
    """Whole numbers (None: null) as an Arrow int64 array."""
    valid = None if isinstance(values, np.ndarray) else np.array([value is not None for value in values], bool)
    if valid is not None:
        values = [0 if value is None else value for value in values]
    data = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [_bitmap(valid), pa.py_buffer(data)])


def _strings_array(values: Sequence[Optional[str]]) -> pa.Array:
    """Texts (None: null) as an Arrow large_string array."""
    encoded = [b"" if value is None else value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(text) for text in encoded], out=offsets[1:])
    valid = np.array([value is not None for value in values], bool)
    return pa.Array.from_buffers(pa.large_string(), len(encoded),
                                 [_bitmap(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _digests_array(digests: Sequence[str]) -> pa.Array:
    """Hex SHA-1 digests as an Arrow array of 20-byte values; ValueError for one that is not."""
    data = b"".join(bytes.fromhex(digest) for digest in digests)
    if len(data) != 20 * len(digests):
        raise ValueError("a content hash that is not a SHA-1 digest")
    return pa.Array.from_buffers(pa.binary(20), len(digests), [None, pa.py_buffer(data)])


def _bitmap(valid: Optional[np.ndarray]) -> Optional[pa.Buffer]:
    """Arrow's validity bitmap for ``valid`` (None when every value is there)."""
    if valid is None or valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _int64s(chunk: pa.Array) -> np.ndarray:
    """An int64 Arrow array without nulls as a NumPy array over its buffer (``Array.to_numpy``
    imports pandas, 0.17 s, where it is installed)."""
    return np.frombuffer(chunk.buffers()[1], np.int64, count=len(chunk), offset=chunk.offset * 8)


def _stored_hash(digest: str) -> Optional[np.bytes_]:
    """A hex SHA-1 digest as the catalog stores it (20 bytes), or None when it is not hex."""
    try:
        return np.array([bytes.fromhex(digest)], "S20")[0]
    except ValueError:
        return None


def _search(hashes: np.ndarray, order: np.ndarray, wanted: np.bytes_) -> int:
    """The first position of ``order`` whose hash is not below ``wanted`` (a binary search that reads
    log2(n) hashes, never the whole sorted copy)."""
    low, high = 0, len(order)
    while low < high:
        middle = (low + high) // 2
        if hashes[order[middle]] < wanted:
            low = middle + 1
        else:
            high = middle
    return low
