"""Is it the same photo? Two images compared on their own pixels, not on their descriptors.

A descriptor made to say "the same kind of thing" cannot tell a copy of a photo from another photo
of a similar thing, so a candidate pair is verified on the images themselves:

1. **Alignment.** Images of the same framing (aspect ratios within 3%) are first laid over each
   other as they are, and mirrored. Otherwise, or when that fails: ORB local features (found
   once per image, on its grayscale at most ``FEATURE_SIDE`` pixels a side), matched by Lowe's
   ratio test, and an affine model fitted by RANSAC (rotation, scale, crop, padding, squeeze);
   at least ``min_inliers`` matches, and ``min_inlier_ratio`` of them, must agree with it. A
   mirrored copy is thus found when it keeps the framing; one that was also cropped or rotated
   only by :func:`verify_mirrored`, against the features of the mirror image (matching every
   candidate pair a second time that way would double the time, so it is asked only of pairs a
   group's representative refused).
2. **Comparison.** The second image is warped onto the first; on a small, slightly blurred
   grayscale of the overlap (so a re-encode, a blur or a colour change does not count), leaving
   out flat borders joined to either image's edge (padding, bars, a frame, a rotation's corners), the
   brightness of the two, each normalised to mean 0 and deviation 1, must correlate by at least
   ``min_correlation`` and differ by more than half a deviation on at most ``max_changed`` of it.
   Another photo of the same scene (a burst, the same background with another garment) aligns on
   part of the picture but differs elsewhere, and fails here.
3. **Either way round.** A pair one order refuses is tried in the other (the ratio test, the
   overlap and the comparison are each told from the first image's side), so a verdict never
   depends on which image comes first.

The four thresholds are :class:`Thresholds`, settings of ``imgsim duplicates``; their defaults are
measured on near-copies of real photos against their look-alike neighbours
(``benchmarks/bench_duplicates.py``, docs/QUALITY.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import cv2
import numpy as np

VERSION = 6  # of the features, the rule and the verdict's fields: a cache written under another version is ignored
FEATURE_SIDE = 384  # features are found on the grayscale image scaled to at most this side
MIN_FEATURE_SIDE = 160  # a smaller image is scaled up to this side first (a thumbnail has few corners)
FEATURES = 400  # ORB keypoints an image
GRAY_SIDE = 192  # the longer side of the stored grayscale, warped at this size and compared at half of it
BLUR = 1.2  # the Gaussian blur (pixels at half GRAY_SIDE) of both before they are compared
RATIO = 0.8  # Lowe's ratio test: the best match must be this much closer than the second best
RANSAC_PIXELS = 7.0  # at FEATURE_SIDE
MIN_OVERLAP = 0.15  # of the first image covered by the second
BORDER_LEVELS = 3  # grey levels a flat border may vary by
SAME_FRAMING = 0.03  # aspect ratios this close are first compared laid over each other
ROUGH_CORRELATION = 0.7  # ... when their rough look correlates this much (copies: 0.94 or more, measured)

GRID = 4  # features are spread over GRID x GRID cells of the image
_ORB = dict(nfeatures=3 * FEATURES, fastThreshold=10, edgeThreshold=15, patchSize=15)  # the candidates to spread


@dataclass(frozen=True)
class Thresholds:
    """What a pair must reach to be verified the same photo (defaults: bench_duplicates, docs/QUALITY.md)."""

    min_inliers: int = 12  # feature matches that agree with the affine model
    min_inlier_ratio: float = 0.15  # ... as a share of the matches that passed the ratio test
    min_correlation: float = 0.9  # of the two aligned, normalised grayscales
    max_changed: float = 0.05  # share of the overlap differing by more than half a deviation

    def __post_init__(self) -> None:
        """ValueError naming the setting out of its range."""
        if not (isinstance(self.min_inliers, int) and 3 <= self.min_inliers <= FEATURES):
            raise ValueError(f"min_inliers must be a whole number from 3 to {FEATURES}, got {self.min_inliers}")
        for name in ("min_inlier_ratio", "min_correlation", "max_changed"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1, got {value}")


@dataclass
class LocalFeatures:
    """What verification needs of one image: its ORB features and a small grayscale of it."""

    points: np.ndarray  # (n, 2) float32, pixel positions on the feature image
    descriptors: np.ndarray  # (n, 32) uint8
    gray: np.ndarray  # (h, w) uint8, the image at GRAY_SIDE
    feature_shape: tuple[int, int]  # (height, width) of the feature image
    gray_jpeg: np.ndarray  # the grayscale as the cache keeps it, JPEG bytes: a fresh run and a cached one agree

    @classmethod
    def of(cls, rgb: np.ndarray) -> "LocalFeatures":
        """The features of an RGB uint8 image."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        side = max(gray.shape)
        scale = min(FEATURE_SIDE / side, 1.0) if side >= MIN_FEATURE_SIDE else MIN_FEATURE_SIDE / side
        feature_image = _scaled(gray, scale)
        points, descriptors = _detect(cv2.ORB_create(**_ORB), feature_image)
        encoded = cv2.imencode(".jpg", _scaled(gray, GRAY_SIDE / side), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        return cls(points, descriptors, cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), feature_image.shape[:2], encoded)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a cache file holds (about 25 KB an image)."""
        return {"points": self.points, "descriptors": self.descriptors, "gray": self.gray_jpeg,
                "feature_shape": np.asarray(self.feature_shape, np.int64)}

    @classmethod
    def from_arrays(cls, arrays) -> "LocalFeatures":
        """The features a cache file holds; ValueError unless they are what :meth:`to_arrays` writes."""
        points, descriptors, encoded, shape = (arrays[name] for name in ("points", "descriptors", "gray",
                                                                         "feature_shape"))
        if (points.dtype != np.float32 or points.ndim != 2 or points.shape[1:] != (2,)
                or descriptors.dtype != np.uint8 or descriptors.shape != (len(points), 32)
                or len(points) > _ORB["nfeatures"] or shape.dtype != np.int64 or shape.shape != (2,)
                or not (0 < shape).all() or not (shape <= 4 * FEATURE_SIDE).all()
                or not np.isfinite(points).all() or (points < 0).any() or (points >= shape[::-1]).any()
                or encoded.dtype != np.uint8 or encoded.ndim != 1):
            raise ValueError("the cached features are not of the shapes and types this version writes")
        gray = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
        if gray is None or gray.ndim != 2 or min(gray.shape) < 1 or max(gray.shape) > GRAY_SIDE:
            raise ValueError("the cached grayscale is no JPEG of the stored size")
        return cls(points, descriptors, gray, (int(shape[0]), int(shape[1])), encoded)


@dataclass(frozen=True)
class Verification:
    """The verdict on a pair, with what it rests on."""

    same: bool
    alignment: str  # "as is", "affine" or "none" (nothing aligned them)
    mirrored: bool
    inliers: int  # matches that agree with the affine model (0 without one)
    inlier_ratio: float  # of the matches that passed the ratio test
    correlation: float  # of the aligned grayscales
    changed: float  # share of the overlap whose normalised brightness differs by more than half a deviation
    covered_first: float  # share of the first image that shows what the second shows, flat borders of both left out
    covered_second: float  # the same share of the second (a copy with a border or a rotation's corners: under 1)

    def to_dict(self) -> dict:
        return {name: round(value, 4) if isinstance(value, float) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Any) -> "Verification":
        """The verdict a cache holds; ValueError unless it has every field, each of its type."""
        if not isinstance(values, dict) or set(values) != set(cls.__dataclass_fields__):
            raise ValueError("a verdict must have exactly the fields of Verification")
        for name, kind in _FIELD_TYPES.items():
            value = values[name]
            if kind is float:
                if type(value) not in (int, float) or not math.isfinite(value):
                    raise ValueError(f"a verdict's {name} must be a finite number")
            elif type(value) is not kind:
                raise ValueError(f"a verdict's {name} must be a {kind.__name__}")
        if values["alignment"] not in ALIGNMENTS or values["inliers"] < 0:
            raise ValueError("a verdict's alignment or inliers is out of range")
        return cls(**values)

    def swapped(self) -> "Verification":
        """The same verdict told from the second image's side."""
        return replace(self, covered_first=self.covered_second, covered_second=self.covered_first)


