"""The manifest: what made a bundle and what happened to it since (``manifest.json``), typed and checked.

Every field is checked when a bundle is loaded (:meth:`Manifest.from_dict`): a hand-edited or
foreign manifest is one ArtifactError naming the field, never a traceback later. Format versions:
:data:`FORMAT_VERSION` is written; older readable versions are brought to the current shape here.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import FitConfig
from ..errors import ArtifactError, PipelineError

# 8: the catalog columnar (Arrow), memory-mapped; 7: probe images that tie the encoder to the fitted images; 6: the
# LiteRT export, ids for life; 5: the index's vectors in their own file; 4: nprobe on the index; 3: nprobe in the
# manifest. A bundle keeps its format when an add, sync or remove rewrites it; imgsim upgrade brings it to the current
FORMAT_VERSION = 8
READABLE_VERSIONS = (3, 4, 5, 6, 7, 8)
EXPORTED_VERSION = 6  # the first with the LiteRT export
KEPT_VERSIONS = (EXPORTED_VERSION, 7, FORMAT_VERSION)  # read as they are; older ones as UNEXPORTED_VERSION
UNEXPORTED_VERSION = 5  # what a bundle of an older format becomes when an add, sync or remove rewrites it
LEGACY_VERSION = 2  # no backbone; read only when asked to (allow_pickle): its index is a pickle
ACTIONS = ("add", "sync", "remove", "restore")
_SHA256, _SHA1 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


@dataclass
class Manifest:
    """What made a bundle and what happened to it since: ``manifest.json``, typed."""

    settings: FitConfig
    data_dir: str  # the fitted folder, absolute
    images: int  # indexed now
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    versions: dict[str, str] = field(default_factory=dict)
    backbone_weights_sha256: Optional[str] = None
    export_sha256: Optional[str] = None  # of encoder.tflite: checked whenever it is read
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of files the fit skipped
    history: dict[str, list[float]] = field(default_factory=dict)  # training loss per epoch
    recall_at_10: dict[int, float] = field(default_factory=dict)  # routed vs exact, per nprobe, as last tuned
    stage_seconds: dict[str, float] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)  # adds, syncs and removals since the fit
    removed: dict[str, str] = field(default_factory=dict)  # path -> content hash of images removed by hand
    unreadable: dict[str, list[int]] = field(default_factory=dict)  # path -> [size, mtime] of files a sync skipped
    next_id: int = 0  # the id the next indexed image gets (ids are never reused)
    parent: Optional[str] = None  # the bundle folder this one was made from (the current one when it was committed)
    format_version: int = FORMAT_VERSION

    @property
    def roots(self) -> list[str]:
        """The folders the collection is made of: the fitted one, then every added one."""
        return list(dict.fromkeys([self.data_dir] + [c["data_dir"] for c in self.changes if c["action"] == "add"]))

    def unreadable_files(self, indexed: Callable[[list[str]], set[str]]) -> list[dict[str, str]]:
        """{"path", "reason"} of every file the fit or a later change could not read and that is not
        indexed since (``indexed``: which of some paths the catalog holds), the latest reason of each."""
        reasons: dict[str, str] = {}
        for item in [*self.skipped, *(s for c in self.changes for s in c.get("skipped", ()) if isinstance(s, dict))]:
            if isinstance(item.get("path"), str) and isinstance(item.get("reason"), str):
                reasons[item["path"]] = item["reason"]
        held = indexed(list(reasons)) if reasons else set()
        return [{"path": path, "reason": reason} for path, reason in reasons.items() if path not in held]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settings": self.settings.to_dict(),
                "recall_at_10": {str(k): v for k, v in self.recall_at_10.items()}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> "Manifest":
        """A manifest from its JSON object (any readable version), every field checked: ArtifactError
        naming ``path`` and the first field that is missing or wrong."""
        raw = _upgraded(raw)
        for name, (valid, what) in _FIELDS.items():
            if name in raw and not valid(raw[name]):
                raise ArtifactError(f"{path}: corrupt manifest ({name} must be {what}); fit again")
        missing = [name for name in ("settings", "data_dir", "images") if name not in raw]
        if missing:
            raise ArtifactError(f"{path}: corrupt manifest, {', '.join(missing)} missing; fit again")
        try:
            settings = FitConfig.from_dict(raw["settings"])
        except (PipelineError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: corrupt settings ({exc}); fit again") from None
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        # older layouts are brought to the current one, but for the LiteRT export and the probes (imgsim upgrade
        # adds them)
        version = raw.get("format_version")
        version = version if version in KEPT_VERSIONS else UNEXPORTED_VERSION
        recall = {int(k): float(v) for k, v in raw.get("recall_at_10", {}).items()}
        return cls(**{**known, "settings": settings, "recall_at_10": recall, "format_version": version})


def _upgraded(raw: dict[str, Any]) -> dict[str, Any]:
    """An older manifest in the current shape: format 2 had no backbone setting, 2 and 3 called
    their changes "additions" and had no removals, and before 6 every map was pooled by its average."""
    raw = dict(raw)
    if raw.get("format_version") == LEGACY_VERSION and isinstance(raw.get("settings"), dict):
        raw["settings"] = {"backbone": "none", **raw["settings"]}  # before the backbone, every fit learned from pixels
    if raw.get("format_version") not in KEPT_VERSIONS and isinstance(raw.get("settings"), dict):
        raw["settings"] = {"feature_pooling": "average", **raw["settings"]}  # the only pooling before format 6
    if raw.get("format_version") in (LEGACY_VERSION, 3) and isinstance(raw.get("additions", []), list):
        raw.setdefault("changes", [{"action": "add", **change} if isinstance(change, dict) else change
                                   for change in raw.pop("additions", [])])
        raw.setdefault("removed", {})
    return raw


def _whole(value: Any) -> bool:
    return type(value) is int and value >= 0


def _number(value: Any) -> bool:
    return type(value) in (int, float) and value == value and abs(value) != float("inf")


def _mapping(keys: Callable[[Any], bool], values: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: type(value) is dict and all(keys(k) and values(v) for k, v in value.items())


def _listing(items: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: type(value) is list and all(items(item) for item in value)


def _text(value: Any) -> bool:
    return type(value) is str


def _change(value: Any) -> bool:
    """An add, sync, removal or restore as the manifest records it; an add names its folder."""
    return (type(value) is dict and value.get("action") in ACTIONS
            and (value["action"] != "add" or (_text(value.get("data_dir")) and os.path.isabs(value["data_dir"])))
            and all(_whole(value.get(count, 0)) for count in ("added", "changed", "removed")))


_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "settings": (lambda value: type(value) is dict, "an object"),
    "data_dir": (lambda value: _text(value) and os.path.isabs(value), "an absolute path"),
    "images": (_whole, "a whole number from 0"),
    "created": (_text, "a string"),
    "versions": (_mapping(_text, _text), "an object of strings"),
    "backbone_weights_sha256": (lambda value: value is None or (_text(value) and _SHA256.fullmatch(value)),
                                "a SHA-256 or null"),
    "export_sha256": (lambda value: value is None or (_text(value) and _SHA256.fullmatch(value)), "a SHA-256 or null"),
    "skipped": (_listing(lambda item: type(item) is dict and _text(item.get("path")) and _text(item.get("reason"))),
                "a list of {path, reason}"),
    "history": (_mapping(_text, _listing(_number)), "an object of lists of numbers"),
    "recall_at_10": (_mapping(lambda key: _text(key) and key.isascii() and key.isdigit(), _number),
                     "an object of numbers by nprobe"),
    "stage_seconds": (_mapping(_text, _number), "an object of numbers"),
    "changes": (_listing(_change), "a list of adds (with their data_dir), syncs, removals and restores"),
    "removed": (_mapping(_text, lambda value: _text(value) and _SHA1.fullmatch(value)), "an object of SHA-1s"),
    "unreadable": (_mapping(_text, lambda value: type(value) is list and len(value) == 2 and all(map(_whole, value))),
                   "an object of [size, time] pairs"),
    "next_id": (_whole, "a whole number from 0"),
    "parent": (lambda value: value is None or (_text(value) and "/" not in value and len(value) < 256),
               "a bundle folder's name or null"),
}
