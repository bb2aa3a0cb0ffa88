"""Near-duplicates: copies of the same photo (re-encoded, resized, cropped, rotated, padded,
mirrored, recoloured, blurred, captioned), verified on the images and grouped without chains.

1. **Candidates** come from the index: each image's ``NEIGHBOURS`` nearest within ``max_distance``
   of it, and its single nearest whatever the distance (in a small folder every distance is large;
   an exact twin does not use it up), searched in batches: no dense n x n matrix; and from the
   images' local features (:mod:`pipeline.visual_words`): each image and the few sharing most of its
   visual words, which finds the copies a descriptor puts far apart (rotated, letterboxed, inside a
   screenshot).
2. **Verification** (:mod:`pipeline.verification`) decides each candidate pair on the two images'
   own pixels; local features are found once per image and, with the verdicts, cached beside the
   bundles by content hash, so a second run does almost no work.
3. **Groups**: within each set of images joined by verified pairs, the image verified with the
   most others becomes the representative, and an image joins its group only if it is verified
   against that representative itself (pairs not yet compared are verified then; one refused is
   tried once more against the representative's mirror image, for a copy both mirrored and cropped
   or rotated); what is left forms the next group the same way. A chain of look-alikes (A like B,
   B like C) never puts A and C together.
4. **The image to keep** in each group: the most pixels of the photo (a border, padding, a
   rotation's corners or transparent areas do not count), then the least border, colour over gray,
   more bits a pixel, the camera's own file (its EXIF, then its format) over a re-encoding, the
   largest file, the oldest; ``why`` says which of these decided.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
from PIL import ExifTags, Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .errors import ArtifactError, ImageError, InputError
from .images import content_hash, decode_image, eight_bit, read_file
from .verification import (FEATURE_SIDE, LocalFeatures, Thresholds, Verification, VerificationCache, verify,
                           verify_mirrored)
from .visual_words import shared_feature_pairs, words_version

NEIGHBOURS = 8  # candidates per image, by rank
TWIN_DISTANCE = 1e-6  # descriptors this close are of the same pixels: an image's "nearest whatever the distance" is
# the nearest further than this
CANDIDATE_DISTANCE = 0.5  # pairs further apart (cosine, descriptors) are never compared, but each image's nearest
PIXEL_TOLERANCE = 0.05  # pixels of the photo this close count as as many (borders are told apart to about 2%)
BORDER_TOLERANCE = 0.05  # shares of photo this close count as as much
LOOK_SIDE = 64  # colour and transparency are told from the image at this size
GRAY_SPREAD = 4  # mean |R-G| + |G-B| (0-255) under which an image's pixels are gray
CAMERA_FORMATS = frozenset({"JPEG", "MPO", "HEIF"})  # what cameras and phones write (Pillow's names)
CACHE_FOLDER = "duplicates-cache"  # inside the artifacts folder, beside the bundles
_BATCH = 4096
_CHUNK = 256  # pairs a worker decides at a time
PARALLEL_FROM = 400  # images or pairs: fewer are done in this process (starting workers costs about a second)

if TYPE_CHECKING:  # the command line reads this module's defaults: it stays light to import
    from .artifacts import Bundle


@dataclass
class Member:
    """An image of a group, with what the choice of the one to keep rests on."""

    id: int
    path: str
    label: Optional[str]
    width: int
    height: int
    bytes: int
    modified: float  # seconds since the epoch
    coverage: float  # the share of the image that shows the photo (not a border, padding or corners)
    distance: float  # between its descriptor and the representative's
    verification: Optional[Verification]  # the representative (first) against this image; None for it

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def to_dict(self, keep: bool) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "label": self.label, "folder": os.path.dirname(self.path),
                "width": self.width, "height": self.height, "bytes": self.bytes,
                "modified": datetime.fromtimestamp(self.modified, timezone.utc).isoformat(timespec="seconds"),
                "photo_share": round(self.coverage, 3), "distance": round(self.distance, 6), "keep": keep,
                "verification": self.verification.to_dict() if self.verification else None}


@dataclass
class DuplicateGroup:
    """Copies of one photo, the one to keep first; each verified against the representative."""

    members: list[Member]
    representative: int  # the id of the member the others were verified against
    why: str  # why the first is the one to keep

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def ids(self) -> list[int]:
        return [member.id for member in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keeper.id, "why": self.why, "representative": self.representative,
                "images": [member.to_dict(keep=number == 0) for number, member in enumerate(self.members)]}


@dataclass
class Duplicates:
    """What a search for duplicates found, and what it compared."""

    groups: list[DuplicateGroup]
    images: int  # readable images looked at
    compared: int  # candidate pairs verified (from the cache or anew)
    max_distance: float
    thresholds: Thresholds
    unreadable: list[str] = field(default_factory=list)  # indexed files that could not be read: never grouped
    from_shared_features: int = 0  # candidate pairs only the images' shared local features proposed

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "max_distance": self.max_distance, "thresholds": asdict(self.thresholds),
                "compared": self.compared,
                "from_shared_features": self.from_shared_features, "unreadable": self.unreadable,
                "grouping": "each image verified against the group's representative",
                "groups": [group.to_dict() for group in self.groups]}


@dataclass
class Images:
    """The images copies are looked for among, by row: a fit's catalog, or the files of a folder."""

    paths: list[str]
    hashes: list[str]  # of their content
    ids: list[int]
    labels: list[Optional[str]]
    vectors: np.ndarray  # (rows, dim) descriptors, which propose the candidates
    metric: str  # how ``vectors`` are compared: "cosine" or "euclidean"

    @classmethod
    def of(cls, bundle: Bundle) -> "Images":
        catalog = bundle.catalog
        return cls(catalog.paths.tolist(), catalog.hashes.tolist(), catalog.ids.tolist(), catalog.labels.tolist(),
                   bundle.embeddings, bundle.index.metric)


