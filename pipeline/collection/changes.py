"""Keeping a bundle in step with its photos without retraining: add a folder, sync, remove.

Every operation loads the current bundle under the writer's lock, changes its catalog, embeddings
and index together (new images go to their nearest cluster, the clusters stay), re-tunes nprobe,
records what it did in the manifest's ``changes`` and saves a new bundle atomically: a failure or
a kill at any point leaves the previous bundle as it was, and the previous bundle is kept (``imgsim
restore`` brings it back). When nothing changes, nothing is written.

- :func:`add_images` indexes the images of another folder.
- :func:`sync` rescans the folders the bundle was made from: new files are added, changed files
  (another content hash) re-embedded, deleted files dropped; unreadable files are skipped, listed,
  and not read again until they change. A file whose size and modification time are as when it was
  indexed is not read again. A sync never empties the index by accident: a folder that is gone,
  unreadable or empty (an unmounted disk), or a sync that would drop more than
  ``max_removal_share`` of the index, changes nothing unless it is told to (``allow_mass_removal``).
- :func:`remove_images` drops images by id or path; a removed file stays out of later syncs until
  its content changes. The other images keep their ids.
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

from ..bundle.artifacts import Bundle, all_finite
from ..bundle.catalog import Catalog
from ..bundle.layout import current_folder
from ..bundle.writer import ArtifactWriter
from ..data.dataset import EmbeddedImages, SkippedImage
from ..data.images import ImageRecord, content_hash, file_stat, read_file
from ..engines.engine import Engine, LocalEngine
from ..errors import ArtifactError, ImageError, InputError, UnknownImage, shown

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
    skipped: list[SkippedImage] = field(default_factory=list)  # found unreadable now
    known_unreadable: int = 0  # unreadable when last read and unchanged since: not read, nor listed, again
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (id, path) of each image taken out of the index
    readded: list[str] = field(default_factory=list)  # files removed by hand that an add brought back
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


@dataclass
class _Plan:
    """What an operation asks for: the image files to (re)consider, and the rows to drop because their
    file is gone (``gone``) or because they were named for removal (``removed``)."""

    candidates: list[ImageRecord]
    gone: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    scanned: list[str] = field(default_factory=list)  # the folders listed whole: what is not found there is gone


def add_images(new_dir: str | os.PathLike, artifacts_dir: str | os.PathLike = "artifacts",
               engine: Optional[Engine] = None, allow_mass_removal: bool = False) -> CollectionChange:
    """Index the images under ``new_dir`` with the fitted encoder and clusters, embedded where
    ``engine`` runs (default: here, see :mod:`pipeline.engines.engine`).

    Images already indexed (same path and same content) and unreadable files are skipped; a path
    indexed with other content is re-embedded, and one that no longer decodes is dropped (as in a
    sync, more than ``max_removal_share`` of the index only with ``allow_mass_removal``). Later
    syncs rescan ``new_dir`` too.
    """
    current_folder(artifacts_dir)  # a clear error before anything else when there is no fit
    engine = engine or LocalEngine()
    if not Path(new_dir).is_dir():
        raise InputError(f"{new_dir}: not a folder")
    root = str(Path(new_dir).resolve())

    def plan(bundle: Bundle) -> _Plan:
        records = engine.find_images(new_dir, bundle.settings.image_extensions)  # the fit's own rule
        if not records:
            raise InputError(f"{new_dir}: no image files found")
        return _Plan(records, scanned=[root])

    return _update(artifacts_dir, "add", plan, engine, allow_mass_removal=allow_mass_removal, data_dir=root)


def sync(artifacts_dir: str | os.PathLike = "artifacts", engine: Optional[Engine] = None,
         allow_mass_removal: bool = False) -> CollectionChange:
    """Bring the bundle in step with the folders it was made from (the fitted one and every added one);
    new and changed images are embedded where ``engine`` runs (default: here).

    Raises InputError, and changes nothing, when one of those folders is gone, cannot be read or
    holds no image file while images from it are indexed (an unmounted disk must not empty the
    index), or when the sync would drop more than the settings' ``max_removal_share`` of the index,
    whatever the reason (files gone, or turned unreadable); ``allow_mass_removal`` lets the last two
    through.
    """
    engine = engine or LocalEngine()

    def plan(bundle: Bundle) -> _Plan:
        on_disk: dict[str, ImageRecord] = {}
        for root in bundle.manifest.roots:
            if not Path(root).is_dir():
                what = "the folder this collection was fitted on" if root == bundle.manifest.data_dir else \
                    "a folder added to this collection"
                raise InputError(f"{root}: {what} is gone; nothing changed (mount it again, or fit anew)")
            found = engine.find_images(root, bundle.settings.image_extensions)
            indexed = sum(1 for path in bundle.catalog.paths if _inside(path, root))
            if not found and indexed and not allow_mass_removal:
                raise InputError(f"{root}: holds no image file now, while {indexed} indexed images came from it; "
                                 f"nothing changed (is its disk mounted? if you emptied it, sync with "
                                 f"--allow-mass-removal)")
            for record in found:
                on_disk.setdefault(record.path, record)
        gone = [row for row, path in enumerate(bundle.catalog.paths) if path not in on_disk]
        return _Plan(list(on_disk.values()), gone=gone, scanned=bundle.manifest.roots)

    return _update(artifacts_dir, "sync", plan, engine, allow_mass_removal=allow_mass_removal)


def remove_images(targets: Sequence[str], artifacts_dir: str | os.PathLike = "artifacts") -> CollectionChange:
    """Drop images by id or by path; UnknownImage naming the first target that is neither (and
    nothing is removed)."""
    if not targets:
        raise InputError("nothing to remove: name images by path or id")

    def plan(bundle: Bundle) -> _Plan:
        rows = {path: row for row, path in enumerate(bundle.catalog.paths)}
        chosen = []
        for target in targets:
            row = bundle.catalog.row_of(int(target)) if is_id(target) else rows.get(os.path.abspath(target))
            if row is None:
                raise UnknownImage(f"{target}: no indexed image has this path or id; nothing removed")
            chosen.append(row)
        for row in chosen:
            bundle.manifest.removed[bundle.catalog.paths[row]] = bundle.catalog.hashes[row]
        return _Plan([], removed=sorted(set(chosen)))

    return _update(artifacts_dir, "remove", plan, LocalEngine())  # nothing to embed


def is_id(text: str) -> bool:
    """Whether ``text`` names an image by id: plain ASCII digits without a leading zero (one spelling
    an id), short enough to be one."""
    return text.isascii() and text.isdigit() and len(text) < 19 and (text == "0" or not text.startswith("0"))


@dataclass
class _Review:
    """What an update found among its candidate files."""

    todo: list[ImageRecord]  # new, changed or re-added files: to embed
    drop: set[int]  # rows to take out of the index
    unchanged: int
    skipped: list[SkippedImage]  # unreadable now
    known_unreadable: list[str]  # unreadable when last read, unchanged since: not read again
    readded: list[str]  # removed by hand before, added again by an add
    stats: dict[str, Optional[list[int]]]  # [size, mtime] of each candidate, taken before it was read


def _update(artifacts_dir: str | os.PathLike, action: str, plan: Callable[[Bundle], _Plan], engine: Engine,
            allow_mass_removal: bool = False, **details) -> CollectionChange:
    """Load the bundle under the lock, review what ``plan`` names, embed what is new or changed,
    and save a new bundle if anything changed."""
    start = time.perf_counter()
    current_folder(artifacts_dir)  # no fit there: a clear error, and no empty folder made by the writer's lock
    with ArtifactWriter(artifacts_dir) as writer:
        bundle = Bundle.load(artifacts_dir)
        planned = plan(bundle)
        review = _review(bundle, planned, action)
        guarded = action != "remove" and not allow_mass_removal
        if guarded:  # what is known before embedding: files gone, or no longer readable
            _refuse_mass_removal(bundle, action, len(planned.gone), len(review.drop) - len(planned.gone))
        embedded = engine.embed(review.todo, bundle, bundle.settings, writer.path) if review.todo else None
        if embedded is not None and not all_finite(embedded.vectors):
            raise ArtifactError(f"{bundle.folder}: the encoder gave descriptors that are not finite (NaN or infinity); "
                                f"nothing changed")
        change, drop = _tally(action, bundle, review, embedded)
        if guarded:  # and what embedding found: files that no longer decode
            _refuse_mass_removal(bundle, action, len(planned.gone), change.removed - len(planned.gone))
        unreadable = (_remember_unreadable(bundle, planned, change.skipped, review.known_unreadable, review.stats)
                      if action != "remove" else None)
        if not drop and not change.added and unreadable in (None, bundle.manifest.unreadable):
            log.debug("nothing to change in %s", bundle.folder)
            change.drift = _drift(bundle)
            change.seconds = time.perf_counter() - start
            return change

        if unreadable is not None:
            bundle.manifest.unreadable = unreadable
        _apply(bundle, drop, embedded, review.stats)
        change.images, change.nprobe = len(bundle.catalog), bundle.index.nprobe_
        change.seconds = time.perf_counter() - start
        bundle.manifest.changes.append(change.record(**details))
        change.drift = _drift(bundle)
        change.artifacts = bundle.save(writer)
    log.debug("%s: %d added, %d changed, %d removed; %d images in %s", action, change.added, change.changed,
              change.removed, change.images, change.artifacts)
    if change.refit_advised:
        log.warning("%.0f%% of the images were added or changed since the fit: a new fit would cluster them better",
                    100 * change.drift)
    return change


def _refuse_mass_removal(bundle: Bundle, action: str, gone: int, unreadable: int) -> None:
    """InputError, nothing changed, when an add or sync would drop more than the settings' share of
    the index: ``gone`` files no longer there and ``unreadable`` ones that no longer read or decode."""
    share, lost = bundle.settings.max_removal_share, gone + unreadable
    if lost > share * len(bundle.catalog):
        reasons = " and ".join(text for count, text in ((gone, f"{gone} gone"), (unreadable, f"{unreadable} no longer "
                                                        "readable as images")) if count)
        raise InputError(f"{bundle.folder.parent}: this {action} would drop {lost} of the {len(bundle.catalog)} indexed "
                         f"images ({reasons}; more than {share:.0%}); nothing changed (if they are meant to go, "
                         f"{action} with --allow-mass-removal)")


def _tally(action: str, bundle: Bundle, review: _Review, embedded: Optional[EmbeddedImages]
           ) -> tuple[CollectionChange, set[int]]:
    """What the update will do, counted, and the rows to take out of the index: the review's, those
    whose file changed (re-embedded) and those whose file changed into one that cannot be read."""
    change = CollectionChange(action, unchanged=review.unchanged, skipped=list(review.skipped),
                              known_unreadable=len(review.known_unreadable), readded=review.readded,
                              images=len(bundle.catalog), nprobe=bundle.index.nprobe_, artifacts=bundle.folder)
    drop, replaced = set(review.drop), set()
    if embedded is not None:
        indexed = {path: row for row, path in enumerate(bundle.catalog.paths)}
        change.skipped += embedded.skipped
        drop |= {indexed[s.path] for s in embedded.skipped if s.path in indexed}  # changed into junk
        replaced = {indexed[r.path] for r in embedded.records if r.path in indexed}
        drop |= replaced
        change.changed, change.added = len(replaced), len(embedded.records) - len(replaced)
    change.removed = len(drop) - change.changed
    change.dropped = [(bundle.catalog.ids[row], bundle.catalog.paths[row]) for row in sorted(drop - replaced)]
    return change, drop


def _apply(bundle: Bundle, drop: set[int], embedded: Optional[EmbeddedImages],
           stats: dict[str, Optional[list[int]]]) -> None:
    """Take ``drop`` out of the bundle, index the embedded images (each in its nearest cluster) and
    tune nprobe again."""
    if drop:
        bundle.remove(np.array(sorted(drop)))
    if embedded is not None and embedded.records:
        bundle.append(Catalog([r.path for r in embedded.records], [r.label for r in embedded.records],
                              embedded.hashes, [stats[r.path] for r in embedded.records]), embedded.vectors)
    config = bundle.settings
    bundle.manifest.recall_at_10 = bundle.index.tune_nprobe(config.target_recall, config.seed)


def _review(bundle: Bundle, plan: _Plan, action: str) -> _Review:
    """Sort the candidate files: indexed as they are (unchanged; not read again when their size and
    modification time are as indexed), to embed (new, changed, or re-added after a removal once
    their content changed, or by an add), unreadable (skipped; an indexed one is dropped; one that
    could not be read before and has not changed since is not read again)."""
    catalog, manifest = bundle.catalog, bundle.manifest
    indexed = {path: (row, digest, stat) for row, (path, digest, stat) in
               enumerate(zip(catalog.paths, catalog.hashes, catalog.stats))}
    stats = {record.path: file_stat(record.path) for record in plan.candidates}  # before reading: a later change shows
    same_stat = {path for path, stat in stats.items() if stat is not None and path in indexed and indexed[path][2] == stat}
    still_unreadable = {path for path, stat in stats.items()
                        if stat is not None and path not in indexed and manifest.unreadable.get(path) == stat}
    hashes, skipped = _hash_files([r.path for r in plan.candidates if r.path not in same_stat and (
        r.path in indexed or r.path in manifest.removed)], bundle.settings.max_file_bytes)
    unreadable = {s.path for s in skipped}
    drop = set(plan.gone) | set(plan.removed) | {indexed[path][0] for path in unreadable if path in indexed}
    todo, unchanged, readded = [], 0, []
    for record in plan.candidates:
        path = record.path
        if path in unreadable or path in still_unreadable:
            continue
        if path in same_stat or (path in indexed and indexed[path][1] == hashes[path]):
            unchanged += 1
        elif manifest.removed.get(path) not in (None, hashes.get(path)):
            del manifest.removed[path]  # its content changed since it was removed: a new image
            todo.append(record)
        elif path not in manifest.removed or action == "add":
            if manifest.removed.pop(path, None) is not None:
                readded.append(path)
            todo.append(record)
    return _Review(todo, drop, unchanged, skipped, sorted(still_unreadable), readded, stats)


def _remember_unreadable(bundle: Bundle, plan: _Plan, skipped: list[SkippedImage], known: list[str],
                         stats: dict[str, Optional[list[int]]]) -> dict[str, list[int]]:
    """The manifest's record of unreadable files after this update: each file skipped now, with the
    size and time it had then (a later sync reads it again only once it changes); files that were
    read, or are gone from the folders listed, leave the record; files elsewhere stay in it."""
    candidates, unread = {record.path for record in plan.candidates}, {s.path for s in skipped} | set(known)
    kept = {path: stat for path, stat in bundle.manifest.unreadable.items()
            if path in unread or (path not in candidates and not any(_inside(path, root) for root in plan.scanned))}
    return {**kept, **{s.path: stats[s.path] for s in skipped if stats.get(s.path) is not None}}


def _inside(path: str, root: str) -> bool:
    return path.startswith(os.path.join(root, ""))


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
                log.debug("skipped %s: %s", shown(result.path), result.reason)
                skipped.append(result)
            else:
                hashes[path] = result
    return hashes, skipped
