"""Candidate copies from shared local features: an inverted file of visual words.

A descriptor of the whole image puts a copy rotated by 20 degrees, letterboxed or shown inside a
screenshot far from its original, but such a copy keeps most of the original's ORB features. Each
feature's 256-bit descriptor gives ``WORD_TABLES`` words (its first 3-byte slices, each slice a
table of 2^24 words, so a word is one slice of equal bits); an image is a tf-idf vector over the
words it shares with between 2 and ``MAX_WORD_IMAGES`` images (words more common than that are
stop words: a flat sky, a texture), and its candidates are the ``PER_IMAGE`` images nearest it by
cosine. Measured
on 40 copies (rotated, letterboxed, in a screenshot, cropped to half) among 2,000 look-alike
photos: every rotated, letterboxed and screenshot copy had its original nearest. The cost is
linear in the images: the words are sorted once, and the similarities are found a block of rows
at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse
from tqdm import tqdm

WORD_TABLES = 6  # words a feature gives: its first 6 slices of 3 bytes
MAX_WORD_IMAGES = 30  # a word held by more images says nothing about copies
MIN_SIMILARITY = 0.01  # a nearest image sharing less (cosine of the tf-idf vectors) is no candidate
PER_IMAGE = 3  # candidates an image: its nearest is often another copy of the same photo, the original next
_BLOCK = 512  # rows whose similarities are found at once


def words_version() -> str:
    """What the pairs depend on besides the descriptors: a stored result with another is stale."""
    return f"words {WORD_TABLES} {MAX_WORD_IMAGES} {MIN_SIMILARITY} {PER_IMAGE}"


def shared_feature_pairs(descriptors: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
    """Rows (i < j) of image pairs to compare: each image with the ``PER_IMAGE`` images that share
    most of its visual words, when they share enough; ``descriptors``: each image's (n, 32) uint8 ORB
    descriptors."""
    count = len(descriptors)
    if count < 2:
        return np.empty((0, 2), np.int64)
    vectors = _word_vectors(descriptors)
    transposed = vectors.T.tocsr()
    pairs = []
    for start in tqdm(range(0, count, _BLOCK), desc="shared features", unit="block", disable=not progress):
        block = (vectors[start:start + _BLOCK] @ transposed).toarray()
        rows = np.arange(len(block))
        block[rows, start + rows] = 0  # not itself
        nearest = np.argpartition(-block, min(PER_IMAGE, count - 1) - 1, axis=1)[:, :PER_IMAGE]
        keep = np.take_along_axis(block, nearest, axis=1) >= MIN_SIMILARITY
        pairs.append(np.stack([np.repeat(start + rows[:, None], nearest.shape[1], axis=1)[keep], nearest[keep]],
                              axis=1))
    return np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0).astype(np.int64)


def _word_vectors(descriptors: Sequence[np.ndarray]) -> sparse.csr_matrix:
    """(images, words) unit tf-idf vectors over the shared words (each word counted once an image)."""
    count = len(descriptors)
    owner = np.concatenate([np.full(len(d), row, np.int64) for row, d in enumerate(descriptors)])
    features = np.concatenate([np.asarray(d, np.uint8).reshape(-1, 32)[:, :3 * WORD_TABLES] for d in descriptors])
    rows, columns, words = [], [], 0
    for table in range(WORD_TABLES):
        bits = [features[:, 3 * table + byte].astype(np.int64) for byte in range(3)]
        word = (bits[0] << 16) | (bits[1] << 8) | bits[2]
        held = np.sort(word * count + owner)  # by word, then image (a sort: numpy's hashing unique is slower)
        held = held[np.r_[True, held[1:] != held[:-1]]]  # each (word, image) once
        word, image = held // count, held % count
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])  # where each word's images begin
        images = np.diff(np.r_[starts, len(word)])
        column = np.repeat(np.arange(len(starts)), images)
        shared = np.repeat((images >= 2) & (images <= MAX_WORD_IMAGES), images)
        rows.append(image[shared])
        columns.append(column[shared] + words)
        words += len(starts)
    rows, columns = np.concatenate(rows), np.concatenate(columns)
    weights = np.log(count / np.bincount(columns, minlength=words)[columns]).astype(np.float32)
    vectors = sparse.csr_matrix((weights, (rows, columns)), shape=(count, words))
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    return sparse.diags(1 / np.maximum(norms, 1e-12).astype(np.float32)) @ vectors
