"""The cache of local features (by content hash) and verdicts (by pair of content hashes) beside the bundles, or
for a folder with no fit in the user's cache folder: a second search for duplicates reads them instead of decoding
and matching again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from .verification import VERSION, LocalFeatures, Thresholds, Verification

log = logging.getLogger(__name__)

SHARED_KEPT = 8  # collections whose shared-feature candidates the cache keeps
FACTS_VERSION = 1  # of what groups.Facts.content lists
_PAIR_KEY = re.compile(r"[0-9a-f]{40}:[0-9a-f]{40}(/mirrored)?")
_HASH = re.compile(r"[0-9a-f]{40}")


class VerificationCache:
    """Local features by content hash (one ``.npz`` file each), verdicts by pair of content
    hashes and what the choice of the copy to keep reads of each image (one JSON file each), in a
    folder beside the bundles: a second run reads them instead of decoding and matching again. A
    changed file has a new hash, so nothing stale is ever used; :meth:`prune` drops what belongs to
    no indexed image any more. The verdicts hold for one set of :class:`Thresholds`: a run with
    others decides every pair again (and keeps its own)."""

    def __init__(self, folder: str | os.PathLike, verdicts: bool = True, thresholds: Thresholds = Thresholds()):
        """``verdicts=False``: for features only (the verdicts and facts files are not read). Every file is
        checked as it is read; one that is torn, tampered or of another version is ignored (and
        rebuilt), with one warning."""
        self.folder = Path(folder)
        self.thresholds = thresholds
        self._verdicts_path = self.folder / "verdicts.json"
        self._verdicts: dict[str, dict] = {}
        self._changed = False  # verdicts stored or dropped since the file was read
        self._facts_path = self.folder / "facts.json"
        self._facts: dict[str, list] = {}
        self._facts_changed = False
        self._warned = False
        if verdicts and self._verdicts_path.is_file():
            self._verdicts, self._changed = self._read_entries(
                self._verdicts_path, "pairs", {"version": VERSION, "thresholds": asdict(self.thresholds)},
                lambda key, value: bool(_PAIR_KEY.fullmatch(key)) and _sound_verdict(value))
        if verdicts and self._facts_path.is_file():
            self._facts, self._facts_changed = self._read_entries(
                self._facts_path, "facts", {"version": FACTS_VERSION},
                lambda key, value: bool(_HASH.fullmatch(key)) and _sound_facts(value))

    def _read_entries(self, path: Path, field: str, header: dict, sound) -> tuple[dict, bool]:
        """The entries of the JSON file ``path``'s ``field`` that are ``sound`` (key, value), when its
        ``header`` is this version's (else none: decided by another rule or with other thresholds), and
        whether the file is to be written anew (the others dropped, to be found again)."""
        try:
            stored = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            self._warn(path, "unreadable")
            return {}, True
        if not isinstance(stored, dict):
            self._warn(path, f"not a {path.stem} file")
            return {}, True
        if any(stored.get(name) != value for name, value in header.items()):
            return {}, True
        entries = stored.get(field)
        if not isinstance(entries, dict):
            self._warn(path, f"its {field} are not an object")
            return {}, True
        kept = {key: value for key, value in entries.items() if sound(key, value)}
        if len(kept) < len(entries):
            self._warn(path, f"{len(entries) - len(kept)} of its {field} malformed")
        return kept, len(kept) < len(entries)

    def _warn(self, path: Path, reason: str) -> None:
        """Say once per cache that a file of it was ignored."""
        if not self._warned:
            log.warning("%s: %s; ignored, verified anew from the images", path, reason)
            self._warned = True

    def _features_path(self, content_hash: str) -> Path:
        return self.folder / f"features-v{VERSION}" / content_hash[:2] / f"{content_hash}.npz"

    def features(self, content_hash: str) -> Optional[LocalFeatures]:
        """The stored features of an image, or None when there are none or they are not sound."""
        path = self._features_path(content_hash)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return LocalFeatures.from_arrays(arrays)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            self._warn(path, f"unusable features ({str(exc)[:120]})")
            return None

    def descriptors(self, content_hash: str) -> Optional[np.ndarray]:
        """The stored ORB descriptors of an image alone ((n, 32) uint8), or None as :meth:`features`."""
        path = self._features_path(content_hash)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                descriptors = arrays["descriptors"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            self._warn(path, f"unusable features ({str(exc)[:120]})")
            return None
        if descriptors.dtype != np.uint8 or descriptors.ndim != 2 or descriptors.shape[1] != 32:
            self._warn(path, "unusable features (descriptors of another shape or type)")
            return None
        return descriptors

    def shared_pairs(self, key: str) -> Optional[np.ndarray]:
        """The candidate pairs (rows) that shared local features proposed for the collection ``key``
        names (a digest of its files and contents), or None."""
        try:
            pairs = np.load(self.folder / f"shared-pairs-v{VERSION}-{key}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return pairs if pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2 else None

    def store_shared_pairs(self, key: str, pairs: np.ndarray) -> None:
        """Keep the pairs of :meth:`shared_pairs` (those of the last ``SHARED_KEPT`` collections)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp", delete=False) as out:
            np.save(out, np.asarray(pairs, np.int64).reshape(-1, 2))
        os.replace(out.name, self.folder / f"shared-pairs-v{VERSION}-{key}.npy")
        kept = sorted(self.folder.glob("shared-pairs-*.npy"), key=lambda path: path.stat().st_mtime, reverse=True)
        for path in kept[SHARED_KEPT:]:
            path.unlink(missing_ok=True)

    def store_features(self, content_hash: str, features: LocalFeatures) -> None:
        path = self._features_path(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as out:
            np.savez(out, **features.to_arrays())
        os.replace(out.name, path)

    @staticmethod
    def _key(first_hash: str, second_hash: str, mirrored: bool) -> str:
        return f"{min(first_hash, second_hash)}:{max(first_hash, second_hash)}" + ("/mirrored" if mirrored else "")

    def verdict(self, first_hash: str, second_hash: str, mirrored: bool = False) -> Optional[Verification]:
        """The verdict stored for the pair, told from ``first_hash``'s side (``mirrored``: the one
        of :func:`verify_mirrored`)."""
        stored = self._verdicts.get(self._key(first_hash, second_hash, mirrored))
        if stored is None:
            return None
        verdict = Verification.from_dict(stored)
        return verdict if first_hash <= second_hash else verdict.swapped()

    def store_verdict(self, first_hash: str, second_hash: str, verdict: Verification, mirrored: bool = False) -> None:
        """Keep ``verdict`` (told from ``first_hash``'s side), unrounded: a cached run decides alike."""
        if first_hash > second_hash:
            verdict = verdict.swapped()
        self._verdicts[self._key(first_hash, second_hash, mirrored)] = asdict(verdict)
        self._changed = True

    def facts(self, content_hash: str) -> Optional[list]:
        """What the choice of the copy to keep read of an image of these contents
        (:meth:`pipeline.collection.groups.Facts.content`), or None."""
        return self._facts.get(content_hash)

    def store_facts(self, content_hash: str, content: list) -> None:
        self._facts[content_hash] = content
        self._facts_changed = True

    def prune(self, kept_hashes: set[str]) -> None:
        """Forget the features, facts and verdicts of every image whose hash is not in ``kept_hashes``."""
        kept = {key: value for key, value in self._verdicts.items()
                if all(part in kept_hashes for part in key.split("/")[0].split(":"))}
        self._changed |= len(kept) < len(self._verdicts)
        self._verdicts = kept
        facts = {key: value for key, value in self._facts.items() if key in kept_hashes}
        self._facts_changed |= len(facts) < len(self._facts)
        self._facts = facts
        for path in self.folder.glob(f"features-v{VERSION}/*/*.npz"):
            if path.stem not in kept_hashes:
                path.unlink(missing_ok=True)

    def save(self) -> None:
        """Write the verdicts and the facts if they changed (atomically: a crash leaves the old file or the new one)."""
        if self._changed or not self._verdicts_path.is_file():
            _write_json(self._verdicts_path, {"version": VERSION, "thresholds": asdict(self.thresholds),
                                              "pairs": self._verdicts})
            self._changed = False
        if self._facts_changed:
            _write_json(self._facts_path, {"version": FACTS_VERSION, "facts": self._facts})
            self._facts_changed = False


def _write_json(path: Path, payload: dict) -> None:
    """``payload`` written whole at ``path`` or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
        json.dump(payload, out)
    os.replace(out.name, path)


def _sound_verdict(value) -> bool:
    try:
        Verification.from_dict(value)
    except ValueError:
        return False
    return True


def _sound_facts(value) -> bool:
    """Whether ``value`` is what Facts.content lists: width, height, opaque share, colour, bits, camera EXIF, format."""
    if not isinstance(value, list) or len(value) != 7:
        return False
    width, height, opaque, colour, bits, exif, camera_format = value
    return (all(type(side) is int and side > 0 for side in (width, height)) and type(opaque) in (int, float)
            and 0 <= opaque <= 1 and all(type(flag) is bool for flag in (colour, exif, camera_format))
            and bits in (1, 8, 16, 24) and type(bits) is int)
