"""Near-duplicates: copies of the same photo (re-encoded, resized, cropped, rotated, padded,
mirrored, recoloured, blurred, captioned), verified on the images and grouped without chains.

1. **Candidates** come from the index: each image's ``NEIGHBOURS`` nearest within ``max_distance``
   of it, and its single nearest whatever the distance (in a small folder every distance is large;
   an exact twin does not use it up), searched in batches: no dense n x n matrix; and from the
   images' local features (:mod:`pipeline.collection.visual_words`): each image and the few sharing most of its
   visual words, which finds the copies a descriptor puts far apart (rotated, letterboxed, inside a
   screenshot).
2. **Verification** (:mod:`pipeline.collection.verification`) decides each candidate pair on the two images'
   own pixels; local features are found once per image and, with the verdicts, cached beside the
   bundles by content hash, so a second run does almost no work.
3. **Groups**: within each set of images joined by verified pairs, the image verified with the
   most others becomes the representative, and an image joins its group only if it is verified
   against that representative itself (pairs not yet compared are verified then; one refused is
   tried once more against the representative's mirror image, for a copy both mirrored and cropped
   or rotated); what is left forms the next group the same way. A chain of look-alikes (A like B,
   B like C) never puts A and C together.
4. **The image to keep** in each group and why: :mod:`pipeline.collection.groups`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from ..data.images import content_hash, decode_image, read_file
from ..errors import ArtifactError, ImageError, InputError
from .groups import DuplicateGroup, Duplicates, Facts, Member, choose_keeper
from .verification import FEATURE_SIDE, LocalFeatures, Thresholds, Verification, verify, verify_mirrored
from .verification_cache import VerificationCache
from .visual_words import shared_feature_pairs, words_version

NEIGHBOURS = 8  # candidates per image, by rank
TWIN_DISTANCE = 1e-6  # descriptors this close are of the same pixels: an image's "nearest whatever the distance" is
# the nearest further than this
CANDIDATE_DISTANCE = 0.5  # pairs further apart (cosine, descriptors) are never compared, but each image's nearest
# (past a twin) always is
CACHE_FOLDER = "duplicates-cache"  # inside the artifacts folder, beside the bundles
_BATCH = 4096
_CHUNK = 256  # pairs a worker decides at a time
PARALLEL_FROM = 400  # images or pairs: fewer are done in this process (starting workers costs about a second)

if TYPE_CHECKING:  # the command line reads this module's defaults: it stays light to import
    from ..bundle.artifacts import Bundle


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

    def facts(self, row: int, coverage: float) -> Facts:
        """What the choice of the copy to keep looks at, of ``row``'s file: its size and time now, what
        its contents show from the cache where it was read before (each run need not open every copy)."""
        known = self.cache.facts(self.hashes[row])
        found = Facts.of(self.paths[row], coverage, known)
        if known is None and found.width:
            self.cache.store_facts(self.hashes[row], found.content())
        return found

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
    facts = {row: verifier.facts(row, coverage[row]) for row in rows}
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
        keeper, why = choose_keeper({row: facts[row] for row in group})
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


def _member(images: Images, row: int, facts: Facts, distance: float, verification: Optional[Verification]) -> Member:
    return Member(images.ids[row], images.paths[row], images.labels[row], facts.width, facts.height, facts.bytes,
                  facts.modified, facts.coverage, distance, verification)


def _distances(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The distances from the first of ``vectors`` to the others, as the index measures them."""
    if metric == "cosine":
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return 1.0 - vectors[1:] @ vectors[0]
    return np.linalg.norm(vectors[1:] - vectors[0], axis=1)


