"""Test helpers shared between test files: where the data lies, the tiny settings, folders of real photos, near-copies
of real photos, a writable copy of a fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from pipeline.config import FitConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SHARED = ROOT.parent / "shared"  # the team's real photo sets and tools, beside the project (not in a user's clone)
TEST_DATA = ROOT / "tests" / "data"  # the few real photos the tests need beyond the sample, with their licences
PACKAGE_SAMPLES = TEST_DATA / "package-samples"
CLASSES = ("dress", "hat", "pants", "shoes")
PER_CLASS = 8

# Small and fast, but every stage real: the pretrained backbone at 64 px (a 2 x 2 feature map), two epochs.
TINY = dict(image_size=64, latent_dim=16, epochs=2, batch_size=16, seed=1)
# The from-scratch path (--backbone none): 32 px images, two conv blocks.
PIXELS = dict(backbone="none", image_size=32, filters=(16, 32))


def tiny_config(**overrides) -> FitConfig:
    return FitConfig(**{**TINY, **overrides})


def copy_subset(destination: Path, classes=CLASSES, per_class=PER_CLASS) -> Path:
    """Copy the first ``per_class`` photos of each class of the bundled sample."""
    for name in classes:
        (destination / name).mkdir(parents=True)
        for path in sorted((SAMPLE / name).glob("*.jpg"))[:per_class]:
            shutil.copy2(path, destination / name / path.name)
    return destination


NEAR_COPIES = ("jpeg15", "half_size", "crop10", "colour_shift", "mirror", "caption")
HARD_COPIES = ("rotate", "crop50", "letterbox", "grayscale", "screenshot", "blur", "squeeze")


def near_copy(image: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """A near-copy of a photo, as people make them: re-encoded badly, resized, cropped 10%, colour
    shifted, mirrored, or captioned (JPEG quality 15 is applied when saving, for "jpeg15"); and the
    harder kinds: rotated by 5 to 30 degrees (black corners; ``seed`` picks the angle), cropped to
    its central half, letterboxed onto a square, made grayscale, shown as a screenshot (rescaled
    inside a window's border), strongly blurred, or squeezed from 4:3 to 1:1."""
    width, height = image.size
    if kind == "half_size":
        return image.resize((width // 2, height // 2), Image.Resampling.BILINEAR)
    if kind == "crop10":
        return image.crop((width // 20, height // 20, width - width // 20, height - height // 20))
    if kind == "colour_shift":
        return ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.4)).enhance(1.15)
    if kind == "mirror":
        return ImageOps.mirror(image)
    if kind == "caption":
        captioned = image.copy()
        ImageDraw.Draw(captioned).text((width // 10, height - height // 6), "holiday 2026 (c) me", fill=(255, 255, 0),
                                       font_size=max(10, height // 14))
        return captioned
    if kind == "rotate":
        angle = 5 + (seed * 7919) % 26  # 5 to 30 degrees
        return image.rotate(angle if seed % 2 else -angle, Image.Resampling.BICUBIC, expand=True)
    if kind == "crop50":  # half the area: the central 71% of each side
        return image.crop((int(width * 0.146), int(height * 0.146), int(width * 0.854), int(height * 0.854)))
    if kind == "letterbox":  # a 16:9 frame around it, black bars
        frame = Image.new("RGB", (max(width, height * 16 // 9), max(height, width * 9 // 16)))
        frame.paste(image, ((frame.width - width) // 2, (frame.height - height) // 2))
        return frame
    if kind == "grayscale":
        return ImageOps.grayscale(image).convert("RGB")
    if kind == "screenshot":  # shown at 70% inside a grey window with a title bar, saved at that size
        shown = image.resize((width * 7 // 10, height * 7 // 10), Image.Resampling.BILINEAR)
        window = Image.new("RGB", (shown.width + 40, shown.height + 70), (236, 236, 236))
        ImageDraw.Draw(window).rectangle((0, 0, window.width, 30), fill=(60, 60, 70))
        window.paste(shown, (20, 50))
        return window
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(max(2, min(width, height) // 100)))
    if kind == "squeeze":  # the middle 4:3 of it, stretched to a square
        band = image.crop((0, (height - width * 3 // 4) // 2, width, (height + width * 3 // 4) // 2)) if width * 3 <= height * 4 \
            else image
        return band.resize((band.height, band.height), Image.Resampling.BILINEAR)
    return image


def save_near_copy(source: Path, kind: str, out: Path, seed: int = 0) -> Path:
    image = Image.open(source).convert("RGB")
    near_copy(image, kind, seed).save(out, "JPEG", quality=15 if kind == "jpeg15" else 90)
    return out


def copy_of_fit(artifacts: Path, destination: Path) -> tuple[Path, Path]:
    """A writable copy of a fit and of its photos, the copy's bundle pointing at the copied photos:
    (artifacts, photos) under ``destination``."""
    import json
    import shutil

    from pipeline.bundle.artifacts import Bundle
    from pipeline.bundle.layout import current_folder

    photos, copied = destination / "photos", destination / "artifacts"
    source = Bundle.load(artifacts).manifest.data_dir
    shutil.copytree(source, photos)
    shutil.copytree(artifacts, copied)
    folder = current_folder(copied)
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace(json.dumps(source)[1:-1], json.dumps(str(photos))[1:-1]))
    rewrite_catalog(folder, lambda table: table.set_column(1, table.schema.field("path"), pa.array(
        [path.replace(source, str(photos), 1) for path in table.column("path").to_pylist()], pa.large_string())))
    return copied, photos


def rewrite_catalog(folder: Path, change) -> None:
    """Rewrite the catalog.arrow of the bundle in ``folder`` as ``change`` makes its table (whatever its columns
    become): a copy's paths, a tampered catalog."""
    import pyarrow.ipc

    path = folder / "catalog.arrow"
    with pa.OSFile(str(path)) as source:  # read into memory, not mapped: the file is rewritten below
        table = change(pa.ipc.open_file(source).read_all())
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def serve_app(searcher, **options):
    """Run the service for ``searcher`` (``options`` for ``create_app``) under uvicorn on a free port of 127.0.0.1 in
    a thread; yield its base URL, then stop it."""
    import socket
    import threading
    import time

    import uvicorn

    from pipeline.serve.server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(searcher, **options), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
