"""Writing bundles: the one writer of an artifacts folder at a time (a lock), its staging folder, the atomic
commit that points CURRENT at the new bundle, the ledger that outlives bundles (the next id, the restore points)
and which bundles a commit keeps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ArtifactError
from .layout import BUNDLE_PREFIXES, LEDGER, LOCK, MANIFEST, POINTER, bundles, has_bundle, required_files
from .manifest import FORMAT_VERSION

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"


class ArtifactWriter:
    """Context manager that stages a new bundle and commits it atomically, as the folder's only writer.

    Entering takes an exclusive lock on the artifacts folder (``.lock``, released when the process
    ends, however it ends); a second writer (a fit, an add) fails at once with ArtifactError
    instead of silently overwriting the first one's work. A writer that updates the current bundle
    loads it inside the block. Files are written under ``writer.path``; :meth:`commit` makes them
    the current bundle, durably (every file and folder synced to disk before CURRENT moves, and
    CURRENT's folder after). Leaving the block without a commit (an exception, an interrupt)
    deletes the staging folder and keeps the previous bundle.
    """

    def __init__(self, artifacts_dir: str | os.PathLike):
        self.root = Path(artifacts_dir)
        self.path: Path | None = None
        self._lock: Optional[int] = None
        self._made_root = False

    def __enter__(self) -> "ArtifactWriter":
        self._made_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ArtifactError(f"{self.root}: cannot write artifacts there ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self._lock)
            self._lock = None
            raise ArtifactError(f"{self.root}: another fit, add, sync or remove is writing to it (process {holder}); "
                                f"try again when it has finished") from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        _remove_abandoned(self.root)
        self.path = self.root / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.path.mkdir()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if self._made_root and not has_bundle(self.root):  # a first fit that failed leaves no empty folder behind
            (self.root / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.root.rmdir()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None
        if isinstance(exc, OSError):  # a full disk, a folder turned read-only: one clear error, nothing half-written
            raise ArtifactError(f"{self.root}: cannot write artifacts there ({exc.strerror or exc}); the previous "
                                f"bundle is unchanged") from None

    def commit(self, version: int = FORMAT_VERSION, keep: int = 2, next_id: int = 0) -> Path:
        """Move the staged bundle (of format ``version``) into place, point CURRENT at it, raise the
        folder's id high-water mark to ``next_id``, and keep the bundles :func:`kept_bundles` names
        (the earlier ones can be restored: :func:`restore`)."""
        missing = [name for name in required_files(version) if not (self.path / name).exists()]
        if missing:
            raise ArtifactError(f"cannot commit the bundle: {', '.join(missing)} not written")
        _sync_folder(self.path, files=True)
        final = self.root / f"{BUNDLE_PREFIXES[0]}{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
        self.path.rename(final)
        self.path = None
        ledger = _read_ledger(self.root)
        ledger["next_id"] = max(next_id, ledger["next_id"])
        parent, lost = _dropped(final)
        if lost:
            ledger["restore_points"][parent] = max(lost, ledger["restore_points"].get(parent, 0))
        _write_durably(self.root / LEDGER, json.dumps(ledger))  # before CURRENT moves
        self.point_at(final)
        kept = kept_bundles(self.root, keep)
        for old in bundles(self.root):
            if old != final and old not in kept:
                shutil.rmtree(old, ignore_errors=True)
        ledger["restore_points"] = {name: count for name, count in ledger["restore_points"].items()
                                    if (self.root / name) in kept}
        _write_durably(self.root / LEDGER, json.dumps(ledger))
        return final

    def point_at(self, folder: Path) -> None:
        """Make ``folder`` (a committed bundle of this artifacts folder) the current one, durably."""
        _sync_folder(self.root)  # the bundle's own entry
        _write_durably(self.root / POINTER, folder.name + "\n")


def _write_durably(path: Path, text: str) -> None:
    """Replace the small file ``path`` with ``text`` atomically and durably (its folder synced)."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_folder(path.parent)


def read_next_id(artifacts_dir: str | os.PathLike) -> int:
    """The id the next indexed image of ``artifacts_dir`` gets at least: its high-water mark, which
    outlives every bundle (0 when there is none yet: the bundles' own then rule)."""
    return _read_ledger(Path(artifacts_dir))["next_id"]


def _read_ledger(root: Path) -> dict[str, Any]:
    """The artifacts folder's ledger, checked: an unreadable or tampered one counts as empty (the
    bundles' own next ids still hold; restore points are kept by age alone until the next drop)."""
    empty: dict[str, Any] = {"next_id": 0, "restore_points": {}}
    try:
        raw = json.loads((root / LEDGER).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return empty
    points = raw.get("restore_points") if isinstance(raw, dict) else None
    if (not isinstance(raw, dict) or type(raw.get("next_id")) is not int or raw["next_id"] < 0
            or not isinstance(points, dict) or not all(type(n) is int and n > 0 for n in points.values())):
        log.warning("%s: unreadable ledger, ignored", root / LEDGER)
        return empty
    return {"next_id": raw["next_id"], "restore_points": points}


def kept_bundles(artifacts_dir: str | os.PathLike, keep: int) -> set[Path]:
    """The bundles a commit keeps, so that neither a run of small changes nor a restore can take
    away the way back from a large loss:

    - the ``keep`` newest;
    - the ``keep`` newest *restore points*: each bundle that a later change dropped images from (a
      sync, a removal, a ``--move-to``; a new fit drops all of them), as the ledger records them;
    - the restore point of the largest drop, however old.

    An add drops nothing and a change that changes nothing writes no bundle, so neither uses up a
    restore point.
    """
    folders = bundles(artifacts_dir)
    kept = set(folders[-max(1, keep):])
    dropped = _read_ledger(Path(artifacts_dir))["restore_points"]
    points = [folder for folder in folders if dropped.get(folder.name, 0) > 0]
    kept |= set(points[-max(1, keep):])
    if points:
        kept.add(max(points, key=lambda folder: dropped[folder.name]))
    return kept


def _dropped(folder: Path) -> tuple[Optional[str], int]:
    """(the bundle ``folder`` was made from, how many of its images the change dropped): every one
    for a new fit, the removed ones for an add, sync or removal, none for an upgrade."""
    parent, created, changes, _ = _lineage(folder)
    if parent is None or not (folder.parent / parent).is_dir():
        return parent, 0
    _, parent_created, parent_changes, parent_images = _lineage(folder.parent / parent)
    if created != parent_created:  # a new fit
        return parent, parent_images
    if len(changes) > len(parent_changes) and isinstance(changes[-1], dict):
        removed = changes[-1].get("removed", 0)
        return parent, removed if type(removed) is int and removed > 0 else 0
    return parent, 0


def _lineage(folder: Path) -> tuple[Optional[str], Any, list, int]:
    """(parent, created, changes, images) of a bundle's manifest, as far as it can be read."""
    try:
        raw = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None, None, [], 0
    if not isinstance(raw, dict):
        return None, None, [], 0
    changes, images = raw.get("changes"), raw.get("images")
    return (raw.get("parent") if isinstance(raw.get("parent"), str) else None, raw.get("created"),
            changes if isinstance(changes, list) else [], images if type(images) is int else 0)


def _sync_folder(folder: Path, files: bool = False) -> None:
    """fsync a folder's entries (and with ``files``, every file in it first) so that a power cut
    after this cannot leave names pointing at unwritten data."""
    if files:
        for path in folder.iterdir():
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_abandoned(root: Path) -> None:
    """Delete staging folders and pointer files left by writers whose process no longer runs."""
    for leftover in [*root.glob(f"{_STAGING_PREFIX}*"), *root.glob(f"{POINTER}.tmp-*"), *root.glob(f"{LEDGER}.tmp-*")]:
        pid = leftover.name.split("-")[1] if leftover.name.startswith(_STAGING_PREFIX) else leftover.name.split("-")[-1]
        if not pid.isdigit() or not _process_alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
