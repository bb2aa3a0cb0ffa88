"""The bundle: everything a fit produces and a search needs, loaded as one object and saved atomically.

Layout of an artifacts folder::

    artifacts/
      CURRENT              name of the bundle folder in use (replaced atomically)
      bundle-20261123T120501-3f2a/
        manifest.json      settings, versions, counts, skipped files, training history, recall, changes since
        encoder.keras      image -> descriptor (the vector that is indexed and searched), as a Keras model
        encoder.tflite     the same encoder exported for LiteRT: what every command but a fit runs
        autoencoder.keras  the full autoencoder (reconstructions for the report)
        index.npz          the routed KNN index: metric, centroids, cluster of each vector, norms, nprobe, expansion
        index_vectors.npy  the index's vectors as it scans them (prepared, in cluster order): memory-mapped
        catalog.arrow      id, path, label, content hash and file stat of every indexed image (columnar,
                           memory-mapped; catalog.json before format 8, with the clusters)
        embeddings.npy     the descriptors, row i = catalog entry i
        probes.npz         a few fitted images and their descriptors: what ties the encoder to this bundle
      LEDGER.json          what outlives the bundles: the id the next indexed image gets (restoring an older
                           bundle never hands out an id again) and the restore points (see kept_bundles)

:class:`Bundle` reads and checks all of it (:meth:`Bundle.load`) and writes it (:meth:`Bundle.save`)
through an :class:`ArtifactWriter`, which stages a new folder and only then points CURRENT at it,
so a fit, add or sync that fails or is interrupted leaves the previous bundle loadable. Nothing in
a bundle is a pickle: arrays are read with ``allow_pickle=False``, so loading a bundle from someone
else runs no code of theirs. File names and format versions live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .catalog import Catalog
from .config import FitConfig
from .errors import ArtifactError, InputError, shown
from .index import ClusteredIndex
from .manifest import FORMAT_VERSION, LEGACY_VERSION, READABLE_VERSIONS, Manifest

log = logging.getLogger(__name__)

LEGACY_INDEX = "index.joblib"
POINTER = "CURRENT"
LEDGER = "LEDGER.json"
LOCK = ".lock"
MANIFEST, ENCODER, EXPORT, AUTOENCODER, INDEX, INDEX_VECTORS, CATALOG, JSON_CATALOG, EMBEDDINGS, PROBES = (
    "manifest.json", "encoder.keras", "encoder.tflite", "autoencoder.keras", "index.npz", "index_vectors.npy",
    "catalog.arrow", "catalog.json", "embeddings.npy", "probes.npz")
REQUIRED_FILES = (MANIFEST, ENCODER, EXPORT, AUTOENCODER, INDEX, INDEX_VECTORS, CATALOG, JSON_CATALOG, EMBEDDINGS,
                  PROBES)
MODEL_FILES = (ENCODER, EXPORT, AUTOENCODER, PROBES)  # written by a fit, shared by the bundles of its changes
# where a file appeared (a bundle of an older format has no such file), and where one was replaced
SINCE_VERSION = {INDEX_VECTORS: 5, EXPORT: 6, PROBES: 7, CATALOG: 8}
UNTIL_VERSION = {JSON_CATALOG: 7}
MAX_EXPORT_BYTES = 512 * 1024 * 1024  # a larger export is refused before it is read (a fit's: 5 to 20 MB)
PROBE_IMAGES = 2  # fitted images whose descriptors the encoder must give again, whenever it is loaded
PROBE_MIN_COSINE = 0.999  # per probe image: an export gives 0.99999 (checked at the fit), float16 on a GPU 0.9999
_STAGING_PREFIX = ".staging-"
_BUNDLE_PREFIXES = ("bundle-", "fit-")  # "fit-": folders written before format 4


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
        final = self.root / f"{_BUNDLE_PREFIXES[0]}{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
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


def bundles(artifacts_dir: str | os.PathLike) -> list[Path]:
    """The committed bundle folders of an artifacts folder, oldest first."""
    root = Path(artifacts_dir)
    return sorted((folder for prefix in _BUNDLE_PREFIXES for folder in root.glob(f"{prefix}*") if folder.is_dir()),
                  key=lambda folder: folder.name.split("-", 1)[1])


def restore(artifacts_dir: str | os.PathLike, name: Optional[str] = None) -> Path:
    """Make a kept bundle the current one again: ``name`` (a folder that :func:`bundles` lists), or
    by default the newest one older than the current. Whatever bundle is current stays kept."""
    if not Path(artifacts_dir).is_dir():  # the writer's lock would make it
        raise _no_fit(Path(artifacts_dir))
    with ArtifactWriter(artifacts_dir) as writer:
        current, kept = pointed_folder(artifacts_dir), bundles(artifacts_dir)
        if name is not None:
            chosen = [folder for folder in kept if folder.name == name]
        else:
            chosen = kept[: kept.index(current) if current in kept else len(kept)][-1:]
        if not chosen:
            available = ", ".join(folder.name for folder in kept) or "none"
            raise ArtifactError(f"{writer.root}: no {'bundle ' + shown(name, 80) if name else 'older bundle'} to restore "
                                f"(kept: {available})")
        Bundle.load_folder(chosen[0]).check_export_file()  # refuses one that is incomplete or corrupt
        writer.point_at(chosen[0])
        return chosen[0]


def upgrade_catalog(artifacts_dir: str | os.PathLike) -> Path:
    """Rewrite the current bundle, of format 7, as the current format: its catalog made columnar,
    nothing else changed (``imgsim upgrade``; older formats need the export too: pipeline.export.upgrade)."""
    with ArtifactWriter(artifacts_dir) as writer:
        bundle = Bundle.load(artifacts_dir)
        if bundle.manifest.format_version != SINCE_VERSION[CATALOG] - 1:
            raise ArtifactError(f"{bundle.folder}: a bundle of format {bundle.manifest.format_version}, not "
                                f"{SINCE_VERSION[CATALOG] - 1}: its catalog alone cannot be converted")
        bundle.manifest.format_version = FORMAT_VERSION
        return bundle.save(writer)


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


def pointed_folder(artifacts_dir: str | os.PathLike) -> Optional[Path]:
    """The bundle folder that CURRENT names, unchecked (None when there is none): cheap enough to
    ask every second."""
    try:
        return Path(artifacts_dir) / (Path(artifacts_dir) / POINTER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def has_bundle(artifacts_dir: str | os.PathLike) -> bool:
    """Whether ``artifacts_dir`` holds a committed bundle (checked when loaded, not here)."""
    return pointed_folder(artifacts_dir) is not None


def required_files(version: int) -> list[str]:
    """The files of a bundle of format ``version``."""
    return [name for name in REQUIRED_FILES if SINCE_VERSION.get(name, 0) <= version <= UNTIL_VERSION.get(name, version)]


def current_folder(artifacts_dir: str | os.PathLike, allow_pickle: bool = False) -> Path:
    """The folder of the current bundle, checked to be complete and of a readable format version
    (see :func:`checked_folder`)."""
    root = Path(artifacts_dir)
    folder = pointed_folder(root)
    if folder is None:
        raise _no_fit(root)
    return checked_folder(folder, allow_pickle)


def _no_fit(root: Path) -> ArtifactError:
    hint = "it does not exist" if not root.exists() else "it holds no completed fit"
    where = "" if root.is_absolute() else f" (looked in {root.resolve()})"
    return ArtifactError(f"{root}: no fitted artifacts{where}: {hint}; fit a folder into it first (imgsim fit DATA_DIR "
                         f"--artifacts {root}), or name the one a fit wrote with --artifacts DIR")


def checked_folder(folder: Path, allow_pickle: bool = False) -> Path:
    """``folder``, checked to hold a complete bundle of a readable format version.

    A bundle of LEGACY_VERSION (its index a pickle, which can run code when loaded) is read only
    with ``allow_pickle``, and with a warning.
    """
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"{folder}: incomplete artifacts, missing {MANIFEST}; fit again")
    version = _read_json(folder / MANIFEST, "manifest").get("format_version")
    if version == LEGACY_VERSION and not allow_pickle:
        raise ArtifactError(f"{folder}: artifacts of format version {version}, whose index is a pickle that can run code "
                            f"when loaded; fit again, or pass --allow-pickle for a bundle you made yourself")
    if version != LEGACY_VERSION and (type(version) is not int or version not in READABLE_VERSIONS):
        raise ArtifactError(
            f"{folder}: artifacts of format version {version}, this version reads {FORMAT_VERSION}; fit again"
        )
    required = [LEGACY_INDEX if name == INDEX and version == LEGACY_VERSION else name
                for name in required_files(version)]
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"{folder}: incomplete artifacts, missing {', '.join(missing)}; fit again")
    if version == LEGACY_VERSION:
        log.warning("%s: reading a format-%d bundle and unpickling its index (--allow-pickle); fit again to convert it",
                    folder, version)
    return folder


class Bundle:
    """A fitted bundle in memory: manifest, catalog, embeddings and index, kept in step; the encoder
    is loaded on first use. ``folder`` is where it was loaded from or last saved to."""

    def __init__(self, manifest: Manifest, catalog: Catalog, embeddings: np.ndarray, index: ClusteredIndex,
                 folder: Path):
        self.manifest = manifest
        self.catalog = catalog
        self.embeddings = embeddings
        self.index = index
        self.folder = folder
        self._encoders: dict[str, Any] = {}
        self._keras_file_sha256: Optional[str] = None

    @property
    def settings(self) -> FitConfig:
        return self.manifest.settings

    @classmethod
    def load(cls, artifacts_dir: str | os.PathLike, allow_pickle: bool = False, memory_map: bool = True) -> "Bundle":
        """The current bundle of ``artifacts_dir``, every part checked: ArtifactError naming the file
        for anything missing, corrupt, foreign or inconsistent (``allow_pickle``: see :func:`checked_folder`).

        The embeddings and the index's vectors are memory-mapped: the operating system reads the
        pages a search touches, and start-up and memory do not grow with the collection's vectors;
        ``memory_map=False`` reads the index's vectors into memory instead. The next image gets an id
        above every id this folder has handed out, in any bundle."""
        bundle = cls.load_folder(current_folder(artifacts_dir, allow_pickle), allow_pickle, memory_map)
        bundle.manifest.next_id = max(bundle.manifest.next_id, read_next_id(artifacts_dir))
        return bundle

    @classmethod
    def load_folder(cls, folder: Path, allow_pickle: bool = False, memory_map: bool = True) -> "Bundle":
        """The bundle in ``folder`` (current or not), every part checked as :meth:`load` does."""
        folder = checked_folder(folder, allow_pickle)
        raw = _read_json(folder / MANIFEST, "manifest")
        manifest = Manifest.from_dict(raw, folder / MANIFEST)
        columnar = manifest.format_version >= SINCE_VERSION[CATALOG]
        catalog = (Catalog.read(folder / CATALOG) if columnar else
                   Catalog.from_json(_read_json(folder / JSON_CATALOG, "catalog"), folder / JSON_CATALOG))
        embeddings = _load_embeddings(folder)
        counts = {MANIFEST: manifest.images, CATALOG: len(catalog), EMBEDDINGS: len(embeddings)}
        if len(set(counts.values())) > 1:
            described = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise ArtifactError(f"{folder}: inconsistent artifacts, image counts differ ({described}); fit again")
        index = _load_index(folder, embeddings, raw, memory_map)
        index.nprobe = manifest.settings.nprobe  # the setting as given; the stored count is the tuned nprobe_
        if not columnar and not np.array_equal(catalog.cluster_array(), index.assignments_):
            raise ArtifactError(f"{folder / JSON_CATALOG}: corrupt catalog (its clusters are not the index's); fit again")
        catalog.clusters = index.assignments_
        ids = catalog.id_array()
        manifest.next_id = max(manifest.next_id, int(ids[-1]) + 1 if len(ids) else 0)  # bundles before ids
        return cls(manifest, catalog, embeddings, index, folder)  # the encoder's files are read when it is used

    @property
    def exported(self) -> bool:
        """Whether the bundle holds the encoder's LiteRT export (format 6 on)."""
        return self.manifest.format_version >= SINCE_VERSION[EXPORT]

    def export(self) -> bytes:
        """The LiteRT export of the encoder, checked against the SHA-256 in the manifest (its size
        first: one over MAX_EXPORT_BYTES is refused unread)."""
        path = self._export_path()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read the encoder's export ({exc.strerror}); fit again") from None
        self._check_export_sha256(hashlib.sha256(data).hexdigest())
        return data

    def check_export_file(self) -> None:
        """Check the export's size and SHA-256 as :meth:`export` does, reading it in blocks (memory
        stays flat): for commands that keep a bundle without running its encoder."""
        if not self.exported:
            return
        path, digest = self._export_path(), hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read the encoder's export ({exc.strerror}); fit again") from None
        self._check_export_sha256(digest.hexdigest())

    def _export_path(self) -> Path:
        """The export's path, once it is known to be there and not too large to read."""
        path = self.folder / EXPORT
        if not self.exported:
            raise ArtifactError(f"{self.folder}: a bundle made before format 6 has no LiteRT export; add it with: "
                                f"imgsim upgrade --artifacts {self.folder.parent} (or use --runtime keras)")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read the encoder's export ({exc.strerror}); fit again") from None
        if size > MAX_EXPORT_BYTES:
            raise ArtifactError(f"{path}: the encoder's export is {size:,} bytes, over the {MAX_EXPORT_BYTES:,}-byte "
                                f"limit of any fit's; fit again")
        return path

    def _check_export_sha256(self, digest: str) -> None:
        if digest != self.manifest.export_sha256:
            raise ArtifactError(f"{self.folder / EXPORT}: the encoder's export is not the one this bundle was made with "
                                f"(SHA-256 differs from the manifest's); fit again")

    def encoder(self, runtime: Optional[str] = None):
        """The fit's encoder ready to run (:class:`pipeline.runtime.Encoder`), on ``runtime``
        (default: LiteRT where installed, else Keras); loaded once per runtime. A bundle of an int8
        fit runs its export alone (InputError for Keras)."""
        from .runtime import KerasEncoder, LiteRTEncoder, litert_installed, resolve_runtime

        runtime = resolve_runtime(runtime)
        if runtime == "keras" and self.settings.precision == "int8":
            need = ("use --runtime litert" if litert_installed() else
                    "it runs on LiteRT (ai-edge-litert), which is not installed here")
            raise InputError(f"{self.folder}: its images were described by its int8 export, which the float encoder "
                             f"(Keras) would not match; {need}")
        if runtime not in self._encoders:
            expected = (self.settings.image_size, int(self.embeddings.shape[1]))
            if runtime == "litert":
                encoder = LiteRTEncoder(self.export(), expected=expected, source=str(self.folder / EXPORT))
            else:
                encoder = KerasEncoder(self.keras_encoder())
            self.check_encoder(encoder)
            self._encoders[runtime] = encoder
        return self._encoders[runtime]

    def check_encoder(self, encoder) -> None:
        """ArtifactError unless ``encoder`` (loaded here, or run elsewhere) takes this bundle's images
        to its descriptors' size and gives its probe images the descriptors the fit gave them."""
        if (encoder.image_size, encoder.dims) != (self.settings.image_size, int(self.embeddings.shape[1])):
            raise ArtifactError(f"{self.folder}: the encoder takes {encoder.image_size} px images to "
                                f"{encoder.dims} values, the manifest says {self.settings.image_size} px and the "
                                f"embeddings have {self.embeddings.shape[1]} values; fit again")
        self._check_probes(encoder)

    def _check_probes(self, encoder) -> None:
        """ArtifactError unless ``encoder`` gives the stored probe images the descriptors the fit gave
        them, and those are the indexed ones of the same images (where still indexed): a model that
        merely has the right shapes (another fit's, re-hashed into this manifest) is refused."""
        if self.manifest.format_version < SINCE_VERSION[PROBES]:
            return
        path = self.folder / PROBES
        try:
            with np.load(path, allow_pickle=False) as stored:
                images, descriptors, hashes = stored["images"], stored["descriptors"], stored["hashes"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{path}: cannot load the probe images ({exc}); fit again") from None
        size, dims = self.settings.image_size, self.embeddings.shape[1]
        if (images.dtype != np.uint8 or images.shape[1:] != (size, size, 3) or not 0 < len(images) <= 16
                or descriptors.shape != (len(images), dims) or descriptors.dtype != np.float32
                or hashes.shape != (len(images),) or hashes.dtype.kind != "U"):
            raise ArtifactError(f"{path}: corrupt probe images (not {size} px images with their {dims}-value "
                                f"descriptors and content hashes); fit again")
        cosine = min_cosine(encoder.encode(images), descriptors)
        if not cosine >= PROBE_MIN_COSINE:  # also catches nan
            raise ArtifactError(f"{self.folder}: the encoder is not the one this bundle's images were embedded with "
                                f"(its descriptors of the stored probe images differ, cosine {cosine:.4f}); fit again")
        rows = {digest: found[0] for digest in hashes.tolist() if (found := self.catalog.rows_with_hash(digest))}
        present = [number for number, digest in enumerate(hashes.tolist()) if digest in rows]
        if present and not min_cosine(descriptors[present], np.asarray(self.embeddings[
                [rows[hashes[number]] for number in present]])) >= PROBE_MIN_COSINE:
            raise ArtifactError(f"{path}: the probe images' descriptors are not those indexed for the same images; "
                                f"fit again")

    def model_bytes(self, runtime: str) -> bytes:
        """The encoder's file that ``runtime`` loads, for workers elsewhere: the export (checked),
        or the Keras model."""
        if runtime == "litert":
            self.encoder(runtime)  # checked here before workers elsewhere run it
            return self.export()
        try:
            return (self.folder / ENCODER).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{self.folder / ENCODER}: cannot read the encoder ({exc.strerror})") from None

    def keras_encoder(self):
        """image -> descriptor, the Keras model as the fit saved it."""
        if not self.exported and not self.settings.uses_backbone and self.settings.color_weight > 0:
            raise ArtifactError(f"{self.folder}: a bundle made before format {FORMAT_VERSION} whose colour histogram "
                                f"is computed otherwise since; fit again")
        from .runtime import load_keras_model

        return load_keras_model(self.folder / ENCODER)

    def encoder_sha256(self) -> str:
        """What identifies the fit's encoder, which add, sync and remove keep: the SHA-256 of its
        export (as the manifest records it), or before format 6 of its Keras file (read once)."""
        if self.exported:
            return self.manifest.export_sha256
        if self._keras_file_sha256 is None:
            try:
                self._keras_file_sha256 = hashlib.sha256((self.folder / ENCODER).read_bytes()).hexdigest()
            except OSError as exc:
                raise ArtifactError(f"{self.folder / ENCODER}: cannot read the encoder ({exc.strerror})") from None
        return self._keras_file_sha256

    def autoencoder(self):
        """The full autoencoder, as the fit saved it."""
        from .runtime import load_keras_model

        return load_keras_model(self.folder / AUTOENCODER)

    def append(self, catalog: Catalog, vectors: np.ndarray) -> list[int]:
        """Index more images (``catalog``'s clusters and ids are set here: each image goes to its
        nearest cluster and gets a new id); their ids."""
        self.index.add(vectors)
        catalog = catalog.numbered(self.manifest.next_id)  # see Bundle.load
        self.manifest.next_id += len(catalog)
        self.catalog = self.catalog + catalog
        self.catalog.clusters = self.index.assignments_
        self.embeddings = np.concatenate([np.asarray(self.embeddings), np.asarray(vectors, dtype=np.float32)])
        self.manifest.images = len(self.catalog)
        return catalog.ids.tolist()

    def remove(self, rows: np.ndarray) -> None:
        """Drop the images in catalog rows ``rows`` (the other images keep their ids)."""
        keep = np.ones(len(self.catalog), dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = False
        self.index.remove(np.flatnonzero(~keep))
        self.catalog = self.catalog.select(keep)
        self.catalog.clusters = self.index.assignments_
        self.embeddings = np.asarray(self.embeddings)[keep]
        self.manifest.images = len(self.catalog)

    def save(self, writer: ArtifactWriter) -> Path:
        """Write the bundle into the writer's staging folder (the models linked or copied from
        :attr:`folder` unless already written there) and commit it; the new folder."""
        staging = writer.path
        for name in MODEL_FILES:
            if not (staging / name).exists() and name in required_files(self.manifest.format_version):
                try:  # committed bundles are never written to again: the new one can share the file
                    os.link(self.folder / name, staging / name)
                except OSError:  # another file system
                    shutil.copy2(self.folder / name, staging / name)
        np.savez(staging / INDEX, **self.index.to_arrays())
        np.save(staging / INDEX_VECTORS, np.asarray(self.index.vectors_))
        np.save(staging / EMBEDDINGS, np.asarray(self.embeddings, dtype=np.float32))
        self.catalog.clusters = self.index.assignments_
        if self.manifest.format_version >= SINCE_VERSION[CATALOG]:
            self.catalog.write(staging / CATALOG)
        else:  # a bundle keeps its format until imgsim upgrade converts it
            (staging / JSON_CATALOG).write_text(json.dumps(self.catalog.to_json()))
        self.manifest.images = len(self.catalog)
        current = pointed_folder(writer.root)  # under the writer's lock: the bundle this one replaces
        self.manifest.parent = current.name if current is not None else None
        (staging / MANIFEST).write_text(json.dumps(self.manifest.to_dict(), indent=2))
        self.folder = writer.commit(self.manifest.format_version, self.settings.keep_bundles, self.manifest.next_id)
        return self.folder


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (ArtifactError naming the file if unreadable or not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: unreadable {what} ({exc}); fit again") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: not a {what} (a JSON object), got {type(value).__name__}; fit again")
    return value


def _load_embeddings(folder: Path) -> np.ndarray:
    """The embeddings, memory-mapped (no pickle), checked to be a finite float32 matrix."""
    path = folder / EMBEDDINGS
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot load the embeddings ({exc})") from None
    if embeddings.ndim != 2 or embeddings.dtype != np.float32 or not embeddings.shape[1]:
        raise ArtifactError(f"{path}: the embeddings are {embeddings.dtype} of shape {embeddings.shape}, not a float32 "
                            f"matrix; fit again")
    if not all_finite(embeddings):
        raise ArtifactError(f"{path}: the embeddings hold values that are not finite (NaN or infinity); fit again")
    return embeddings


def save_probes(folder: Path, images: np.ndarray, descriptors: np.ndarray, hashes: Sequence[str]) -> None:
    """Write a fit's probe images (uint8), the descriptors it indexed for them and their content
    hashes into ``folder``: what :meth:`Bundle.encoder` checks every encoder against."""
    np.savez(folder / PROBES, images=np.asarray(images, np.uint8), descriptors=np.asarray(descriptors, np.float32),
             hashes=np.asarray(list(hashes), dtype="<U40"))


def row_cosines(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The cosine between each row of ``found`` and the same row of ``expected`` (nan where a row is not finite)."""
    found, expected = np.asarray(found, np.float64), np.asarray(expected, np.float64)
    norms = np.linalg.norm(found, axis=1) * np.linalg.norm(expected, axis=1)
    return np.sum(found * expected, axis=1) / np.maximum(norms, 1e-30)


def min_cosine(found: np.ndarray, expected: np.ndarray) -> float:
    """The smallest cosine between the rows of ``found`` and of ``expected`` (1.0 for none; nan
    where a row is not finite)."""
    if not len(found):
        return 1.0
    cosines = row_cosines(found, expected)
    return float(np.nan if not np.isfinite(cosines).all() else cosines.min())


def all_finite(array: np.ndarray, rows: int = 65_536) -> bool:
    """Whether every value of ``array`` (memory-mapped, perhaps) is finite, read in blocks of rows."""
    return all(np.isfinite(array[start : start + rows]).all() for start in range(0, len(array), rows))


def load_index(folder: Path, check_vectors: bool = True) -> ClusteredIndex:
    """The index of the bundle in ``folder`` alone, its vectors memory-mapped (``check_vectors=False``:
    not read here; an index shard checks those it holds); ArtifactError as :meth:`Bundle.load` gives."""
    folder = checked_folder(folder)
    embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)  # its shape alone is read
    return _load_index(folder, embeddings, _read_json(folder / MANIFEST, "manifest"), True, check_vectors)


def _load_index(folder: Path, embeddings: np.ndarray, manifest: dict[str, Any], memory_map: bool,
                check_vectors: bool = True) -> ClusteredIndex:
    """The index over ``embeddings`` from its stored arrays (no pickle); a format-3 bundle's nprobe
    from its manifest, a legacy bundle's pickled index only where :func:`current_folder` let it through;
    bundles before format 5 lay their vectors out anew in memory."""
    older = ({"nprobe": manifest.get("nprobe"), "expansion": manifest.get("settings", {}).get("query_expansion")}
             if manifest.get("format_version") in (LEGACY_VERSION, 3) else {})
    if not (folder / INDEX).exists() and (folder / LEGACY_INDEX).exists():
        return _load_legacy_index(folder, embeddings, older)
    try:
        laid_out = None
        if (folder / INDEX_VECTORS).exists():
            laid_out = np.load(folder / INDEX_VECTORS, mmap_mode="r" if memory_map else None, allow_pickle=False)
        with np.load(folder / INDEX, allow_pickle=False) as stored:
            arrays = {**older, **stored}
            return ClusteredIndex.from_arrays(arrays, embeddings, laid_out, check_vectors)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:  # missing, truncated, object arrays
        raise ArtifactError(f"{folder / INDEX}: cannot load the index ({exc})") from None


def _load_legacy_index(folder: Path, embeddings: np.ndarray, older: dict[str, Any]) -> ClusteredIndex:
    import joblib  # scikit-learn's dependency; only legacy bundles need it

    try:
        pickled = joblib.load(folder / LEGACY_INDEX)
        return ClusteredIndex.from_arrays({"metric": pickled.metric, "centroids": pickled.centroids_,
                                           "assignments": pickled.assignments_, **older}, embeddings)
    except Exception as exc:  # an old pickle can fail in many ways
        raise ArtifactError(f"{folder / LEGACY_INDEX}: cannot load the index ({exc}); fit again") from None
