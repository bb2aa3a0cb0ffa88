"""The catalog: what is known of each indexed image, and the id it keeps for life.

Row i of the catalog is row i of the embeddings and of the index; rows move when images are removed.
An image's **id** does not: ids are handed out once (:attr:`Manifest.next_id`), never reused, and
are what the command line, the API and the page name images by, so an id a client holds stays the
same image until that image is removed, whatever else is added or removed meanwhile.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ArtifactError

_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass
class Catalog:
    """What is known of each indexed image; entry i is row i of the embeddings and the index."""

    paths: list[str]
    labels: list[Optional[str]]
    hashes: list[str]  # SHA-1 of the file's bytes
    clusters: list[int]
    stats: list[Optional[list[int]]]  # [size, mtime in ns] when read: a sync re-reads only files whose stat changed
    ids: list[int]  # each image's id for life
    _rows: Optional[dict[int, int]] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def row_of(self, image_id: int) -> Optional[int]:
        """The row of the image with id ``image_id``, or None when no indexed image has it."""
        if self._rows is None:
            self._rows = {image_id: row for row, image_id in enumerate(self.ids)}
        return self._rows.get(image_id)

    def columns(self) -> dict[str, list]:
        """The columns by name, as they are (not copied: ``dataclasses.asdict`` took 0.08 s a call at 5,000 rows)."""
        return {column.name: getattr(self, column.name) for column in fields(self) if column.init}

    def select(self, keep: np.ndarray) -> "Catalog":
        """The entries where the boolean mask ``keep`` is true, in order."""
        rows = np.flatnonzero(keep)
        return Catalog(**{name: [column[row] for row in rows] for name, column in self.columns().items()})

    def __add__(self, other: "Catalog") -> "Catalog":
        theirs = other.columns()
        return Catalog(**{name: column + theirs[name] for name, column in self.columns().items()})

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> "Catalog":
        """A catalog from its JSON object, every column checked: ArtifactError naming ``path`` and
        the first thing wrong. A catalog from before ids (format 5 and older) numbers its rows."""
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
        if len(set(raw["ids"])) != len(raw["ids"]):
            raise ArtifactError(f"{path}: corrupt catalog (an id is given to two images); fit again")
        return cls(**raw)
