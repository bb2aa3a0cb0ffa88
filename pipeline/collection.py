"""Keeping a bundle in step with its photos without retraining: add a folder, sync, remove.

Every operation loads the current bundle under the writer's lock, changes its catalog, embeddings
and index together (new images go to their nearest cluster, the clusters stay), re-tunes nprobe,
records what it did in the manifest's ``changes`` and saves a new bundle atomically: a failure or
a kill at any point leaves the previous bundle as it was. When nothing changes, nothing is written.

- :func:`add_images` indexes the images of another folder.
- :func:`sync` rescans the folders the bundle was made from: new files are added, changed files
  (another content hash) re-embedded, deleted files dropped; unreadable files are skipped and listed.
  A file whose size and modification time are as when it was indexed is not read again.
- :func:`remove_images` drops images by path or id; a removed file stays out of later syncs until
  its content changes.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .artifacts import ArtifactWriter, Bundle, Catalog, current_folder
from .dataset import SkippedImage
from .distributed import RayEngine, embed_files_on_ray, find_images_on_ray
from .embed import embed_files
from .errors import ImageError, InputError
from .images import ImageRecord, content_hash, file_stat, find_images, read_file

log = logging.getLogger(__name__)
REFIT_SHARE = 0.3  # a refit is advised once this share of the images was added or changed since the fit


@dataclass
class CollectionChange:
    """What an add, sync or removal did and where the bundle went."""

    action: str
    added: int = 0
    changed: int = 0  # re-embedded: same path, other content
    removed: int = 0
    unchanged: int = 0  # found and already indexed as they are
    skipped: list[SkippedImage] = field(default_factory=list)
    images: int = 0  # indexed afterwards
    nprobe: int = 0
    drift: float = 0.0  # share of the images added or changed since the fit
    artifacts: Optional[Path] = None  # the new bundle; the old one when nothing changed
    seconds: float = 0.0

    @property
    def refit_advised(self) -> bool:
        return self.drift >= REFIT_SHARE

    def record(self, **details) -> dict:
        """The manifest's entry for this change."""
        return {"action": self.action, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "added": self.added,
                "changed": self.changed, "removed": self.removed,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "seconds": round(self.seconds, 3), **details}


def add_images(new_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts",
               engine: Optional[RayEngine] = None, runtime: Optional[str] = None) -> CollectionChange:
    """Index the images under ``new_dir`` with the fitted encoder and clusters (embedded on a Ray
    cluster with ``engine``, else here on ``runtime``: see :mod:`pipeline.runtime`).

    Images already indexed (same path and same content) and unreadable files are skipped; a path
    indexed with other content is re-embedded. Later syncs rescan ``new_dir`` too.
    """
    current_folder(artifacts_dir)  # a clear error before anything else when there is no fit
    records = find_images_on_ray(new_dir, engine) if engine else find_images(new_dir)
    if not records:
        raise InputError(f"{new_dir}: no image files found")

    def plan(bundle: Bundle) -> tuple[list[ImageRecord], list[int]]:
        return records, []

    return _update(artifacts_dir, "add", plan, engine, runtime, data_dir=str(Path(new_dir).resolve()))


def sync(artifacts_dir: str | os.PathLike = "artifacts", engine: Optional[RayEngine] = None,
         runtime: Optional[str] = None) -> CollectionChange:
    """Bring the bundle in step with the folders it was made from (the fitted one and every added one);
    new and changed images are embedded on a Ray cluster with ``engine``, else here on ``runtime``.

    Raises InputError when one of those folders is gone (an unmounted disk must not empty the index).
    """

    def plan(bundle: Bundle) -> tuple[list[ImageRecord], list[int]]:
        roots = [bundle.manifest.data_dir] + [c["data_dir"] for c in bundle.manifest.changes if c["action"] == "add"]
        on_disk: dict[str, ImageRecord] = {}
        for root in dict.fromkeys(roots):
            if not Path(root).is_dir():
                raise InputError(f"{root}: the folder this collection was made from is gone; nothing changed "
                                 f"(mount it again, or fit anew)")
            for record in find_images_on_ray(root, engine) if engine else find_images(root):
                on_disk.setdefault(record.path, record)
        gone = [row for row, path in enumerate(bundle.catalog.paths) if path not in on_disk]
        return list(on_disk.values()), gone

    return _update(artifacts_dir, "sync", plan, engine, runtime)


def remove_images(targets: Sequence[str], artifacts_dir: str | os.PathLike = "artifacts") -> CollectionChange:
    """Drop images by catalog id or by path; InputError naming the first target that is neither."""
    if not targets:
        raise InputError("nothing to remove: name images by path or id")

    def plan(bundle: Bundle) -> tuple[list[ImageRecord], list[int]]:
        rows = {path: row for row, path in enumerate(bundle.catalog.paths)}
        chosen = []
        for target in targets:
            if target.isdecimal() and len(target) < 19 and int(target) < len(rows):
                chosen.append(int(target))
            elif os.path.abspath(target) in rows:
                chosen.append(rows[os.path.abspath(target)])
            else:
                raise InputError(f"{target}: no indexed image has this path or id; nothing removed")
        for row in chosen:
            bundle.manifest.removed[bundle.catalog.paths[row]] = bundle.catalog.hashes[row]
        return [], sorted(set(chosen))

    return _update(artifacts_dir, "remove", plan, None, None)