NO_ALIGNMENT = Verification(False, "none", False, 0, 0.0, 0.0, 1.0, 0.0, 0.0)
ALIGNMENTS = ("as is", "affine", "none")
_FIELD_TYPES = {"same": bool, "alignment": str, "mirrored": bool, "inliers": int, "inlier_ratio": float,
                "correlation": float, "changed": float, "covered_first": float, "covered_second": float}


def verify(first: LocalFeatures, second: LocalFeatures, thresholds: Thresholds = Thresholds()) -> Verification:
    """Whether two images are the same photo (possibly re-encoded, resized, cropped, rotated,
    padded, squeezed, mirrored, recoloured, blurred or captioned), told from the first's side; the
    same verdict whichever comes first (see the module's description)."""
    verdict = _verify_from(first, second, thresholds)
    if verdict.same:
        return verdict
    return _better(verdict, _verify_from(second, first, thresholds).swapped())


def _verify_from(first: LocalFeatures, second: LocalFeatures, thresholds: Thresholds) -> Verification:
    """:func:`verify` with the ratio test, the overlap and the comparison told from ``first``'s side."""
    best = NO_ALIGNMENT
    aspect = (first.gray.shape[1] / first.gray.shape[0]) / (second.gray.shape[1] / second.gray.shape[0])
    if abs(aspect - 1) <= SAME_FRAMING:
        for mirrored in (False, True):
            if _rough_correlation(first, second, mirrored) < ROUGH_CORRELATION:
                continue
            best = _better(best, _compare(first, second, _as_is(first, second), mirrored, "as is", 0, 0.0,
                                          thresholds))
            if best.same:
                return best
    model = _affine(first, second, thresholds)
    if model is not None:
        matrix, inliers, ratio = model
        best = _better(best, _compare(first, second, matrix, False, "affine", inliers, ratio, thresholds))
    return best


