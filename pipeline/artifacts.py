"""The artifact bundle: everything a fit produces and a search needs, saved atomically.

Layout of an artifacts folder::

    artifacts/
      CURRENT              name of the fit folder in use (replaced atomically)
      fit-20261123T120501-3f2a/
        manifest.json      settings, versions, counts, skipped files, training history, recall
        encoder.keras      image -> latent vector (with its PCA layers)
        autoencoder.keras  the full model (reconstructions for the report)
        index.npz          the routed KNN index's learned state: metric, centroids, cluster of each vector
        catalog.json       path, label, content hash and cluster of every indexed image
        embeddings.npy     the latent vectors, row i = catalog entry i

A fit writes into a hidden staging folder and only then points CURRENT at it, so a fit that
fails or is interrupted leaves the previous fit loadable. Nothing in a bundle is a pickle: arrays
are read with ``allow_pickle=False``, so loading a bundle from someone else runs no code of theirs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import FitConfig
from .errors import ArtifactError, PipelineError
from .index import ClusteredIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: encoder = blocks + descriptor head, index.npz (2: no backbone, index.joblib a pickle)
LEGACY_VERSION = 2  # read only when asked to (allow_pickle): its index is a pickle
LEGACY_INDEX = "index.joblib"
POINTER = "CURRENT"
LOCK = ".lock"
REQUIRED_FILES = (
    "manifest.json",
    "encoder.keras",
    "autoencoder.keras",
    "index.npz",
    "catalog.json",
    "embeddings.npy",
)
_STAGING_PREFIX = ".staging-"


@dataclass
class Catalog:
    """What is known of each indexed image; entry i is row i of the embeddings and the index."""

    paths: list[str]
    labels: list[Optional[str]]
    hashes: list[str]
    clusters: list[int]

    def __len__(self) -> int:
        return len(self.paths)


class ArtifactWriter:
    """Context manager that stages a new fit and commits it atomically, as the folder's only writer.

    Entering takes an exclusive lock on the artifacts folder (``.lock``, released when the process
    ends, however it ends); a second writer (a fit, an add) fails at once with ArtifactError
    instead of silently overwriting the first one's work. A writer that updates the current fit
    reads it inside the block. Files are written under ``writer.path``; :meth:`commit` makes them
    the current fit. Leaving the block without a commit (an exception, an interrupt) deletes the
    staging folder and keeps the previous fit.
    """

    def __init__(self, artifacts_dir: str | os.PathLike):
        self.root = Path(artifacts_dir)
        self.path: Path | None = None
        self._lock: Optional[int] = None

    def __enter__(self) -> "ArtifactWriter":
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
            raise ArtifactError(f"{self.root}: another fit or add is writing to it (process {holder}); "
                                f"try again when it has finished") from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        _remove_abandoned_staging(self.root)
        self.path = self.root / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.path.mkdir()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None
        if isinstance(exc, OSError):  # a full disk, a folder turned read-only: one clear error, nothing half-written
            raise ArtifactError(f"{self.root}: cannot write artifacts there ({exc.strerror or exc}); the previous "
                                f"fit is unchanged") from None

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write the manifest, move the staged fit into place, point CURRENT at it, drop old fits."""
        manifest = {"format_version": FORMAT_VERSION, **manifest}
        (self.path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        missing = [name for name in REQUIRED_FILES if not (self.path / name).exists()]
        if missing:
            raise ArtifactError(f"cannot commit the fit: {', '.join(missing)} not written")
        final = self.root / f"fit-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        self.path.rename(final)
        self.path = None
        pointer_tmp = self.root / f"{POINTER}.tmp-{os.getpid()}"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, self.root / POINTER)
        for old in self.root.glob("fit-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final


def _remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders left by fits whose process no longer runs."""
    for staging in root.glob(f"{_STAGING_PREFIX}*"):
        pid = staging.name[len(_STAGING_PREFIX) :].split("-")[0]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current_fit(artifacts_dir: str | os.PathLike, allow_pickle: bool = False) -> Path:
    """The folder of the current fit, checked to be complete and of a readable format version.

    A bundle of LEGACY_VERSION (its index a pickle, which can run code when loaded) is read only
    with ``allow_pickle``, and with a warning.
    """
    root = Path(artifacts_dir)
    pointer = root / POINTER
    if not pointer.is_file():
        hint = "it does not exist" if not root.exists() else "it holds no completed fit"
        raise ArtifactError(f"{root}: no fitted artifacts ({hint}); run scripts/fit.py first")
    folder = root / pointer.read_text().strip()
    version = read_manifest(folder).get("format_version") if (folder / "manifest.json").is_file() else None
    if version == LEGACY_VERSION and not allow_pickle:
        raise ArtifactError(f"{folder}: artifacts of format version {version}, whose index is a pickle that can run code "
                            f"when loaded; fit again, or pass --allow-pickle for a bundle you made yourself")
    required = [LEGACY_INDEX if name == "index.npz" and version == LEGACY_VERSION else name for name in REQUIRED_FILES]
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"{folder}: incomplete artifacts, missing {', '.join(missing)}; fit again")
    if version == LEGACY_VERSION:
        log.warning("%s: reading a format-%d bundle and unpickling its index (--allow-pickle); fit again to convert it",
                    folder, version)
    elif version != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder}: artifacts of format version {version}, this version reads {FORMAT_VERSION}; fit again"
        )
    return folder


MANIFEST_FIELDS = {"settings": dict, "images": int, "nprobe": int, "clusters": int}  # what a search relies on


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked to be a JSON object (ArtifactError naming the file if not)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a manifest (a JSON object), got {type(manifest).__name__}")
    return manifest


def save_catalog(folder: Path, catalog: Catalog) -> None:
    (folder / "catalog.json").write_text(json.dumps(asdict(catalog)))


def load_catalog(folder: Path) -> Catalog:
    """The catalog, checked to be four lists of one length (ArtifactError naming the file if not)."""
    path = folder / "catalog.json"
    try:
        catalog = Catalog(**json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, TypeError) as exc:
        raise ArtifactError(f"{path}: unreadable catalog ({exc}); fit again") from None
    columns = asdict(catalog)
    if not all(isinstance(column, list) for column in columns.values()) or len({len(c) for c in columns.values()}) > 1:
        raise ArtifactError(f"{path}: corrupt catalog (its columns differ in length or are not lists); fit again")
    return catalog


def check_consistent(folder: Path, manifest: dict[str, Any], catalog: Catalog, embeddings: np.ndarray) -> FitConfig:
    """The fit's settings; ArtifactError unless the manifest has what a search relies on and it,
    the catalog and the embeddings describe the same images."""
    wrong = [name for name, kind in MANIFEST_FIELDS.items() if not isinstance(manifest.get(name), kind)]
    if wrong:
        raise ArtifactError(f"{folder / 'manifest.json'}: corrupt manifest, {', '.join(wrong)} missing or of the "
                            f"wrong type; fit again")
    counts = {"manifest": manifest["images"], "catalog.json": len(catalog), "embeddings.npy": len(embeddings)}
    if len(set(counts.values())) > 1 or embeddings.ndim != 2:
        described = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise ArtifactError(f"{folder}: inconsistent artifacts, image counts differ ({described}); fit again")
    settings = manifest["settings"]
    if manifest.get("format_version") == LEGACY_VERSION:
        settings = {"backbone": "none", **settings}  # before the backbone, every fit learned from pixels
    try:
        return FitConfig.from_dict(settings)
    except (PipelineError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{folder / 'manifest.json'}: corrupt settings ({exc}); fit again") from None


def save_index(folder: Path, index: ClusteredIndex, embeddings: np.ndarray) -> None:
    np.savez(folder / "index.npz", metric=np.array(index.metric), **index.to_arrays())
    np.save(folder / "embeddings.npy", embeddings.astype(np.float32))


def load_embeddings(folder: Path) -> np.ndarray:
    """The fit's embeddings, memory-mapped (no pickle)."""
    try:
        return np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / 'embeddings.npy'}: cannot load the embeddings ({exc})") from None


