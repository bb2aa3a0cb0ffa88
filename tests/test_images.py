"""Finding, decoding and fetching images: real photos plus synthetic special cases."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLE
from pipeline.data.images import decode_image, find_images, prepare_image, read_file
from pipeline.errors import ImageError, InputError

SAMPLE_PHOTO = sorted(SAMPLE.glob("shoes/*.jpg"))[0]

PHOTO = sorted((SAMPLE / "shoes").glob("*.jpg"))[0]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_find_images_recurses_labels_by_first_folder_and_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "cats" / "indoor").mkdir(parents=True)
    (tmp_path / ".thumbs").mkdir()
    for name in ("cats/a.JPG", "cats/indoor/b.png", "top.webp", "notes.txt", ".hidden.jpg", ".thumbs/c.jpg", "d.Jpeg"):
        (tmp_path / name).write_bytes(b"x")
    found = {(r.path, r.label) for r in find_images(tmp_path)}
    assert found == {
        (str(tmp_path / "cats" / "a.JPG"), "cats"),
        (str(tmp_path / "cats" / "indoor" / "b.png"), "cats"),
        (str(tmp_path / "d.Jpeg"), None),
        (str(tmp_path / "top.webp"), None),
    }


def test_find_images_gives_absolute_paths_for_a_relative_folder(tmp_path, monkeypatch):
    (tmp_path / "photos" / "dogs").mkdir(parents=True)
    (tmp_path / "photos" / "dogs" / "a.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert [r.path for r in find_images("photos")] == [str(tmp_path / "photos" / "dogs" / "a.jpg")]


def test_a_linked_class_folder_is_followed_once_and_a_loop_is_not(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "birds"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(elsewhere / "b.jpg")
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(photos / "cats" / "c.jpg")
    (photos / "birds").symlink_to(elsewhere)  # a class folder linked from elsewhere
    (photos / "cats" / "again").symlink_to(photos / "cats")  # a loop
    found = [(r.path, r.label) for r in find_images(photos)]
    assert found == [(str(photos / "birds" / "b.jpg"), "birds"), (str(photos / "cats" / "c.jpg"), "cats")]


FORMATS = {"photo.heic": "HEIF", "photo.avif": "AVIF", "photo.tif": "TIFF", "photo.gif": "GIF", "photo.ppm": "PPM",
           "photo.pgm": "PPM", "photo.pbm": "PPM", "photo.mpo": "MPO", "photo.webp": "WEBP", "photo.bmp": "BMP"}


def test_every_format_a_photo_comes_in_is_found_and_decoded(tmp_path):
    """HEIC (a phone's default), AVIF, TIFF, GIF (its first frame), PPM/PGM/PBM, MPO: found and decoded like a JPEG;
    a file of such a name that is no image is found too, and refused with a reason."""
    source = Image.open(SAMPLE_PHOTO).convert("RGB").resize((96, 96))
    for name, format_name in FORMATS.items():
        image = source.convert({"photo.pgm": "L", "photo.pbm": "1"}.get(name, "RGB"))
        if name == "photo.gif":  # two frames: the first is the photo
            image.save(tmp_path / name, format_name, save_all=True, append_images=[Image.new("RGB", (96, 96))])
        elif name == "photo.mpo":
            image.save(tmp_path / name, format_name, save_all=True, append_images=[image.rotate(90)])
        else:
            image.save(tmp_path / name, format_name)
    (tmp_path / "broken.heic").write_bytes(b"not a heic at all")
    found = [Path(record.path).name for record in find_images(tmp_path)]
    assert sorted(found) == sorted([*FORMATS, "broken.heic"])
    reference = np.asarray(source, dtype=np.float32)
    for name in FORMATS:
        decoded = decode_image((tmp_path / name).read_bytes(), name)
        assert decoded.shape == (96, 96, 3) and decoded.dtype == np.uint8, name
        if name not in ("photo.pbm", "photo.gif"):  # one bit a pixel, 256 colours: far from the photo by design
            assert np.abs(decoded.astype(np.float32).mean(axis=2) - reference.mean(axis=2)).mean() < 12, name
    with pytest.raises(ImageError, match="broken.heic: not a decodable image"):
        decode_image((tmp_path / "broken.heic").read_bytes(), "broken.heic")


def test_find_images_on_a_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "absent")


def test_real_photo_decodes_to_rgb_uint8():
    image = decode_image(read_file(PHOTO), str(PHOTO))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) == 400  # clothing10 photos are 400 px on the shorter side


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8) % 251)
    image = decode_image(encode(gray.convert("L"), "PNG"), "gray.png")
    assert image.shape == (48, 64, 3)
    assert np.array_equal(image[..., 0], image[..., 2]) and np.array_equal(image[..., 0], np.asarray(gray))


def test_transparency_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black ...
    rgba[:5, :, :] = (255, 0, 0, 255)  # ... under an opaque red top half
    image = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), "rgba.png")
    assert (image[:5] == (255, 0, 0)).all()
    assert (image[5:] == 255).all()


def test_16_bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256), (4, 1)).astype(np.uint16)  # 0 .. 65535 along each row
    image = decode_image(encode(Image.fromarray(ramp), "PNG"), "deep.png")
    assert image.shape == (4, 256, 3)
    assert image.min() == 0 and image.max() == 255
    assert 120 <= int(image[0, 128, 0]) <= 135  # mid-range stays mid-grey instead of saturating


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 255, 255)  # stored wide, white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_image(encode(Image.fromarray(pixels), fmt, exif=exif.tobytes()), f"rotated.{fmt}")
    assert image.shape[:2] == (40, 20)  # displayed tall
    assert image[:15].mean() > 200 and image[25:].mean() < 50  # the left half is now on top


def test_large_jpeg_decodes_at_a_reduced_scale_that_still_covers_the_size():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    data = encode(big, "JPEG", quality=80)
    image = decode_image(data, "big.jpg", min_size=64)
    assert min(image.shape[:2]) >= 64 and image.shape[1] < 4000
    assert prepare_image(data, "big.jpg", 64).shape == (64, 64, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not a photo", "not a decodable image"),
        (PHOTO.read_bytes()[:4000], "cannot decode"),  # truncated JPEG
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_bytes_raise_an_image_error_naming_the_source(data, reason):
    with pytest.raises(ImageError, match=reason) as caught:
        decode_image(data, "some/file.jpg")
    assert str(caught.value).startswith("some/file.jpg: ")


def test_read_file_errors_name_the_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_file(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        read_file(tmp_path)


def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageError, match="pipe.jpg: not a regular file"):
        read_file(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # endless
    with pytest.raises(ImageError, match="zero.jpg: not a regular file"):
        read_file(tmp_path / "zero.jpg")
    with open(tmp_path / "sparse.jpg", "wb") as handle:  # 3 GB on paper, nothing on disk
        handle.truncate(3 * 2**30)
    with pytest.raises(ImageError, match=r"sparse.jpg: too large \(3,221,225,472 bytes") as caught:
        read_file(tmp_path / "sparse.jpg")
    assert caught.value.kind == "too_large"
    assert read_file(PHOTO, max_bytes=PHOTO.stat().st_size) == PHOTO.read_bytes()
    with pytest.raises(ImageError, match="too large"):
        read_file(PHOTO, max_bytes=PHOTO.stat().st_size - 1)


def test_a_fit_skips_and_lists_a_fifo_a_device_link_and_an_oversized_file(tmp_path):
    from helpers import copy_subset, tiny_config
    from pipeline.fit import fit

    data = copy_subset(tmp_path / "data", classes=("hat", "shoes"), per_class=3)
    os.mkfifo(data / "hat" / "pipe.jpg")
    (data / "hat" / "zero.jpg").symlink_to("/dev/zero")
    with open(data / "shoes" / "huge.jpg", "wb") as handle:
        handle.truncate(2 * 2**20)
    summary = fit(data, tmp_path / "artifacts", tiny_config(max_file_mb=1))
    assert summary.images == 6
    assert {os.path.basename(s.path): s.reason.split(" (")[0] for s in summary.skipped} == {
        "pipe.jpg": "not a regular file", "zero.jpg": "not a regular file", "huge.jpg": "too large"}


def test_prepare_image_is_deterministic_and_square():
    data = PHOTO.read_bytes()
    first, second = prepare_image(data, "a", 48), prepare_image(data, "b", 48)
    assert first.shape == (48, 48, 3) and np.array_equal(first, second)


def test_the_pixel_budget_lets_no_more_than_its_capacity_decode_at_once():
    import threading
    import time

    from pipeline.data.images import PixelBudget

    budget, peak, lock = PixelBudget(100), [0], threading.Lock()

    def decode(pixels):
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.05)

    threads = [threading.Thread(target=decode, args=(pixels,)) for pixels in (60, 60, 30, 500, 10, 45)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert peak[0] <= 100 and budget.in_use == 0  # 500 pixels took the whole budget, alone


def test_large_images_decoded_from_many_threads_stay_within_the_budget(monkeypatch):
    import concurrent.futures

    import pipeline.data.images as images

    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1000), (200, 30, 30)).save(buffer, "PNG")  # small file, 1.5 MP decoded
    budget, peak = images.PixelBudget(3_000_000), []
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    original = images._upright

    def watched(image, orientation):  # runs inside the decode, once its pixels are loaded
        peak.append(budget.in_use)
        return original(image, orientation)

    monkeypatch.setattr(images, "_upright", watched)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: prepare_image(buffer.getvalue(), "big.png", 32), range(16)))
    assert all(r.shape == (32, 32, 3) for r in results) and budget.in_use == 0
    assert 1_500_000 <= max(peak) <= 3_000_000  # every decode ran holding its pixels, never more than the budget


def test_a_large_image_is_reduced_while_decoding_to_no_less_than_the_size_asked():
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 120, 240)).save(buffer, "PNG")
    reduced = decode_image(buffer.getvalue(), "big.png", min_size=224)
    assert reduced.shape == (2000 // 8, 3000 // 8, 3)  # a whole factor: 2000 // 224 = 8
    assert np.all(reduced == (10, 120, 240)) and decode_image(buffer.getvalue(), "big.png").shape == (2000, 3000, 3)


def _in_mode(photo: Image.Image, mode: str) -> Image.Image:
    """``photo`` in ``mode``, as a file of that mode would open."""
    if mode.startswith("I;16"):  # Pillow's conversions to these clip at 255
        return Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257).astype(
            ">u2" if mode == "I;16B" else "<u2"))
    if mode in ("PA", "RGBa"):
        return photo.convert({"PA": "P", "RGBa": "RGBA"}[mode]).convert(mode)
    return photo.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB",
                                  "HSV", "I", "F", "I;16", "I;16B"])
def test_every_mode_pillow_reads_decodes_reduced_to_the_photo(mode):
    """A large image of any mode (1-bit, palette, 16-bit, float, ...), in every format that holds it, is reduced while
    decoding, as a fit does, and still shows the photo."""
    photo = Image.open(SAMPLE_PHOTO).convert("RGB").resize((256, 320))
    expected = np.asarray(photo.reduce(4).convert("L"), np.float32)
    decoded_in = []
    for fmt in ("PNG", "TIFF", "GIF", "BMP", "PPM", "WEBP"):
        if mode.startswith("I;16") and fmt not in ("PNG", "TIFF", "PPM"):
            continue  # no 16-bit grayscale in the others: Pillow clips it when saving
        try:
            data = encode(_in_mode(photo, mode), fmt)
        except (OSError, ValueError, KeyError):
            continue  # the format cannot hold the mode
        decoded = decode_image(data, f"photo.{fmt.lower()}", min_size=64)
        assert decoded.dtype == np.uint8 and decoded.shape == (80, 64, 3), (mode, fmt)  # reduced by 4: 256 // 64
        if mode not in ("1", "LAB", "HSV", "RGBa", "PA"):  # far from the photo's look by design, or its own colours
            assert np.abs(decoded.astype(np.float32).mean(axis=2) - expected).mean() < 14, (mode, fmt)
        decoded_in.append(fmt)
    assert decoded_in, mode


def test_exif_orientation_survives_the_reduction_of_a_large_image():
    pixels = np.zeros((400, 800), np.uint8)
    pixels[:, :400] = 255  # stored wide, white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for mode, fmt in (("L", "JPEG"), ("1", "PNG"), ("P", "PNG"), ("I;16", "TIFF")):
        image = _in_mode(Image.fromarray(pixels).convert("RGB"), mode)
        decoded = decode_image(encode(image, fmt, exif=exif.tobytes()), f"rotated.{fmt}", min_size=100)
        assert decoded.shape[:2] == (200, 100), (mode, fmt)  # displayed tall, reduced by 4
        assert decoded[:90].mean() > 200 and decoded[110:].mean() < 50, (mode, fmt)


def test_an_image_under_any_name_is_found_by_its_content_and_other_files_are_not(tmp_path):
    photo = Image.open(SAMPLE_PHOTO).convert("RGB").resize((64, 64))
    photo.save(tmp_path / "camera-export.dat", "JPEG")
    photo.save(tmp_path / "no-extension", "PNG")
    photo.save(tmp_path / "scan.tiff.bak", "TIFF")
    photo.convert("1").save(tmp_path / "fax", "PPM")
    (tmp_path / "notes.txt").write_text("BM is how a bitmap starts; P1 is how a bitmap of text starts")
    (tmp_path / "readme").write_text("P1 notes about the photos")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    os.mkfifo(tmp_path / "pipe")  # never opened for reading: listing must not wait on it
    found = [Path(record.path).name for record in find_images(tmp_path)]
    assert found == ["camera-export.dat", "fax", "no-extension", "scan.tiff.bak"]
    for name in found:
        assert decode_image((tmp_path / name).read_bytes(), name).shape == (64, 64, 3)


def test_with_extensions_only_those_files_are_images_and_no_other_file_is_opened(tmp_path, monkeypatch):
    import pipeline.data.images

    photo = Image.open(SAMPLE_PHOTO).convert("RGB").resize((64, 64))
    (tmp_path / "shop").mkdir()
    photo.save(tmp_path / "shop" / "a.JPG", "JPEG")
    photo.save(tmp_path / "shop" / "b.png", "PNG")
    photo.save(tmp_path / "shop" / "camera-export.dat", "JPEG")
    (tmp_path / "shop" / "notes.dat").write_text("not a photo, though its extension is asked for")

    def opened(path):
        raise AssertionError(f"{path} was opened")

    monkeypatch.setattr(pipeline.data.images, "is_image_file", opened)
    found = find_images(tmp_path, extensions={".jpg", ".dat"})
    assert [(Path(record.path).name, record.label) for record in found] == [
        ("a.JPG", "shop"), ("camera-export.dat", "shop"), ("notes.dat", "shop")]  # a named file is trusted
    assert [Path(record.path).name for record in find_images(tmp_path, extensions={".png"})] == ["b.png"]