def _rough_correlation(first: LocalFeatures, second: LocalFeatures, mirrored: bool) -> float:
    """The correlation of two images of the same framing at an eighth of the stored grayscale: a
    quick look that spares the full comparison of most pairs that are plainly not alike."""
    height, width = (max(1, side // 8) for side in first.gray.shape)
    a, b = (cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
            for gray in (first.gray, cv2.flip(second.gray, 1) if mirrored else second.gray))
    a, b = (a - a.mean()) / (a.std() + 1e-6), (b - b.mean()) / (b.std() + 1e-6)
    return float(np.mean(a * b))


def verify_mirrored(mirrored_first: LocalFeatures, second: LocalFeatures,
                    thresholds: Thresholds = Thresholds()) -> Verification:
    """Whether ``second`` is a copy of the mirror image of the first image, aligned by features
    (``mirrored_first``: the features of that mirror image); for a pair :func:`verify` refused.
    Tried either way round, as :func:`verify` is."""
    verdict = _mirrored_from(mirrored_first, second, thresholds)
    if verdict.same:
        return verdict
    return _better(verdict, _mirrored_from(second, mirrored_first, thresholds).swapped())


def _mirrored_from(first: LocalFeatures, second: LocalFeatures, thresholds: Thresholds) -> Verification:
    model = _affine(first, second, thresholds)
    if model is None:
        return replace(NO_ALIGNMENT, mirrored=True)
    matrix, inliers, ratio = model
    return replace(_compare(first, second, matrix, False, "affine", inliers, ratio, thresholds), mirrored=True)


def _better(best: Verification, other: Verification) -> Verification:
    return other if (other.same, -other.changed) > (best.same, -best.changed) else best


def _scaled(gray: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1) < 1e-3:
        return gray
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _detect(orb, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``FEATURES`` ORB features spread over the image: the strongest of each cell of a GRID x GRID
    grid first, then the strongest left, so a caption or a patterned corner cannot take them all."""
    keypoints = orb.detect(image, None)
    if not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    height, width = image.shape
    points = cv2.KeyPoint_convert(keypoints)
    strength = -np.float32([keypoint.response for keypoint in keypoints])
    cell = (np.minimum((points[:, 1] * GRID / height).astype(int), GRID - 1) * GRID
            + np.minimum((points[:, 0] * GRID / width).astype(int), GRID - 1))
    order = np.lexsort((strength, cell))  # by cell, strongest first within each
    rank = np.arange(len(order)) - np.searchsorted(cell[order], cell[order])
    first, rest = order[rank < FEATURES // (GRID * GRID)], order[rank >= FEATURES // (GRID * GRID)]
    rest = rest[np.argsort(strength[rest], kind="stable")][:max(0, FEATURES - len(first))]
    taken = np.concatenate([first, rest])
    keypoints, descriptors = orb.compute(image, [keypoints[number] for number in taken])
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.float32([keypoint.pt for keypoint in keypoints]), descriptors


def _as_is(first: LocalFeatures, second: LocalFeatures) -> np.ndarray:
    """The affine map (first's feature image -> second's) of two images of the same framing."""
    (h1, w1), (h2, w2) = first.feature_shape, second.feature_shape
    return np.float32([[w2 / w1, 0, 0], [0, h2 / h1, 0]])


def _affine(first: LocalFeatures, second: LocalFeatures,
            thresholds: Thresholds) -> Optional[tuple[np.ndarray, int, float]]:
    """The RANSAC affine map from first's feature image to second's, its inlier count and inlier
    ratio; None when too few matches agree."""
    least = thresholds.min_inliers
    if len(first.descriptors) < least or len(second.descriptors) < least:
        return None
    # each feature's two nearest of the other's (what a brute-force knnMatch finds, without a Python object a match)
    distances, nearest = cv2.batchDistance(first.descriptors, second.descriptors, cv2.CV_32S,
                                           normType=cv2.NORM_HAMMING, K=2)
    good = np.flatnonzero(distances[:, 0] < RATIO * distances[:, 1])  # in feature order, as RANSAC is given them
    if len(good) < least:
        return None
    source, target = first.points[good], second.points[nearest[good, 0]]
    threshold = RANSAC_PIXELS * max(first.feature_shape) / FEATURE_SIDE
    matrix, inliers = cv2.estimateAffine2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                           maxIters=2000, confidence=0.995)
    if matrix is None or int(inliers.sum()) < least or inliers.sum() < thresholds.min_inlier_ratio * len(good):
        return None
    return matrix.astype(np.float32), int(inliers.sum()), float(inliers.sum()) / len(good)


def _compare(first: LocalFeatures, second: LocalFeatures, matrix: np.ndarray, mirrored: bool, alignment: str,
             inliers: int, ratio: float, thresholds: Thresholds) -> Verification:
    """Warp second's grayscale onto first's with ``matrix`` (feature image to feature image) and
    compare the overlap, at half the grayscales' size, each blurred within the overlap only (a
    black border or corner never bleeds into it)."""
    target = cv2.flip(second.gray, 1) if mirrored else second.gray
    into_first = first.gray.shape[1] / first.feature_shape[1]  # feature image -> stored grayscale
    into_second = second.gray.shape[1] / second.feature_shape[1]
    small = matrix.astype(np.float64).copy()
    small[:, :2] *= into_second / into_first
    small[:, 2] *= into_second
    height, width = first.gray.shape
    inverse = cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(target, small, (width, height), flags=cv2.INTER_LINEAR | inverse)
    inside = cv2.warpAffine(np.ones(target.shape, np.float32), small, (width, height),
                            flags=cv2.INTER_NEAREST | inverse)
    half = (max(1, width // 2), max(1, height // 2))
    a, b = (cv2.resize(image.astype(np.float32), half, interpolation=cv2.INTER_AREA) for image in (first.gray, warped))
    inside = cv2.resize(inside, half, interpolation=cv2.INTER_AREA) > 0.999
    overlap = float(inside.mean())
    borders = (_border(first.gray),
               cv2.warpAffine(_border(target), small, (width, height), flags=cv2.INTER_NEAREST | inverse))
    border_first, border_second = (cv2.resize(border, half, interpolation=cv2.INTER_NEAREST).astype(bool)
                                   for border in borders)
    # the photo both show: in the overlap, and not a flat border in both (padding, bars, a window's frame
    # or a rotation's corners); told from the same pixels for both images, so noise cannot favour either
    covered_first = float((inside & ~(border_first & border_second)).mean())
    second_pixels_per_first = abs(np.linalg.det(small[:, :2])) * (width * height) / target.size
    covered_second = float(min(1.0, covered_first * second_pixels_per_first))
    inside &= ~(border_first | border_second)  # compared where both show the photo
    if inside.sum() < 50 or overlap < MIN_OVERLAP:
        return Verification(False, alignment, mirrored, inliers, ratio, 0.0, 1.0, covered_first, covered_second)
    weight = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), BLUR) + 1e-6
    a, b = (cv2.GaussianBlur(image * inside, (0, 0), BLUR)[inside] / weight[inside] for image in (a, b))
    a = (a - a.mean()) / (a.std() + 1e-6)
    b = (b - b.mean()) / (b.std() + 1e-6)
    correlation, changed = float(np.mean(a * b)), float(np.mean(np.abs(a - b) > 0.5))
    same = correlation >= thresholds.min_correlation and changed <= thresholds.max_changed
    return Verification(same, alignment, mirrored, inliers, ratio, correlation, changed, covered_first, covered_second)


def _border(gray: np.ndarray) -> np.ndarray:
    """1 where the image is flat and joined to its edge (padding, letterbox bars, a window's frame, the
    corners of a rotation), flooded from the corners and the middles of the sides; else 0."""
    height, width = gray.shape
    mask = np.zeros((height + 2, width + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    for x, y in ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1), (width // 2, 0),
                 (width // 2, height - 1), (0, height // 2), (width - 1, height // 2)):
        if not mask[y + 1, x + 1]:
            cv2.floodFill(gray, mask, (x, y), 0, BORDER_LEVELS, BORDER_LEVELS, flags)
    return mask[1:-1, 1:-1]


