"""A group of copies of one photo: its members, the one a person would keep and why, and moving the others aside.

**The image to keep** in each group: the most pixels of the photo (a border, padding, a rotation's corners or
transparent areas do not count), then the least border, colour over gray, more bits a pixel, the camera's own file
(its EXIF, then its format) over a re-encoding, the largest file, the oldest; ``why`` says which of these decided
(:func:`choose_keeper`). Copies are moved only once verified again on the files as they are now
(:func:`copies_to_move`).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import ExifTags, Image

from ..data.images import decode_image, eight_bit, read_file
from ..errors import ImageError, InputError
from .verification import FEATURE_SIDE, LocalFeatures, Thresholds, Verification, verify, verify_mirrored

PIXEL_TOLERANCE = 0.05  # pixels of the photo this close count as as many (borders are told apart to about 2%)
BORDER_TOLERANCE = 0.05  # shares of photo this close count as as much
LOOK_SIDE = 64  # colour and transparency are told from the image at this size
GRAY_SPREAD = 4  # mean |R-G| + |G-B| (0-255) under which an image's pixels are gray
CAMERA_FORMATS = frozenset({"JPEG", "MPO", "HEIF"})  # what cameras and phones write (Pillow's names)


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


@dataclass(frozen=True)
class Facts:
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
    def of(cls, path: str, coverage: float, content: Optional[list] = None) -> "Facts":
        """The file as it is now (zeros when it is gone or unreadable); ``content``: what :meth:`content`
        said of a file of the same contents (a cache's), so the image is not opened again."""
        try:
            status = os.stat(path)
            if content is not None:
                width, height, opaque, colour, bits, exif, camera_format = content
                return cls(width, height, status.st_size, status.st_mtime, coverage, opaque, colour, bits,
                           (exif, camera_format))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    exif = image.getexif()
                    camera = (bool(exif.get(ExifTags.Base.Make) or exif.get(ExifTags.Base.Model)),
                              image.format in CAMERA_FORMATS)
                    width, height, bits = image.width, image.height, BITS.get(image.mode, 24)
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

    def content(self) -> list:
        """What the file's contents alone decide (not its size, time or coverage), as :meth:`of` takes it back."""
        return [self.width, self.height, self.opaque, self.colour, self.bits, *self.camera]

    @property
    def photo_pixels(self) -> float:
        return self.width * self.height * self.coverage * self.opaque

    def close_to(self, other: "Facts") -> bool:
        """As many pixels of the photo as ``other``, within PIXEL_TOLERANCE."""
        return abs(self.photo_pixels - other.photo_pixels) <= PIXEL_TOLERANCE * max(self.photo_pixels,
                                                                                       other.photo_pixels)
BITS = {"1": 1, "L": 8, "LA": 8, "La": 8, "P": 8, "PA": 8, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16,
         "I": 16, "F": 16}  # by Pillow's mode; every colour mode shows 24 bits a pixel


def choose_keeper(facts: dict[int, Facts]) -> tuple[int, str]:
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