# the ``neighbours`` nearest images of each of the rows start..stop (itself maybe among them): (ids, distances),
# nearest first
Search = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]


def index_search(bundle: Bundle) -> Search:
    """The bundle's index as a :data:`Search` (routed as a query is, no expansion)."""
    def search(start: int, stop: int, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
        hits = bundle.index.search(np.asarray(bundle.embeddings[start:stop]), neighbours + 1, expansion=0)
        return hits.ids, hits.distances

    return search


def candidate_pairs(search: Search, count: int, max_distance: float = CANDIDATE_DISTANCE,
                    neighbours: int = NEIGHBOURS, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows (i < j) of the ``count`` images to compare, their nearest by descriptor found by
    ``search``: ((pairs, 2), (pairs,) descriptor distances)."""
    pairs, distances = [np.empty((0, 2), np.int64)], [np.empty(0, np.float32)]
    for start in tqdm(range(0, count, _BATCH), desc="candidates", unit="batch", disable=not progress):
        stop = min(start + _BATCH, count)
        ids, found_distances = search(start, stop, min(neighbours, count - 1))
        rows = np.repeat(np.arange(start, stop), ids.shape[1]).reshape(ids.shape)
        found = ids != rows  # not itself
        apart = found & (found_distances > TWIN_DISTANCE)
        nearest = apart & (np.cumsum(apart, axis=1) == 1)  # each image's nearest other but its exact twins
        keep = (ids >= 0) & found & ((found_distances <= max_distance) | nearest)
        pairs.append(np.sort(np.stack([rows[keep], ids[keep]], axis=1), axis=1))
        distances.append(found_distances[keep].astype(np.float32))
    pairs, distances = np.concatenate(pairs), np.concatenate(distances)
    pairs, unique = np.unique(pairs, axis=0, return_index=True)
    return pairs, distances[unique]


class _Verifier:
    """Verdicts on pairs of indexed images (by row). Features are found once per image and kept in
    the cache folder; verdicts are read from the cache or decided, in worker processes when there
    is much to do (OpenCV's matching holds the interpreter too often for threads to scale)."""

    def __init__(self, images: Images, cache: VerificationCache, progress: bool):
        self.paths, self.cache, self.progress = images.paths, cache, progress
        self.thresholds = cache.thresholds
        self.hashes = list(images.hashes)  # a file changed since it was indexed: its content's hash
        self.ready: set[int] = set()  # rows whose features are in the cache
        self.unreadable: set[int] = set()
        self.workers = min(8, os.cpu_count() or 1)
        self._pool: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "_Verifier":
        return self

    def __exit__(self, *_) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _map(self, function, tasks: list, description: str, unit: str, sizes: Optional[list[int]] = None) -> list:
        """``function`` over ``tasks``: in worker processes when there is enough work to be worth
        starting them, else here; a bar counting ``sizes`` units a task (default one)."""
        sizes = sizes or [1] * len(tasks)
        bar = tqdm(total=sum(sizes), desc=description, unit=unit, disable=not self.progress or sum(sizes) < 100)
        if self.workers > 1 and sum(sizes) >= PARALLEL_FROM:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            results = self._pool.map(function, tasks)
        else:
            results = map(function, tasks)
        answers = []
        for answer, size in zip(results, sizes):
            answers.append(answer)
            bar.update(size)
        bar.close()
        return answers

    def _prepare(self, rows: set[int]) -> None:
        """Put the features of ``rows`` into the cache, finding those it lacks."""
        missing = sorted(row for row in rows - self.ready - self.unreadable  # absent, or unsound: found again
                         if self.cache.features(self.hashes[row]) is None)
        self.ready |= rows - set(missing) - self.unreadable
        tasks = [(self.paths[row], self.hashes[row], str(self.cache.folder)) for row in missing]
        for row, stored in zip(missing, self._map(_store_features, tasks, "local features", "img")):
            if stored is None:
                self.unreadable.add(row)
            else:
                self.hashes[row] = stored
                self.ready.add(row)

    def verdicts(self, pairs: list[tuple[int, int]]) -> list[Optional[Verification]]:
        """The verdict on each pair, told from its first image's side; None where an image cannot be read."""
        known = [self.cache.verdict(self.hashes[a], self.hashes[b]) for a, b in pairs]
        todo = [number for number, verdict in enumerate(known) if verdict is None]
        self._prepare({row for number in todo for row in pairs[number]})
        todo = [number for number in todo if not set(pairs[number]) & self.unreadable]
        todo.sort(key=lambda number: pairs[number])  # a worker meets the same first image again and again
        chunks = [todo[start:start + _CHUNK] for start in range(0, len(todo), _CHUNK)]
        tasks = [(str(self.cache.folder), self.thresholds,
                  [(self.hashes[pairs[n][0]], self.hashes[pairs[n][1]]) for n in chunk]) for chunk in chunks]
        for chunk, decided in zip(chunks, self._map(_decide, tasks, "verify", "pair", [len(c) for c in chunks])):
            for number, values in zip(chunk, decided):
                known[number] = Verification(**values)
                a, b = pairs[number]
                self.cache.store_verdict(self.hashes[a], self.hashes[b], known[number])
        return known

    def shared_feature_pairs(self) -> list[tuple[int, int]]:
        """Pairs of rows (lower first) proposed by the visual words the images share (every readable
        image's features found first); read from the cache when the collection is the one it was
        found for (the same files with the same contents)."""
        key = hashlib.sha1("\n".join([words_version(), *(f"{stored}:{path}" for stored, path in zip(
            self.hashes, self.paths))]).encode()).hexdigest()
        known = self.cache.shared_pairs(key)
        if known is not None:
            return [(first, second) for first, second in known.tolist()]
        stored = {row: self.cache.descriptors(self.hashes[row]) for row in range(len(self.paths))}
        self._prepare({row for row, descriptors in stored.items() if descriptors is None})
        stored.update((row, self.cache.descriptors(self.hashes[row])) for row, descriptors in stored.items()
                      if descriptors is None and row in self.ready)
        rows = [row for row, descriptors in stored.items() if descriptors is not None]
        pairs = [(rows[first], rows[second]) for first, second in
                 shared_feature_pairs([stored[row] for row in rows], self.progress).tolist()]
        self.cache.store_shared_pairs(key, np.asarray(pairs, np.int64).reshape(-1, 2))
        return pairs

    def mirrored_verdicts(self, representative: int, rows: list[int]) -> list[Optional[Verification]]:
        """The verdicts on (representative, row) by :func:`verify_mirrored`, for pairs :meth:`verdicts`
        refused: the representative's mirror image is decoded here, once (None where it cannot be read)."""
        known = [self.cache.verdict(self.hashes[representative], self.hashes[row], mirrored=True) for row in rows]
        todo = [number for number, verdict in enumerate(known) if verdict is None]
        if not todo:
            return known
        try:
            path = self.paths[representative]
            mirrored = LocalFeatures.of(np.ascontiguousarray(
                decode_image(read_file(path), path, min_size=FEATURE_SIDE)[:, ::-1]))
        except ImageError:
            return known
        for number in todo:
            features = _cached_features(str(self.cache.folder), self.hashes[rows[number]])
            known[number] = verify_mirrored(mirrored, features, self.thresholds)
            self.cache.store_verdict(self.hashes[representative], self.hashes[rows[number]], known[number],
                                     mirrored=True)
        return known


def _store_features(task: tuple[str, str, str]) -> Optional[str]:
    """(In a worker.) Find the features of one file and store them in the cache folder under its
    content's hash, which is returned; None when the file cannot be read."""
    path, indexed_hash, folder = task
    try:
        data = read_file(path)
        features = LocalFeatures.of(decode_image(data, path, min_size=FEATURE_SIDE))
    except ImageError:
        return None
    stored = content_hash(data)  # the indexed hash, unless the file changed since it was indexed
    VerificationCache(folder, verdicts=False).store_features(stored, features)
    return stored


def _decide(task: tuple[str, Thresholds, list[tuple[str, str]]]) -> list[dict]:
    """(In a worker.) The verdicts on pairs of images named by content hash, their features read
    from the cache folder."""
    folder, thresholds, pairs = task
    return [asdict(verify(_cached_features(folder, first), _cached_features(folder, second), thresholds))
            for first, second in pairs]


@lru_cache(maxsize=2048)
def _cached_features(folder: str, stored_hash: str) -> LocalFeatures:
    features = VerificationCache(folder, verdicts=False).features(stored_hash)
    if features is None:
        raise ArtifactError(f"{folder}: the features of {stored_hash} vanished from the cache while in use")
    return features


def find_duplicates(bundle: Bundle, max_distance: float = CANDIDATE_DISTANCE, neighbours: int = NEIGHBOURS,
                    thresholds: Thresholds = Thresholds(), progress: bool = True) -> Duplicates:
    """The groups of copies among the indexed images, largest first (see the module's description),
    each pair verified with ``thresholds``; the cache is the one in the bundle's artifacts folder;
    ``progress``: bars on the terminal."""
    if not max_distance >= 0:
        raise InputError(f"max_distance must be a number from 0, got {max_distance}")
    images = Images.of(bundle)
    pairs, _ = candidate_pairs(index_search(bundle), len(images.paths), max_distance, neighbours, progress)
    cache = VerificationCache(bundle.folder.parent / CACHE_FOLDER, thresholds=thresholds)
    return find_among(images, pairs, cache, max_distance, progress)


def find_among(images: Images, pairs: np.ndarray, cache: VerificationCache, max_distance: float,
               progress: bool = True, prune: bool = True, unreadable: Sequence[str] = ()) -> Duplicates:
    """The groups of copies among ``images``: the candidate ``pairs`` (rows) and those of their
    shared local features verified, with the thresholds of ``cache``; ``prune``: forget the cache's
    features and verdicts of images not among these; ``unreadable``: files already found so."""
    candidates = {(int(a), int(b)) for a, b in pairs}
    with _Verifier(images, cache, progress) as verifier:
        sharing = verifier.shared_feature_pairs()
        added = len(set(sharing) - candidates)
        candidates = sorted(candidates | set(sharing))
        verdicts = dict(zip(candidates, verifier.verdicts(candidates)))
        groups, linked = [], _linked(verdicts)
        for component in _components([pair for pair, verdict in verdicts.items() if verdict and verdict.same]):
            groups += _groups(images, component, verdicts, linked, verifier)
    if prune:
        cache.prune(set(images.hashes))
    cache.save()
    groups.sort(key=lambda group: (-len(group.members), group.keeper.id))
    unreadable = sorted([*unreadable, *(images.paths[row] for row in verifier.unreadable)])
    readable = len(images.paths) - len(verifier.unreadable)
    return Duplicates(groups, readable, len(candidates), max_distance, cache.thresholds, unreadable, added)


def _components(links: list[tuple[int, int]]) -> list[list[int]]:
    """Sets of rows joined by links (connected components), each sorted; rows in no link are in none."""
    if not links:
        return []
    pairs = np.asarray(links)
    rows, joined = np.unique(pairs, return_inverse=True)  # the linked rows, numbered 0..n-1
    joined = joined.reshape(pairs.shape)
    graph = coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])), shape=(len(rows), len(rows)))
    _, component = connected_components(graph, directed=False)
    return [rows[component == label].tolist() for label in np.unique(component)]


