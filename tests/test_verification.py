"""Verification on real photos: every kind of copy is the same photo; look-alikes of the sets (another hat on
the same blanket, another shot of the same flower) are not; the cache keeps features and verdicts by content."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import HARD_COPIES, NEAR_COPIES, TEST_DATA, near_copy
from pipeline.collection.verification import LocalFeatures, Thresholds, _verify_from, verify, verify_mirrored
from pipeline.collection.verification_cache import VerificationCache

PHOTO_SETS = TEST_DATA / "photos"  # as the team's sets lay them out, the few this file needs
PHOTOS = [PHOTO_SETS / path for path in (
    "clothing10/dress/009b3c31-fb62-45c0-be9a-37a5c238cb88.jpg", "clothing10/hat/65f56e85-fda3-4f9d-a88f-15ae9739ff1a.jpg",
    "clothing10/longsleeve/d6931665-0329-4263-8574-c36b5764ea90.jpg",
    "clothing10/pants/05e280ef-53d9-497f-be09-e83c549f0a14.jpg", "caltech101/Faces/image_0015.jpg",
    "caltech101/dalmatian/image_0043.jpg", "flowers5/daisy/100080576_f52e8ee070_n.jpg",
    "flowers5/roses/3109712111_75cea2dee6.jpg")]
# Pairs of different photos that a descriptor finds alike: the same blanket under another hat, a burst of one daisy
LOOK_ALIKES = [("clothing10/hat/6cc3d16a-545e-49a0-922d-dbe014dac610.jpg", "clothing10/hat/708af227-43ba-4e2b-b35b-652a13cd1c77.jpg"),
               ("flowers5/daisy/19177263840_6a316ea639.jpg", "flowers5/daisy/19178753159_a471bf4b6b.jpg"),
               ("clothing10/t-shirt/2475c540-ed7d-4d19-8c5c-171b7ab1d9af.jpg", "clothing10/t-shirt/ff3f01d5-0524-4851-8bcc-a1eb4bc096e6.jpg"),
               ("flowers5/sunflowers/4933229095_f7e4218b28.jpg", "flowers5/sunflowers/4933228903_9ae82d0b9d.jpg")]


def features(image: Image.Image) -> LocalFeatures:
    return LocalFeatures.of(np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("kind", NEAR_COPIES + HARD_COPIES)
def test_every_kind_of_copy_is_the_same_photo(kind, tmp_path):
    missed = []  # a copy of a plain, low-contrast photo can be missed (the rate is measured in bench_duplicates)
    for seed, path in enumerate(PHOTOS):
        photo = Image.open(path)
        near_copy(photo.convert("RGB"), kind, seed).save(tmp_path / "copy.jpg", quality=15 if kind == "jpeg15" else 90)
        verdict = verify(features(photo), features(Image.open(tmp_path / "copy.jpg")))
        backwards = verify(features(Image.open(tmp_path / "copy.jpg")), features(photo))
        if not (verdict.same and backwards.same):
            missed.append((path.name, verdict))
        elif kind in ("mirror", "grayscale"):
            assert verdict.mirrored == (kind == "mirror") and verdict.correlation > 0.99
    assert len(missed) <= 1, missed


@pytest.mark.parametrize("first, second", LOOK_ALIKES)
def test_look_alikes_are_not_the_same_photo(first, second):
    verdict = verify(features(Image.open(PHOTO_SETS / first)), features(Image.open(PHOTO_SETS / second)))
    assert not verdict.same, verdict


def test_a_verdict_does_not_depend_on_the_order_of_the_pair(tmp_path):
    """A screenshot of the hat (window chrome, another size) aligns from the photo's side but not from its own: told
    from either side alone the verdict would depend on which image comes first; verify tries both."""
    photo = Image.open(PHOTOS[1])
    near_copy(photo.convert("RGB"), "screenshot", 3).save(tmp_path / "copy.jpg", quality=90)
    original, copy = features(photo), features(Image.open(tmp_path / "copy.jpg"))
    one_way = [_verify_from(original, copy, Thresholds()).same, _verify_from(copy, original, Thresholds()).same]
    assert sorted(one_way) == [False, True]  # the case this test is about
    assert verify(original, copy).same and verify(copy, original).same
    for first, second in LOOK_ALIKES:  # and a refusal stays a refusal either way
        a, b = features(Image.open(PHOTO_SETS / first)), features(Image.open(PHOTO_SETS / second))
        assert not verify(a, b).same and not verify(b, a).same


def test_thresholds_decide_and_are_checked():
    photo = Image.open(PHOTOS[0]).convert("RGB")
    captioned = features(near_copy(photo, "caption", 0))
    verdict = verify(features(photo), captioned)
    assert verdict.same and verdict.changed > 0
    assert not verify(features(photo), captioned, Thresholds(max_changed=verdict.changed / 2)).same
    assert not verify(features(photo), captioned, Thresholds(min_correlation=min(1.0, verdict.correlation + 1e-3))).same
    for wrong, message in (({"min_inliers": 2}, "min_inliers must be a whole number from 3"),
                           ({"max_changed": 1.5}, "max_changed must be a number from 0 to 1")):
        with pytest.raises(ValueError, match=message):
            Thresholds(**wrong)


def test_a_thumbnail_sized_copy_is_verified_laid_over_its_source():
    photo = Image.open(PHOTOS[0]).convert("RGB").resize((32, 32))
    recoloured = Image.fromarray(np.clip(np.asarray(photo) * 1.1 + 8, 0, 255).astype(np.uint8))
    verdict = verify(features(photo), features(recoloured))
    assert verdict.same and verdict.alignment == "as is"
    other = Image.open(PHOTOS[1]).convert("RGB").resize((32, 32))
    assert not verify(features(photo), features(other)).same


def test_a_copy_mirrored_and_rotated_is_found_against_the_mirror_image():
    found, found_directly = 0, 0
    for seed, path in enumerate(PHOTOS[:4]):
        photo = Image.open(path)
        copy = features(near_copy(ImageOps.mirror(photo), "rotate", seed=seed + 20))
        found_directly += verify(features(photo), copy).same  # only a photo that is its own mirror image
        verdict = verify_mirrored(features(ImageOps.mirror(photo)), copy)
        found += verdict.same and verdict.mirrored and verdict.alignment == "affine"
        other = Image.open(PHOTOS[(seed + 1) % len(PHOTOS)])
        assert not verify_mirrored(features(ImageOps.mirror(other)), copy).same
    assert found >= 3 and found_directly <= 1


def test_the_cache_keeps_features_and_verdicts_by_content_hash(tmp_path):
    first, second = (features(Image.open(path)) for path in PHOTOS[:2])
    cache = VerificationCache(tmp_path / "cache")
    cache.store_features("a" * 40, first)
    verdict = verify(first, second)
    cache.store_verdict("a" * 40, "b" * 40, verdict)
    cache.save()
    again = VerificationCache(tmp_path / "cache")
    stored = again.features("a" * 40)
    assert np.array_equal(stored.descriptors, first.descriptors) and np.array_equal(stored.gray, first.gray)
    assert again.verdict("a" * 40, "b" * 40).to_dict() == verdict.to_dict()
    assert again.verdict("b" * 40, "a" * 40).to_dict() == verdict.swapped().to_dict()  # told from b's side
    assert again.verdict("a" * 40, "b" * 40, mirrored=True) is None  # the mirrored verdict is another one
    assert again.features("c" * 40) is None and again.verdict("a" * 40, "c" * 40) is None
    again.prune({"b" * 40})
    again.save()
    pruned = VerificationCache(tmp_path / "cache")
    assert pruned.features("a" * 40) is None and pruned.verdict("a" * 40, "b" * 40) is None


def test_a_torn_or_foreign_cache_is_ignored(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "verdicts.json").write_text('{"version": 1, "pairs": {"x:y": ')  # torn by a crash
    assert VerificationCache(folder).verdict("x", "y") is None
    (folder / "verdicts.json").write_text('{"version": 999, "pairs": {"x:y": {"same": true}}}')
    assert VerificationCache(folder).verdict("x", "y") is None


def test_verdicts_hold_only_for_the_thresholds_they_were_decided_with(tmp_path):
    first, second = (features(Image.open(path)) for path in PHOTOS[:2])
    cache = VerificationCache(tmp_path / "cache")
    cache.store_verdict("a" * 40, "b" * 40, verify(first, second))
    cache.save()
    assert VerificationCache(tmp_path / "cache").verdict("a" * 40, "b" * 40) is not None
    assert VerificationCache(tmp_path / "cache", thresholds=Thresholds(min_inliers=20)).verdict("a" * 40, "b" * 40) is None
