"""The bundle: everything a fit produces and a search needs, loaded as one object and saved atomically.

:class:`Bundle` reads and checks every file of a bundle folder (:meth:`Bundle.load`; the files are
listed in :mod:`pipeline.bundle.layout`) and writes them (:meth:`Bundle.save`) through an
:class:`~pipeline.bundle.writer.ArtifactWriter`, which stages a new folder and only then points
CURRENT at it, so a fit, add or sync that fails or is interrupted leaves the previous bundle
loadable. Nothing in a bundle is a pickle: arrays are read with ``allow_pickle=False``, so loading a
bundle from someone else runs no code of theirs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..config import FitConfig
from ..errors import ArtifactError, InputError, shown
from ..index.clustered import ClusteredIndex
from .catalog import Catalog
from .layout import (AUTOENCODER, CATALOG, EMBEDDINGS, ENCODER, EXPORT, INDEX, INDEX_VECTORS, JSON_CATALOG,
                     LEGACY_INDEX, MANIFEST, MAX_EXPORT_BYTES, MODEL_FILES, PROBE_MIN_COSINE, PROBES, SINCE_VERSION,
                     bundles, checked_folder, current_folder, no_fit, pointed_folder, read_json, required_files)
from .manifest import FORMAT_VERSION, LEGACY_VERSION, Manifest
from .writer import ArtifactWriter, read_next_id

log = logging.getLogger(__name__)


def restore(artifacts_dir: str | os.PathLike, name: Optional[str] = None) -> Path:
    """Make a kept bundle the current one again: ``name`` (a folder that :func:`bundles` lists), or
    by default the newest one older than the current. Whatever bundle is current stays kept."""
    if not Path(artifacts_dir).is_dir():  # the writer's lock would make it
        raise no_fit(Path(artifacts_dir))
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
    nothing else changed (``imgsim upgrade``; older formats need the export too: pipeline.train.export.upgrade)."""
    with ArtifactWriter(artifacts_dir) as writer:
        bundle = Bundle.load(artifacts_dir)
        if bundle.manifest.format_version != SINCE_VERSION[CATALOG] - 1:
            raise ArtifactError(f"{bundle.folder}: a bundle of format {bundle.manifest.format_version}, not "
                                f"{SINCE_VERSION[CATALOG] - 1}: its catalog alone cannot be converted")
        bundle.manifest.format_version = FORMAT_VERSION
        return bundle.save(writer)


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
        raw = read_json(folder / MANIFEST, "manifest")
        manifest = Manifest.from_dict(raw, folder / MANIFEST)
        columnar = manifest.format_version >= SINCE_VERSION[CATALOG]
        catalog = (Catalog.read(folder / CATALOG) if columnar else
                   Catalog.from_json(read_json(folder / JSON_CATALOG, "catalog"), folder / JSON_CATALOG))
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
        """The fit's encoder ready to run (:class:`pipeline.model.runtime.Encoder`), on ``runtime``
        (default: LiteRT where installed, else Keras); loaded once per runtime. A bundle of an int8
        fit runs its export alone (InputError for Keras)."""
        from ..model.runtime import KerasEncoder, LiteRTEncoder, litert_installed, resolve_runtime

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
        rows = {digest: found[0] for digest, found in self.catalog.rows_with_hashes(hashes.tolist()).items()}
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
        from ..model.runtime import load_keras_model

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
        from ..model.runtime import load_keras_model

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
    return _load_index(folder, embeddings, read_json(folder / MANIFEST, "manifest"), True, check_vectors)


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
