"""Where a bundle's files are: their names, the format versions that have them, and the ``CURRENT`` pointer.

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
                           bundle never hands out an id again) and the restore points (see writer.kept_bundles)

File names, and which format versions have each, live here and nowhere else (the version a bundle is
written in: :mod:`pipeline.bundle.manifest`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import ArtifactError
from .manifest import FORMAT_VERSION, LEGACY_VERSION, READABLE_VERSIONS

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
BUNDLE_PREFIXES = ("bundle-", "fit-")  # "fit-": folders written before format 4


def bundles(artifacts_dir: str | os.PathLike) -> list[Path]:
    """The committed bundle folders of an artifacts folder, oldest first."""
    root = Path(artifacts_dir)
    return sorted((folder for prefix in BUNDLE_PREFIXES for folder in root.glob(f"{prefix}*") if folder.is_dir()),
                  key=lambda folder: folder.name.split("-", 1)[1])


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
        raise no_fit(root)
    return checked_folder(folder, allow_pickle)


def no_fit(root: Path) -> ArtifactError:
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
    version = read_json(folder / MANIFEST, "manifest").get("format_version")
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


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (ArtifactError naming the file if unreadable or not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: unreadable {what} ({exc}); fit again") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: not a {what} (a JSON object), got {type(value).__name__}; fit again")
    return value
