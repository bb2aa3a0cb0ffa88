"""Finding image files and decoding any real-world image to RGB uint8.

Every image the pipeline sees, at fit time or at query time, goes through
:func:`prepare_image`, so a query is preprocessed exactly as the training images were.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Optional

import cv2
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import ImageError, InputError

try:  # the format of phone cameras: Pillow reads it through this plugin
    from pillow_heif import register_heif_opener
except ImportError:  # not installed: HEIC files are listed as undecodable
    pass
else:
    register_heif_opener()

# every format Pillow decodes that photos come in (HEIC and HEIF through pillow-heif; a GIF or an MPO by its first frame)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".heic", ".heif", ".avif",
                              ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".mpo"})
# a file of another name is an image when it opens as one of these (formats with a signature no text file starts with)
SNIFFED_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "HEIF", "AVIF", "BMP", "JPEG2000", "PPM", "PSD", "QOI")
MAX_IMAGE_PIXELS = 100_000_000  # larger images are refused as likely decompression bombs
MAX_FILE_BYTES = 256 * 2**20  # larger files are refused before they are read
DECODE_BUDGET_PIXELS = 64_000_000  # pixels being decoded at once in this process, all threads together


class PixelBudget:
    """A counting semaphore in pixels: at most ``capacity`` pixels decoded at once, process-wide.

    A decoded image takes several bytes a pixel at its peak (the decoder's buffer and its
    copies), and a small compressed file can hold a huge image, so many threads decoding at once
    (a fit's decode pool, a server's request threads) are bounded in memory by this budget, not
    by their number. An image larger than the whole budget waits until it can run alone.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


@dataclass(frozen=True)
class ImageRecord:
    """One image file found under a folder; ``label`` is its first-level folder name, if any."""

    path: str
    label: Optional[str]


def find_images(root: str | os.PathLike, recursive: bool = True,
                extensions: Optional[Collection[str]] = None) -> list[ImageRecord]:
    """Every image file under ``root`` (recursively unless told not to, sorted, hidden entries skipped):
    by its name's extension (:data:`IMAGE_EXTENSIONS`), or else by its first bytes (:func:`is_image_file`);
    with ``extensions`` (lower case, with their dot), by those alone, no file opened: the fast path for
    a folder that holds many files of other kinds.

    The label of ``root/cat/x.jpg`` and of ``root/cat/sub/y.png`` is ``"cat"``; files directly in
    ``root`` have no label. Links to folders are followed (a class folder linked from elsewhere is
    a class folder), each real folder once. Paths are absolute, under ``root`` with its own links
    resolved, so a bundle's catalog finds its photos from any working folder and a sync lists them
    under the same names. A folder that cannot be read is an InputError naming it: skipping it
    would make its images look deleted.
    """
    if not Path(root).is_dir():
        raise InputError(f"{root}: not a folder")
    root = Path(os.path.realpath(root))
    return list_images(root, root, recursive, extensions)


def list_images(folder: Path, root: Path, recursive: bool = True,
                extensions: Optional[Collection[str]] = None) -> list[ImageRecord]:
    """The image files under ``folder``, a folder inside ``root`` (both as named, links kept in the
    paths), labelled by their first-level folder under ``root``; see :func:`find_images`."""
    named = IMAGE_EXTENSIONS if extensions is None else frozenset(extensions)

    def unreadable(error: OSError) -> None:
        raise InputError(f"{error.filename}: cannot read this folder ({error.strerror}); nothing was done")

    records, seen = [], set()
    for parent, subfolders, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a link back to a folder already listed: a loop
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = Path(parent).relative_to(root)
        label = relative.parts[0] if relative.parts else None
        for name in sorted(files):  # os.path, not pathlib: a sync lists every file of the collection
            path = os.path.join(parent, name)
            if not name.startswith(".") and (os.path.splitext(name)[1].lower() in named
                                             or (extensions is None and is_image_file(path))):
                records.append(ImageRecord(path, label))
        if not recursive:
            break
    return records


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file of no image's extension is an image by its content: its first bytes open as one
    of :data:`SNIFFED_FORMATS` (only the header is read). A pipe, a device or a folder is not."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image.init()  # every plugin registered: Image.OPEN lists what this Pillow reads
                with Image.open(handle, formats=[name for name in SNIFFED_FORMATS if name in Image.OPEN]):
                    return True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return False


def file_stat(path: str | os.PathLike) -> Optional[list[int]]:
    """[size, modification time in ns] of a file, or None when it cannot be read: what tells a sync
    that a file may have changed without reading it."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def content_hash(data: bytes) -> str:
    """SHA-1 of an image's bytes: how the same image is recognised under another path or URL."""
    return hashlib.sha1(data).hexdigest()


