"""Copies in a folder with no fit: ``imgsim duplicates DIR``.

A person who only wants to clean up a folder should not have to fit one first. The candidates come
from the pretrained backbone's descriptors (EfficientNet-Lite0's feature map at 224 px, averaged: no
training; run by LiteRT, converted once into the cache) and from the images' shared local features,
as for a fit's collection, and every pair is verified the same way (:mod:`pipeline.collection.duplicates`).
Nothing is written but the cache: each image's descriptor, local features, verdicts and what the
choice of the copy to keep read of it by content hash, and each file's hash by its size and time, in
``default_cache()`` (``$XDG_CACHE_HOME/imgsim/duplicates``, else ``~/.cache/imgsim/duplicates``),
shared by every folder, so a second run decodes nothing it has seen and loads no model. The cache
is never pruned (other folders may use it); deleting it only costs the next run its time.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Optional

import numpy as np
from tqdm import tqdm

from ..data.images import ImageRecord, content_hash, file_stat, find_images, read_file
from ..errors import ImageError, InputError
from ..index.metrics import exact_neighbours
from .duplicates import CANDIDATE_DISTANCE, NEIGHBOURS, Images, candidate_pairs, find_among
from .groups import Duplicates
from .verification import Thresholds
from .verification_cache import VerificationCache

BACKBONE = "efficientnet-lite0"
IMAGE_SIZE = 224
_BLOCK = 512  # rows of the exact search at once: memory linear in the images


def default_cache() -> Path:
    """Where a folder's duplicates are cached: ``$XDG_CACHE_HOME/imgsim/duplicates`` or ``~/.cache/...``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgsim" / "duplicates"


def find_in_folder(folder: str | os.PathLike, max_distance: float = CANDIDATE_DISTANCE,
                   thresholds: Thresholds = Thresholds(), cache_folder: Optional[str | os.PathLike] = None,
                   progress: bool = True, extensions: Optional[Collection[str]] = None,
                   records: Optional[list[ImageRecord]] = None) -> Duplicates:
    """The groups of copies among the images under ``folder`` (of ``extensions`` alone, when given:
    :func:`pipeline.data.images.find_images`, or ``records``, that listing when the caller has made it;
    see the module's description); unreadable files are listed, never grouped. InputError when the
    folder holds no image file."""
    if not max_distance >= 0:
        raise InputError(f"max_distance must be a number from 0, got {max_distance}")
    records = find_images(folder, extensions=extensions) if records is None else records
    if not records:
        raise InputError(f"{folder}: no image files found")
    cache = VerificationCache(Path(cache_folder) if cache_folder else default_cache(), thresholds=thresholds)
    hashes = _hashes([record.path for record in records], cache.folder, progress)
    readable = [number for number, found in enumerate(hashes) if found is not None]
    unreadable = [records[number].path for number, found in enumerate(hashes) if found is None]
    vectors = _descriptors([records[n].path for n in readable], [hashes[n] for n in readable], cache.folder,
                           progress)
    kept = [n for n, vector in zip(readable, vectors) if vector is not None]
    unreadable += [records[n].path for n, vector in zip(readable, vectors) if vector is None]
    images = Images([records[n].path for n in kept], [hashes[n] for n in kept], list(range(len(kept))),
                    [records[n].label for n in kept], np.stack([v for v in vectors if v is not None])
                    if kept else np.zeros((0, 1), np.float32), "cosine")
    nearest = exact_neighbours(images.vectors, NEIGHBOURS, block=_BLOCK, with_distances=True) if len(kept) > 1 \
        else (np.zeros((len(kept), 0), np.int64), np.zeros((len(kept), 0), np.float32))
    pairs, _ = candidate_pairs(lambda start, stop, _: (nearest[0][start:stop], nearest[1][start:stop]), len(kept),
                               max_distance, NEIGHBOURS, progress)
    return find_among(images, pairs, cache, max_distance, progress, prune=False, unreadable=sorted(unreadable))