def _update(artifacts_dir: str | os.PathLike, action: str,
            plan: Callable[[Bundle], tuple[list[ImageRecord], list[int]]], engine: Optional[RayEngine],
            runtime: Optional[str], **details) -> CollectionChange:
    """Load the bundle under the lock; ``plan`` names the image files to (re)consider and the rows
    to drop; files already indexed with the same content are left as they are (without reading
    them when their size and modification time are as indexed); save if anything changed."""
    start = time.perf_counter()
    with ArtifactWriter(artifacts_dir) as writer:
        bundle = Bundle.load(artifacts_dir)
        change = CollectionChange(action, artifacts=bundle.folder)
        candidates, drop = plan(bundle)
        catalog = bundle.catalog
        indexed = {path: (row, digest, stat) for row, (path, digest, stat) in
                   enumerate(zip(catalog.paths, catalog.hashes, catalog.stats))}
        stats = {record.path: file_stat(record.path) for record in candidates}  # before reading: a later change shows
        same_stat = {path for path, stat in stats.items() if stat is not None and path in indexed
                     and indexed[path][2] == stat}
        hashes, change.skipped = _hash_files([r.path for r in candidates if r.path not in same_stat and (
            r.path in indexed or r.path in bundle.manifest.removed)], bundle.settings.max_file_bytes)
        unreadable = {s.path for s in change.skipped}
        drop = set(drop) | {indexed[path][0] for path in unreadable if path in indexed}
        todo = []
        for record in candidates:
            if record.path in unreadable:
                continue
            if record.path in same_stat or (record.path in indexed and indexed[record.path][1] == hashes[record.path]):
                change.unchanged += 1
            elif bundle.manifest.removed.get(record.path) not in (None, hashes.get(record.path)):
                del bundle.manifest.removed[record.path]  # its content changed since it was removed: a new image
                todo.append(record)
            elif record.path not in bundle.manifest.removed or action == "add":
                bundle.manifest.removed.pop(record.path, None)
                todo.append(record)
        embedded = None
        if todo and engine is not None:
            if engine.encoder_runtime == "litert":
                bundle.export()  # a bundle made before the export: a clear error here, not on the cluster
            embedded = embed_files_on_ray(todo, bundle.folder, bundle.settings, engine, writer.path)
        elif todo:  # the encoder is loaded only when there is something to embed
            embedded = embed_files(todo, bundle.encoder(runtime), bundle.settings, writer.path)
        if embedded is not None:
            change.skipped += embedded.skipped
            drop |= {indexed[s.path][0] for s in embedded.skipped if s.path in indexed}  # changed into junk
            replaced = {indexed[r.path][0] for r in embedded.records if r.path in indexed}
            drop |= replaced
            change.changed, change.added = len(replaced), len(embedded.records) - len(replaced)
        change.removed = len(drop) - change.changed
        change.images, change.nprobe = len(bundle.catalog), bundle.index.nprobe
        if not drop and not change.added:
            log.info("nothing to change in %s", bundle.folder)
            change.drift = _drift(bundle)
            change.seconds = time.perf_counter() - start
            return change

        if drop:
            bundle.remove(np.array(sorted(drop)))
        if embedded is not None and embedded.records:
            bundle.append(Catalog(paths=[r.path for r in embedded.records], labels=[r.label for r in embedded.records],
                                  hashes=embedded.hashes, clusters=[], stats=[stats[r.path] for r in embedded.records]),
                          embedded.vectors)
        config = bundle.settings
        bundle.manifest.recall_at_10 = bundle.index.tune_nprobe(config.nprobe, config.target_recall, config.seed)
        change.images, change.nprobe = len(bundle.catalog), bundle.index.nprobe
        change.seconds = time.perf_counter() - start
        bundle.manifest.changes.append(change.record(**details))
        change.drift = _drift(bundle)
        change.artifacts = bundle.save(writer)
    log.info("%s: %d added, %d changed, %d removed; %d images in %s", action, change.added, change.changed,
             change.removed, change.images, change.artifacts)
    if change.refit_advised:
        log.warning("%.0f%% of the images were added or changed since the fit: a new fit would cluster them better",
                    100 * change.drift)
    return change


def _drift(bundle: Bundle) -> float:
    """The share of the indexed images that were added or re-embedded since the fit."""
    since = sum(c.get("added", 0) + c.get("changed", 0) for c in bundle.manifest.changes)
    return min(1.0, since / max(1, len(bundle.catalog)))


def _hash_files(paths: list[str], max_bytes: int) -> tuple[dict[str, str], list[SkippedImage]]:
    """The content hash of each readable file, and the files that cannot be read, in parallel threads."""

    def digest(path: str) -> str | SkippedImage:
        try:
            return content_hash(read_file(path, max_bytes))
        except ImageError as exc:
            return SkippedImage(path, exc.reason)

    hashes, skipped = {}, []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for path, result in zip(paths, tqdm(pool.map(digest, paths), total=len(paths), desc="hash", unit="img",
                                          disable=not paths)):
            if isinstance(result, SkippedImage):
                log.warning("skipped %s: %s", result.path, result.reason)
                skipped.append(result)
            else:
                hashes[path] = result
    return hashes, skipped