def load_index(folder: Path, embeddings: np.ndarray) -> ClusteredIndex:
    """The index over ``embeddings`` (the fit's, in catalog order), from its stored arrays (no pickle;
    a legacy bundle's pickled index only where :func:`current_fit` let it through)."""
    if not (folder / "index.npz").exists() and (folder / LEGACY_INDEX).exists():
        return _load_legacy_index(folder, embeddings)
    try:
        with np.load(folder / "index.npz", allow_pickle=False) as arrays:
            return ClusteredIndex.from_arrays(str(arrays["metric"]), arrays["centroids"], arrays["assignments"],
                                              embeddings)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # missing, truncated, an object array, unfit
        raise ArtifactError(f"{folder / 'index.npz'}: cannot load the index ({exc})") from None


def _load_legacy_index(folder: Path, embeddings: np.ndarray) -> ClusteredIndex:
    import joblib  # scikit-learn's dependency; only legacy bundles need it

    try:
        pickled = joblib.load(folder / LEGACY_INDEX)
        return ClusteredIndex.from_arrays(pickled.metric, pickled.centroids_, pickled.assignments_, embeddings)
    except Exception as exc:  # an old pickle can fail in many ways
        raise ArtifactError(f"{folder / LEGACY_INDEX}: cannot load the index ({exc}); fit again") from None


def load_model(folder: Path, name: str = "encoder.keras"):
    """Load a saved Keras model of the fit (the encoder, or ``autoencoder.keras``)."""
    import keras

    from . import color, orientations  # noqa: F401  (register the custom layers that encoders hold)

    try:
        return keras.models.load_model(folder / name, compile=False)
    except Exception as exc:  # Keras raises assorted types for corrupt or foreign files
        raise ArtifactError(f"{folder / name}: cannot load the model ({exc})") from None
