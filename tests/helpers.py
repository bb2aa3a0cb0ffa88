"""Test helpers shared between test files: near-copies of real photos."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

NEAR_COPIES = ("jpeg15", "half_size", "crop10", "colour_shift", "mirror", "caption")


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """A near-copy of a photo, as people make them: re-encoded badly, resized, cropped 10%, colour
    shifted, mirrored, or captioned (JPEG quality 15 is applied when saving, for "jpeg15")."""
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
    return image


def save_near_copy(source: Path, kind: str, out: Path) -> Path:
    image = Image.open(source).convert("RGB")
    near_copy(image, kind).save(out, "JPEG", quality=15 if kind == "jpeg15" else 90)
    return out


def copy_of_fit(artifacts: Path, destination: Path) -> tuple[Path, Path]:
    """A writable copy of a fit and of its photos, the copy's bundle pointing at the copied photos:
    (artifacts, photos) under ``destination``."""
    import json
    import shutil

    from pipeline.artifacts import Bundle, current_folder

    photos, copied = destination / "photos", destination / "artifacts"
    source = Bundle.load(artifacts).manifest.data_dir
    shutil.copytree(source, photos)
    shutil.copytree(artifacts, copied)
    folder = current_folder(copied)
    for name in ("catalog.json", "manifest.json"):
        text = (folder / name).read_text()
        (folder / name).write_text(text.replace(json.dumps(source)[1:-1], json.dumps(str(photos))[1:-1]))
    return copied, photos