def _hashes(paths: list[str], folder: Path, progress: bool) -> list[Optional[str]]:
    """Each file's content hash (None where it cannot be read): read in threads, or taken from the
    cache's ``hashes.json`` where the file's size and modification time are those it was hashed at
    (as a sync tells a changed file)."""
    known_path = folder / "hashes.json"
    try:
        known = json.loads(known_path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        known = {}

    def one(path: str) -> Optional[str]:
        status = file_stat(path)
        entry = known.get(path)
        if status is not None and isinstance(entry, list) and entry[:2] == status and isinstance(entry[2], str):
            return entry[2]
        try:
            found = content_hash(read_file(path))
        except ImageError:
            return None
        if status is not None:
            known[path] = [*status, found]
        return found

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        hashes = list(tqdm(pool.map(one, paths), total=len(paths), desc="read", unit="img", disable=not progress))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as out:
        json.dump(known, out)
    os.replace(out.name, known_path)
    return hashes


def _backbone_export_path(folder: Path) -> Path:
    """Where the cache keeps :func:`_backbone_export`: named by the backbone's weights' SHA-256."""
    from ..pretrained import BACKBONES

    return folder / f"backbone-{BACKBONE}-{IMAGE_SIZE}-{BACKBONES[BACKBONE].sha256[:16]}.tflite"


def _backbone_export(path: Path) -> bytes:
    """The pretrained backbone (image -> its feature map averaged, as ``descriptor``) for LiteRT, which
    runs it faster than TensorFlow: read from ``path``, or converted (TensorFlow loads then) and kept there."""
    try:
        return path.read_bytes()
    except OSError:
        pass
    import keras

    from ..model.backbone import build_backbone
    from ..train.export import exported_model

    backbone = build_backbone(IMAGE_SIZE, BACKBONE)
    model = exported_model(keras.Model(backbone.input, {"descriptor": keras.layers.GlobalAveragePooling2D()(
        backbone.output)}))
    _store_bytes(path, model)
    return model


def _descriptor_path(folder: Path, stored_hash: str) -> Path:
    return folder / f"descriptors-{BACKBONE}-{IMAGE_SIZE}" / stored_hash[:2] / f"{stored_hash}.npy"


def _descriptors(paths: list[str], hashes: list[str], folder: Path, progress: bool) -> list[Optional[np.ndarray]]:
    """The unit descriptor of each image, from the cache or the backbone (loaded only when one is
    missing); None for a file that does not decode (remembered too, as an empty descriptor)."""
    found: list[Optional[np.ndarray]] = []
    missing = []
    for number, stored_hash in enumerate(hashes):
        try:
            vector = np.load(_descriptor_path(folder, stored_hash), allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            vector = None
        if vector is None or vector.dtype != np.float32 or vector.shape not in ((1280,), (0,)):
            missing.append(number)
        found.append(vector if vector is not None and vector.shape == (1280,) else None)
    if missing:
        for number, vector in zip(missing, _embed([paths[n] for n in missing], progress, folder)):
            found[number] = vector
            _store(_descriptor_path(folder, hashes[number]), np.zeros(0, np.float32) if vector is None else vector)
    return found


def _embed(paths: list[str], progress: bool, folder: Path) -> list[Optional[np.ndarray]]:
    """The pretrained backbone's averaged feature map of each image, unit length (None: undecodable),
    by its LiteRT export (:func:`_backbone_export`)."""
    from ..data.dataset import decode_to_cache
    from ..model.embed import map_cache
    from ..model.runtime import LiteRTEncoder

    path = _backbone_export_path(folder)
    backbone = LiteRTEncoder(_backbone_export(path), source=f"{path} (delete it: the next run converts it again)")
    with tempfile.TemporaryDirectory(prefix="imgsim-duplicates-") as scratch:
        decoded = decode_to_cache([ImageRecord(path, None) for path in paths], os.path.join(scratch, "images"),
                                  IMAGE_SIZE)
        parts = list(map_cache(backbone.encode, decoded.cache, backbone.batch_size, "descriptors"))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 1280), np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    by_path = dict(zip((record.path for record in decoded.records), vectors.astype(np.float32)))
    return [by_path.get(path) for path in paths]


def _store(path: Path, vector: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, vector)
    _store_bytes(path, buffer.getvalue())


def _store_bytes(path: Path, data: bytes) -> None:
    """``data`` written whole at ``path`` or not at all (another run may read it meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as out:
        out.write(data)
    os.replace(out.name, path)