def _linked(verdicts: dict[tuple[int, int], Optional[Verification]]) -> tuple[dict[int, float], dict[int, int]]:
    """For each image in a verified pair: the largest share of it that another one shows (1 without
    a border), and the number of verified pairs it is in."""
    coverage: dict[int, float] = {}
    links: dict[int, int] = {}
    for (a, b), verdict in verdicts.items():
        if verdict is not None and verdict.same:
            coverage[a] = max(coverage.get(a, 0.0), verdict.covered_first)
            coverage[b] = max(coverage.get(b, 0.0), verdict.covered_second)
            links[a], links[b] = links.get(a, 0) + 1, links.get(b, 0) + 1
    return coverage, links


def _groups(images: Images, rows: list[int], verdicts: dict[tuple[int, int], Optional[Verification]],
            linked: tuple[dict[int, float], dict[int, int]], verifier: _Verifier) -> list[DuplicateGroup]:
    """Groups among ``rows`` (joined by verified pairs), each member verified against its
    representative; ``linked``: what :func:`_linked` tells of the verdicts."""
    coverage, links = linked
    facts = {row: _Facts.of(images.paths[row], coverage[row]) for row in rows}
    remaining = set(rows)
    groups = []
    while len(remaining) > 1:
        representative = max(remaining, key=lambda row: (links[row], facts[row].photo_pixels, facts[row].bytes, -row))
        others = sorted(remaining - {representative})
        pairs = [(min(representative, row), max(representative, row)) for row in others]
        unknown = [pair for pair in pairs if pair not in verdicts]
        verdicts.update(zip(unknown, verifier.verdicts(unknown)))
        against = {row: _told_from(verdicts, representative, row) for row, pair in zip(others, pairs)
                   if verdicts[pair] is not None}
        refused = [row for row, verdict in against.items() if not verdict.same]
        if refused:  # linked to the group but not to its representative: a mirror image of it, cropped or rotated?
            against.update((row, verdict) for row, verdict in zip(
                refused, verifier.mirrored_verdicts(representative, refused)) if verdict is not None)
        joined = [row for row, verdict in against.items() if verdict.same]
        remaining.discard(representative)
        if not joined:
            continue
        remaining -= set(joined)
        group = [representative, *joined]
        keeper, why = _keeper({row: facts[row] for row in group})
        group.remove(keeper)
        group.insert(0, keeper)
        distances = _distances(np.asarray(images.vectors[[representative, *group]], np.float32), images.metric)
        members = [_member(images, row, facts[row], float(distance), against.get(row))
                   for row, distance in zip(group, distances)]
        groups.append(DuplicateGroup(members, images.ids[representative], why))
    return groups