def decode_image(data: bytes, source: str, min_size: int = 0, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode image bytes to an upright RGB uint8 array of shape (height, width, 3).

    Handles every format Pillow reads (HEIC too; a GIF or an MPO by its first frame), EXIF
    orientation, grayscale, palette, CMYK, 16-bit, and transparency (composited on white). With ``min_size``, a large image comes back reduced by a whole factor (box average; for
    JPEGs already while decoding) to no less than ``min_size`` on its shorter side. The decode runs
    within the process's :data:`DECODE_BUDGET` of pixels.
    Raises ImageError naming ``source`` for empty, truncated, oversized or non-image data.
    """
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is checked below
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(source, f"too large ({image.width}x{image.height} pixels)", "too_large")
                if min_size:
                    image.draft("RGB", (min_size, min_size))  # JPEG: decoded at a reduced scale
                with DECODE_BUDGET.hold(image.width * image.height):  # the pixels actually decoded
                    image.load()
                    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                    image = eight_bit(image)
                    factor = min(image.size) // min_size if min_size else 1
                    if factor >= 2:  # box-average it down at once: every later step works on a small image
                        image = image.reduce(factor)
                    return _to_rgb(_upright(image, orientation))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(source, "not a decodable image", "not_image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"too large ({exc})", "too_large") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(source, f"cannot decode image ({exc})", "not_image") from None


# what EXIF's orientation tag asks of the stored pixels to display them upright
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """The image as EXIF's ``orientation`` (read from the file before any conversion) displays it."""
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def eight_bit(image: Image.Image) -> Image.Image:
    """The image in a mode of 8 bits a channel that ``Image.reduce`` takes: 1-bit as grayscale, a
    palette as RGB (RGBA with transparency), 16-bit and float grayscale scaled from their full range
    (not clipped), the rest as they are."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8))
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 of an image in a mode of :func:`eight_bit`, transparency composited on white."""
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size`` x ``size`` (area interpolation when shrinking)."""
    shrinking = rgb.shape[0] >= size and rgb.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def prepare_image(data: bytes, source: str, size: int, max_pixels: int = MAX_IMAGE_PIXELS,
                  box: Optional[tuple[float, float, float, float]] = None) -> np.ndarray:
    """Bytes to the model's uint8 input image: the one preprocessing of fit and query alike. With
    ``box`` (x, y, width, height as fractions of the image's width and height), the image is decoded
    large enough for the box to keep ``size`` pixels a side where it has them, and only the box is kept."""
    if box is None:
        return resize_square(decode_image(data, source, min_size=size, max_pixels=max_pixels), size)
    x, y, width, height = box
    image = decode_image(data, source, min_size=math.ceil(size / min(width, height)), max_pixels=max_pixels)
    rows, columns = image.shape[:2]
    top, left = min(int(y * rows), rows - 1), min(int(x * columns), columns - 1)
    bottom, right = max(top + 1, round((y + height) * rows)), max(left + 1, round((x + width) * columns))
    return resize_square(np.ascontiguousarray(image[top:bottom, left:right]), size)


def thumbnail_jpeg(data: bytes, source: str, size: int, quality: int = 85) -> bytes:
    """An image's bytes shrunk to fit ``size`` x ``size``, as JPEG bytes (ImageError naming ``source`` if undecodable)."""
    image = decode_image(data, source, min_size=size)
    scale = min(1.0, size / max(image.shape[:2]))
    thumb = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a regular file's bytes, at most ``max_bytes`` of them; ImageError naming the file otherwise.

    The file is opened without blocking and checked on the opened descriptor, so a FIFO, a device
    (a link to /dev/zero) or a folder is refused at once, and a file over ``max_bytes`` is refused
    by its size before anything is read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(str(path), "no such file") from None
    except OSError as exc:
        raise ImageError(str(path), f"cannot read ({exc.strerror})") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_size > max_bytes:
        os.close(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise ImageError(str(path), "is a folder, not an image file")
        if not stat.S_ISREG(status.st_mode):
            raise ImageError(str(path), "not a regular file (a pipe, device or socket)")
        raise ImageError(str(path), f"too large ({status.st_size:,} bytes, the limit is {max_bytes:,})", "too_large")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(str(path), f"cannot read ({exc.strerror})") from None
        if len(data) > max_bytes:  # it grew while being read
            raise ImageError(str(path), f"too large (over {max_bytes:,} bytes)", "too_large")
        return data