def _told_from(verdicts: dict[tuple[int, int], Optional[Verification]], first: int, row: int) -> Verification:
    """The verdict on (first, row), told from first's side (pairs are kept lower row first)."""
    verdict = verdicts[(min(first, row), max(first, row))]
    return verdict if first < row else verdict.swapped()


@dataclass(frozen=True)
class _Facts:
    """What the choice of the image to keep looks at."""

    width: int
    height: int
    bytes: int
    modified: float
    coverage: float  # the share of the image that shows the photo (a border, padding or corners do not)
    opaque: float = 1.0  # the share of its pixels that are not transparent
    colour: bool = True  # shows colours (not a grayscale file, nor gray pixels in a colour file)
    bits: int = 24  # bits a pixel of what it can show: 1 (1-bit), 8 (gray, 256 colours), 16 (16-bit gray), 24 (RGB)
    camera: tuple[bool, bool] = (False, False)  # (the camera's EXIF: make or model, a camera's format)

    @classmethod
    def of(cls, path: str, coverage: float) -> "_Facts":
        """The file as it is now (zeros when it is gone or unreadable)."""
        try:
            status = os.stat(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    exif = image.getexif()
                    camera = (bool(exif.get(ExifTags.Base.Make) or exif.get(ExifTags.Base.Model)),
                              image.format in CAMERA_FORMATS)
                    width, height, bits = image.width, image.height, _BITS.get(image.mode, 24)
                    image.draft("RGB", (LOOK_SIDE, LOOK_SIDE))
                    small = eight_bit(image)
                    small.thumbnail((LOOK_SIDE, LOOK_SIDE))
                    rgba = np.asarray(small.convert("RGBA"), np.int16)  # loads it: a small one is not yet
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return cls(0, 0, 0, 0.0, coverage)
        opaque = rgba[..., 3] >= 128
        spread = np.abs(rgba[..., 0] - rgba[..., 1]) + np.abs(rgba[..., 1] - rgba[..., 2])
        colour = bool(opaque.any() and spread[opaque].mean() > GRAY_SPREAD)
        return cls(width, height, status.st_size, status.st_mtime, coverage, float(opaque.mean()), colour,
                   bits if colour or bits < 24 else 8, camera)

    @property
    def photo_pixels(self) -> float:
        return self.width * self.height * self.coverage * self.opaque

    def close_to(self, other: "_Facts") -> bool:
        """As many pixels of the photo as ``other``, within PIXEL_TOLERANCE."""
        return abs(self.photo_pixels - other.photo_pixels) <= PIXEL_TOLERANCE * max(self.photo_pixels,
                                                                                       other.photo_pixels)


_BITS = {"1": 1, "L": 8, "LA": 8, "La": 8, "P": 8, "PA": 8, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16,
         "I": 16, "F": 16}  # by Pillow's mode; every colour mode shows 24 bits a pixel


def _keeper(facts: dict[int, _Facts]) -> tuple[int, str]:
    """The image to keep, and why in words: most pixels of the photo (within PIXEL_TOLERANCE:
    transparent areas, borders, padding and a rotation's corners do not count), then the least
    border (within BORDER_TOLERANCE), colour over gray, more bits a pixel, the camera's own file
    (its EXIF, then its format) over a re-encoding, the largest file, the oldest."""
    most = max(facts.values(), key=lambda fact: fact.photo_pixels)
    steps = [
        ("less border", lambda fact: fact.coverage, BORDER_TOLERANCE),
        ("colour (the others are gray)", lambda fact: fact.colour, 0),
        ("more bits a pixel", lambda fact: fact.bits, 0),
        ("the camera's EXIF (the others have none)", lambda fact: fact.camera[0], 0),
        ("a camera's format (the others are re-encodings)", lambda fact: fact.camera[1], 0),
        ("the largest file", lambda fact: fact.bytes, 0),
        ("the oldest", lambda fact: -fact.modified, 0)]
    rows = [row for row, fact in facts.items() if fact.close_to(most)]
    reason = None  # the most pixels decide
    if len(rows) > 1:
        reason = "the same in every other respect"
        for words, key, tolerance in steps:
            best = max(key(facts[row]) for row in rows)
            rows = [row for row in rows if key(facts[row]) >= best - tolerance]
            if len(rows) == 1:
                reason = words
                break
    keeper = min(rows)
    kept = facts[keeper]
    size = f"{kept.width}x{kept.height}" + (f", {kept.coverage * kept.opaque:.0%} of it the photo"
                                            if kept.coverage * kept.opaque < 0.98 else "")
    if reason is None:
        return keeper, f"most pixels of the photo ({size})"
    return keeper, f"as many pixels of the photo as another ({size}), and {reason}"


def _member(images: Images, row: int, facts: _Facts, distance: float, verification: Optional[Verification]) -> Member:
    return Member(images.ids[row], images.paths[row], images.labels[row], facts.width, facts.height, facts.bytes,
                  facts.modified, facts.coverage, distance, verification)


def _distances(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The distances from the first of ``vectors`` to the others, as the index measures them."""
    if metric == "cosine":
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return 1.0 - vectors[1:] @ vectors[0]
    return np.linalg.norm(vectors[1:] - vectors[0], axis=1)


def move_duplicates(groups: list[DuplicateGroup], roots: list[str], destination: str | os.PathLike,
                    thresholds: Thresholds = Thresholds()) -> tuple[list[str], list[str], Optional[str]]:
    """Move every group's copies, verified anew (:func:`copies_to_move`), into ``destination``, each
    at its path relative to the fitted folder it lies in: (the paths moved, the paths left because
    they could not be verified now, the reason the moves stopped early or None). Nothing is deleted
    and nothing overwritten: InputError before any move when a target exists, two files would land on
    one target, or ``destination`` lies inside a fitted folder (a sync would find the files again)."""
    target_root = Path(destination).resolve()
    folders = [Path(root).resolve() for root in roots]
    for folder in folders:
        if target_root == folder or folder in target_root.parents:
            raise InputError(f"{destination}: inside the fitted folder {folder}; a sync would find the moved files "
                             f"again: move them elsewhere")
    moves: dict[Path, Path] = {}
    left: list[str] = []
    for group in groups:
        copies = copies_to_move(group, thresholds)
        left += [member.path for member in group.members[1:] if member not in copies]
        for member in copies:
            source = Path(member.path)
            home = next((folder for folder in folders if folder in source.parents), source.parent)
            target = target_root / source.relative_to(home)
            if target.exists() or target.is_symlink() or target in moves.values():
                raise InputError(f"{target}: already exists; nothing moved (move it away or choose another folder)")
            moves[source] = target
    moved: list[str] = []
    for source, target in moves.items():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        except OSError as exc:
            return moved, left, f"{source}: cannot move it to {target} ({exc.strerror or exc})"
        moved.append(str(source))
    return moved, left, None


def copies_to_move(group: DuplicateGroup, thresholds: Thresholds = Thresholds()) -> list[Member]:
    """The members of ``group`` but its keeper that are copies of it by the images themselves, now:
    each, and the keeper, verified again against the representative from their files (as the groups
    were, with a mirrored retry), never from the cache, whose verdicts only spare work in finding
    the groups. A group whose keeper fails moves nothing."""
    representative = next(member for member in group.members if member.id == group.representative)
    try:
        image = decode_image(read_file(representative.path), representative.path, min_size=FEATURE_SIDE)
    except ImageError:
        return []
    features = LocalFeatures.of(image)
    mirrored = LocalFeatures.of(np.ascontiguousarray(image[:, ::-1]))

    def verified(member: Member) -> bool:
        if member is representative:
            return True
        try:
            other = LocalFeatures.of(decode_image(read_file(member.path), member.path, min_size=FEATURE_SIDE))
        except ImageError:
            return False
        return verify(features, other, thresholds).same or verify_mirrored(mirrored, other, thresholds).same

    if not verified(group.keeper):
        return []
    return [member for member in group.members[1:] if verified(member)]
