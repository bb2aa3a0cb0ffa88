"""Copies on a real fit of real photos mixed with near-copies of some of them: verified groups, the image to keep,
the cache, the command line (--json, --html, --move-to), the API and the page's removal."""

import json
import re
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image

from helpers import HARD_COPIES, NEAR_COPIES, ROOT, SAMPLE, copy_of_fit, copy_subset, save_near_copy, tiny_config
from pipeline.bundle.artifacts import Bundle
from pipeline.collection.duplicates import CACHE_FOLDER, find_duplicates
from pipeline.collection.groups import PIXEL_TOLERANCE
from pipeline.search.searcher import Searcher
from pipeline.serve.server import create_app

TOKEN = "a-write-token-long-enough"


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory):
    """16 photos (4 classes); 2 of them with a near-copy of each of the 13 kinds in the same class folder."""
    from pipeline.fit import fit

    root = tmp_path_factory.mktemp("duplicates")
    photos = copy_subset(root / "photos", per_class=4)
    originals = [sorted((photos / name).glob("*.jpg"))[1] for name in ("hat", "shoes")]
    copies = {original: [save_near_copy(original, kind, original.with_name(f"{original.stem}-{kind}.jpg"), seed)
                         for seed, kind in enumerate(NEAR_COPIES + HARD_COPIES)] for original in originals}
    artifacts = root / "artifacts"
    fit(photos, artifacts, tiny_config(image_size=224))
    return artifacts, copies


def paths_of(found):
    return [{member.path for member in group.members} for group in found.groups]


def test_copies_are_grouped_with_their_original_and_nothing_else(with_copies):
    artifacts, copies = with_copies
    found = find_duplicates(Bundle.load(artifacts), progress=False)
    groups = paths_of(found)
    for original, made in copies.items():
        group = next(group for group in groups if str(original) in group)
        assert len(group - {str(original), *map(str, made)}) == 0  # nothing but its own copies
        assert len(group) >= len(made)  # all 13 kinds but at most one
    assert len(groups) == len(copies)  # the other photos, all distinct, are in no group
    for group in found.groups:
        keeper = group.keeper
        representative = next(member for member in group.members if member.id == group.representative)
        others = [member for member in group.members if member is not representative]
        assert representative.verification is None and all(member.verification.same for member in others)
        assert "pixels of the photo" in group.why
        photo = {member.path: member.width * member.height * member.coverage for member in group.members}
        assert photo[keeper.path] >= (1 - PIXEL_TOLERANCE) * max(photo.values())  # a border gains no pixels of the photo
        rotated = next(m for m in group.members if m.path.endswith("-rotate.jpg"))
        assert rotated is not keeper and rotated.coverage < 0.9
        letterboxed = next(m for m in group.members if m.path.endswith("-letterbox.jpg"))
        assert letterboxed is not keeper and letterboxed.coverage < 0.9


def test_a_small_folder_finds_a_rotated_and_a_grayscale_copy(tmp_path):
    """30 photos: distances there are all large, so the candidates come from rank."""
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", per_class=7)  # 28 photos
    source = sorted((photos / "dress").glob("*.jpg"))[2]
    rotated = save_near_copy(source, "rotate", source.with_name("rotated.jpg"), seed=25)  # 30 degrees
    gray = save_near_copy(source, "grayscale", source.with_name("gray.jpg"))
    fit(photos, tmp_path / "artifacts", tiny_config(image_size=224))
    found = find_duplicates(Bundle.load(tmp_path / "artifacts"), progress=False)
    assert paths_of(found) == [{str(source), str(rotated), str(gray)}]


def test_a_second_run_reads_the_cache_and_a_changed_file_is_looked_at_again(with_copies, tmp_path, monkeypatch):
    import pipeline.collection.groups as groups
    import pipeline.collection.verification as verification

    artifacts, photos = copy_of_fit(with_copies[0], tmp_path)
    bundle = Bundle.load(artifacts)
    first = find_duplicates(bundle, progress=False)
    cached = list((artifacts / CACHE_FOLDER).rglob("*.npz"))
    assert cached and (artifacts / CACHE_FOLDER / "verdicts.json").is_file()
    assert (artifacts / CACHE_FOLDER / "facts.json").is_file()  # what the choice of the copy to keep read

    def no_new_work(*_):
        raise AssertionError("features computed, pairs verified or images opened again")

    with monkeypatch.context() as patch:
        patch.setattr(verification.LocalFeatures, "of", no_new_work)
        patch.setattr(verification, "verify", no_new_work)
        patch.setattr(groups.Image, "open", no_new_work)  # no image opened again to choose the copy to keep
        again = find_duplicates(Bundle.load(artifacts), progress=False)
    assert [group.to_dict() for group in again.groups] == [group.to_dict() for group in first.groups]

    computed = []
    real = verification.LocalFeatures.of.__func__
    monkeypatch.setattr(verification.LocalFeatures, "of", classmethod(lambda cls, rgb: computed.append(1) or
                                                                      real(cls, rgb)))
    (artifacts / CACHE_FOLDER / "verdicts.json").unlink()
    stale = next(path for path in cached if path.stem == bundle.catalog.hashes[0])
    stale.unlink()  # as if the file had changed: its new hash has no features yet
    find_duplicates(Bundle.load(artifacts), progress=False)
    assert len(computed) == 1


def test_the_commands_help_states_the_default_distance_and_thresholds():
    from pipeline.cli import build_parser
    from pipeline.collection.duplicates import CANDIDATE_DISTANCE
    from pipeline.collection.verification import Thresholds

    command = build_parser()._subparsers._group_actions[0].choices["duplicates"]
    text = " ".join(command.format_help().split())
    assert f"default: {CANDIDATE_DISTANCE:g})" in text
    for name, value in asdict(Thresholds()).items():
        assert re.search(f"--{name.replace('_', '-')} [A-Z] .*?default: {value:g}\\)", text), name


def test_the_command_prints_json_and_writes_a_page(with_copies, tmp_path):
    artifacts, copies = with_copies
    page = tmp_path / "groups.html"
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts),
                              "--json", "--html", str(page)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    body = json.loads(process.stdout)
    assert body["grouping"] == "each image verified against the group's representative" and len(body["groups"]) == 2
    for group in body["groups"]:
        keeper = group["images"][0]
        assert keeper["keep"] and keeper["id"] == group["keep"] and group["why"]
        representative = [image for image in group["images"] if image["id"] == group["representative"]]
        assert len(representative) == 1 and representative[0]["verification"] is None
        for image in group["images"]:
            assert {"id", "path", "label", "folder", "width", "height", "bytes", "modified", "photo_share", "distance",
                    "verification"} <= set(image)
            assert image["folder"] == os.path.dirname(image["path"]) and image["width"] > 0 and image["bytes"] > 0
        checks = [image["verification"] for image in group["images"] if image["id"] != group["representative"]]
        assert all(check["same"] and check["correlation"] >= 0.9 for check in checks)
        assert any(check["mirrored"] for check in checks) and any(check["alignment"] == "affine" for check in checks)
    html = page.read_text()  # self-contained: the thumbnails ride in its JSON, nothing is fetched
    assert html.count('"keep":true') == 2 and html.count('"thumbnail":"') == sum(len(g["images"]) for g in body["groups"])
    assert "<link" not in html and 'src="http' not in html and "<script src" not in html


def test_the_thresholds_are_settings_of_the_command(with_copies, tmp_path):
    artifacts, _ = copy_of_fit(with_copies[0], tmp_path)

    def run(*flags):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts),
                               "--json", *flags], capture_output=True, text=True, cwd=ROOT, timeout=300)

    default, strict = run(), run("--min-correlation", "0.9999", "--max-changed", "0.001")
    assert default.returncode == strict.returncode == 0, strict.stderr
    default, strict = json.loads(default.stdout), json.loads(strict.stdout)
    assert default["thresholds"] == {"min_inliers": 12, "min_inlier_ratio": 0.15, "min_correlation": 0.9,
                                     "max_changed": 0.05}
    assert strict["thresholds"]["min_correlation"] == 0.9999 and strict["thresholds"]["max_changed"] == 0.001
    grouped = [sum(len(group["images"]) for group in body["groups"]) for body in (default, strict)]
    assert grouped[1] < grouped[0]  # the stricter verdicts were decided anew, not read from the cache
    wrong = run("--min-inliers", "2")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1].endswith(
        "argument --min-inliers: must be at least 3, got 2 (see imgsim duplicates --help)")


def test_move_to_moves_the_copies_keeps_their_paths_and_drops_them_from_the_index(with_copies, tmp_path):
    artifacts, photos = copy_of_fit(with_copies[0], tmp_path)
    found = find_duplicates(Bundle.load(artifacts), progress=False)
    copies = [member.path for group in found.groups for member in group.members[1:]]
    keepers = [group.keeper.path for group in found.groups]
    command = [sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts)]

    inside = subprocess.run(command + ["--move-to", str(photos / "dups")], capture_output=True, text=True, timeout=300)
    assert inside.returncode == 2 and "inside the fitted folder" in inside.stderr.splitlines()[-1]
    blocker = tmp_path / "moved" / Path(copies[0]).relative_to(photos)
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"someone else's file")
    refused = subprocess.run(command + ["--move-to", str(tmp_path / "moved")], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "already exists; nothing moved" in refused.stderr.splitlines()[-1]
    assert all(Path(path).exists() for path in copies) and blocker.read_bytes() == b"someone else's file"

    blocker.unlink()
    moved = subprocess.run(command + ["--move-to", str(tmp_path / "moved")], capture_output=True, text=True,
                           timeout=300)
    assert moved.returncode == 0, moved.stderr
    assert f"moved {len(copies)} files into" in moved.stdout and f"remove: 0 added, 0 changed, {len(copies)} removed" \
        in moved.stdout
    for path in copies:
        assert not Path(path).exists() and (tmp_path / "moved" / Path(path).relative_to(photos)).is_file()
    assert all(Path(path).exists() for path in keepers)
    indexed = set(Bundle.load(artifacts).catalog.paths)
    assert not indexed & set(copies) and set(keepers) <= indexed
    assert find_duplicates(Bundle.load(artifacts), progress=False).groups == []


def test_the_api_lists_the_groups_and_removes_a_groups_copies_with_the_token(with_copies, tmp_path):
    artifacts, _ = copy_of_fit(with_copies[0], tmp_path)
    client = TestClient(create_app(Searcher(Bundle.load(artifacts)), write_token=TOKEN))
    body = client.get("/api/duplicates").json()
    assert len(body["groups"]) == 2 and body["max_distance"] > 0
    assert client.get("/api/duplicates", params={"max_distance": "nan"}).status_code == 422
    page = client.get("/duplicates")
    assert page.status_code == 200 and "/duplicates.js" in page.text and client.get("/duplicates.js").status_code == 200

    group = body["groups"][0]
    others = [image["id"] for image in group["images"][1:]]
    none, wrong = (client.post("/api/remove", json={"ids": others}, headers=headers)
                   for headers in ({}, {"Authorization": "Bearer wrong"}))
    assert none.status_code == wrong.status_code == 401
    assert none.json()["error"].startswith("removing needs the server's write token")
    assert wrong.json()["error"] == "the write token is wrong: it is not the one the server was started with"
    bad = client.post("/api/remove", json={"ids": ["1"]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 422
    answer = client.post("/api/remove", json={"ids": others}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["removed"] == others
    catalog = Bundle.load(artifacts).catalog
    assert all(catalog.row_of(image_id) is None for image_id in others)
    assert catalog.row_of(group["keep"]) is not None and all(Path(i["path"]).exists() for i in group["images"])
    assert len(client.get("/api/duplicates").json()["groups"]) == 1  # worked out again for the new bundle


def test_removing_is_off_without_a_write_token(with_copies):
    client = TestClient(create_app(Searcher(Bundle.load(with_copies[0]))))
    answer = client.post("/api/remove", json={"ids": [1]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 403 and "--write-token-file" in answer.json()["error"]


def test_an_unreadable_file_is_listed_and_never_grouped(with_copies, tmp_path):
    artifacts, photos = copy_of_fit(with_copies[0], tmp_path)
    shutil.rmtree(artifacts / CACHE_FOLDER, ignore_errors=True)
    bundle = Bundle.load(artifacts)
    gone = next(path for path in bundle.catalog.paths if path.endswith("-rotate.jpg"))
    os.unlink(gone)
    found = find_duplicates(bundle, progress=False)
    assert gone in found.unreadable and all(gone not in group for group in paths_of(found))
    again = find_duplicates(Bundle.load(artifacts), progress=False)  # from the cache: said again all the same
    assert again.unreadable == found.unreadable and paths_of(again) == paths_of(found)


def _poison_every_verdict(artifacts):
    """Set every cached verdict to "the same photo", as a tamperer would."""
    path = artifacts / CACHE_FOLDER / "verdicts.json"
    stored = json.loads(path.read_text())
    for verdict in stored["pairs"].values():
        verdict.update(same=True, covered_first=1.0, covered_second=1.0)
    path.write_text(json.dumps(stored))
    return len(stored["pairs"])


def test_move_to_verifies_each_copy_on_the_images_whatever_the_cache_says(with_copies, tmp_path):
    """A poisoned verdicts cache may make groups of photos that are not copies; --move-to moves none of them."""
    artifacts, photos = copy_of_fit(with_copies[0], tmp_path)
    honest = find_duplicates(Bundle.load(artifacts), progress=False)
    copies = {member.path for group in honest.groups for member in group.members[1:]}
    assert _poison_every_verdict(artifacts) > len(copies)
    poisoned = find_duplicates(Bundle.load(artifacts), progress=False)
    proposed = {member.path for group in poisoned.groups for member in group.members[1:]}
    assert proposed - copies  # the cache is believed when grouping (it only spares work)...
    command = [sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts), "--move-to",
               str(tmp_path / "moved")]
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    moved = {str(photos / path.relative_to(tmp_path / "moved")) for path in (tmp_path / "moved").rglob("*.jpg")}
    source = Path(Bundle.load(with_copies[0]).manifest.data_dir)
    families = [{str(photos / Path(path).relative_to(source)) for path in [original, *made]}
                for original, made in with_copies[1].items()]  # 2 photos and the 13 kinds of copy of each
    assert moved and moved <= set.union(*families)  # ...but nothing that is not a copy is moved
    assert all(family - moved for family in families)  # and one of each photo stays
    for path in proposed - set.union(*families):
        assert Path(path).exists() and f"not moved, not verified as a copy on the images now: {path}" in process.stdout
    assert len(Bundle.load(artifacts).catalog) == len(Bundle.load(with_copies[0]).catalog) - len(moved)


TAMPERED_CACHES = {
    "verdicts-a-list": lambda cache: (cache / "verdicts.json").write_text("[]"),
    "a-verdict-missing-fields": lambda cache: _edit_verdicts(cache, lambda v: {"same": True}),
    "a-verdict-of-wrong-types": lambda cache: _edit_verdicts(cache, lambda v: {**v, "inliers": "many"}),
    "verdicts-nested-deep": lambda cache: (cache / "verdicts.json").write_text("[" * 100_000 + "]" * 100_000),
    "verdicts-torn": lambda cache: (cache / "verdicts.json").write_text('{"version": 5, "pairs": {"a'),
    "features-empty": lambda cache: _edit_features(cache, points=lambda p: np.zeros((0, 0), np.float32)),
    "features-float64": lambda cache: _edit_features(cache, descriptors=lambda d: d.astype(np.float64)),
    "features-points-truncated": lambda cache: _edit_features(cache, points=lambda p: p[: len(p) // 2]),
    "features-points-outside": lambda cache: _edit_features(cache, points=lambda p: p + 10_000),
    "features-gray-not-a-jpeg": lambda cache: _edit_features(cache, gray=lambda g: np.zeros(10, np.uint8)),
    "features-not-an-npz": lambda cache: _edit_features(cache, points=None),
    "facts-a-list": lambda cache: (cache / "facts.json").write_text("[]"),
    "facts-torn": lambda cache: (cache / "facts.json").write_text('{"version": 1, "facts": {"a'),
    "a-fact-of-wrong-types": lambda cache: _edit_facts(cache, lambda fact: ["wide", *fact[1:]]),
    "a-fact-out-of-range": lambda cache: _edit_facts(cache, lambda fact: [*fact[:2], 7.5, *fact[3:]]),
}


def _edit_facts(cache, change):
    path = cache / "facts.json"
    stored = json.loads(path.read_text())
    stored["facts"] = {key: change(value) for key, value in stored["facts"].items()}
    path.write_text(json.dumps(stored))


def _edit_verdicts(cache, change):
    path = cache / "verdicts.json"
    stored = json.loads(path.read_text())
    stored["pairs"] = {key: change(value) for key, value in stored["pairs"].items()}
    path.write_text(json.dumps(stored))


def _edit_features(cache, **change):
    for path in cache.rglob("*.npz"):
        if change.get("points", True) is None:  # not an npz at all
            path.write_bytes(b"junk")
            continue
        with np.load(path) as arrays:
            stored = dict(arrays)
        np.savez(path, **{**stored, **{k: f(stored[k]) for k, f in change.items()}})
    (cache / "verdicts.json").unlink()  # the features are read again only for pairs not decided yet


@pytest.mark.parametrize("kind", list(TAMPERED_CACHES))
def test_a_tampered_cache_is_ignored_rebuilt_and_said_once(with_copies, tmp_path, kind, caplog):
    artifacts, _ = copy_of_fit(with_copies[0], tmp_path)
    honest = paths_of(find_duplicates(Bundle.load(artifacts), progress=False))
    TAMPERED_CACHES[kind](artifacts / CACHE_FOLDER)
    with caplog.at_level("WARNING", logger="pipeline"):
        again = paths_of(find_duplicates(Bundle.load(artifacts), progress=False))
    assert again == honest
    warnings = [record.getMessage() for record in caplog.records if "ignored, verified anew" in record.getMessage()]
    assert len(warnings) == 1, warnings
    caplog.clear()
    assert paths_of(find_duplicates(Bundle.load(artifacts), progress=False)) == honest  # rebuilt: quiet now
    assert not [record for record in caplog.records if "ignored" in record.getMessage()]
    client = TestClient(create_app(Searcher(Bundle.load(artifacts))))
    TAMPERED_CACHES[kind](artifacts / CACHE_FOLDER)
    answer = client.get("/api/duplicates")
    assert answer.status_code == 200 and len(answer.json()["groups"]) == len(honest)


def _camera_exif() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Canon", "EOS 80D"
    return exif.tobytes()


def test_the_copy_kept_is_the_best_photo_not_the_biggest_file(tmp_path):
    """Each copy beside its original, as a person would choose: the original wins by the reason named, though the
    copy is the larger file every time."""
    from pipeline.collection.groups import Facts, choose_keeper

    photo = Image.open(sorted((SAMPLE / "shoes").glob("*.jpg"))[0]).convert("RGB")
    photo.save(tmp_path / "original.jpg", quality=80, exif=_camera_exif())
    photo.save(tmp_path / "original-no-exif.jpg", quality=80)
    photo.save(tmp_path / "original.heic", quality=80)
    half_clear = photo.convert("RGBA")
    half_clear.paste((0, 0, 0, 0), (0, 0, photo.width // 2, photo.height))
    half_clear.save(tmp_path / "half-transparent.png")
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(tmp_path / "gray-16-bit.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "256-colours.gif")
    photo.save(tmp_path / "re-encoded.png")
    photo.convert("L").convert("RGB").save(tmp_path / "gray-pixels.png")
    photo.resize((48, 36)).save(tmp_path / "original-tiny.jpg", quality=95, exif=_camera_exif())
    photo.resize((48, 36)).save(tmp_path / "tiny.png")  # smaller than the look taken of each: read all the same
    cases = [("original.jpg", "half-transparent.png", "most pixels of the photo"),
             ("original.jpg", "gray-16-bit.png", "colour (the others are gray)"),
             ("original.jpg", "gray-pixels.png", "colour (the others are gray)"),
             ("original.heic", "256-colours.gif", "more bits a pixel"),
             ("original.jpg", "re-encoded.png", "the camera's EXIF"),
             ("original-no-exif.jpg", "re-encoded.png", "a camera's format"),
             ("original-tiny.jpg", "tiny.png", "the camera's EXIF")]
    for original, copy, reason in cases:
        assert (tmp_path / copy).stat().st_size > (tmp_path / original).stat().st_size, copy
        facts = {0: Facts.of(str(tmp_path / copy), 1.0), 1: Facts.of(str(tmp_path / original), 1.0)}
        keeper, why = choose_keeper(facts)
        assert keeper == 1 and reason in why, (copy, why)


def test_the_best_photo_is_kept_in_a_group_found_in_a_fitted_folder(tmp_path):
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", per_class=5)
    source = sorted((photos / "dress").glob("*.jpg"))[1]
    photo = Image.open(source).convert("RGB")
    original = source.with_name("original.jpg")
    photo.save(original, quality=85, exif=_camera_exif())
    source.unlink()
    photo.save(original.with_name("re-encoded.png"))
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(original.with_name("256-colours.gif"))
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(original.with_name("gray-16.png"))
    fit(photos, tmp_path / "artifacts", tiny_config(image_size=224))
    found = find_duplicates(Bundle.load(tmp_path / "artifacts"), progress=False)
    assert len(found.groups) == 1 and found.groups[0].keeper.path == str(original), found.to_dict()
    assert {Path(member.path).name for member in found.groups[0].members} == {
        "original.jpg", "re-encoded.png", "256-colours.gif", "gray-16.png"}
    assert found.groups[0].why.endswith("the camera's EXIF (the others have none)")


def test_the_page_of_the_command_shows_every_thumbnail_and_names_every_folder(tmp_path):
    """A GIF and a 16-bit PNG among the copies (their thumbnails once failed to decode), in a collection of two
    folders: the page's title names both."""
    from pipeline.collection.changes import add_images
    from pipeline.fit import fit
    from pipeline.report.pages import write_duplicates_page

    photos, more = copy_subset(tmp_path / "photos", per_class=5), tmp_path / "more"
    more.mkdir()
    photo = Image.open(sorted((photos / "hat").glob("*.jpg"))[0]).convert("RGB")
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).resize((900, 1200)).save(more / "big.gif")
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).resize((900, 1200)).save(
        more / "gray-16.png")
    fit(photos, tmp_path / "artifacts", tiny_config(image_size=224))
    add_images(more, tmp_path / "artifacts")
    bundle = Bundle.load(tmp_path / "artifacts")
    found = find_duplicates(bundle, progress=False)
    assert len(found.groups) == 1 and len(found.groups[0].members) == 3
    page = write_duplicates_page(found, bundle.manifest.roots, tmp_path / "groups.html").read_text()
    assert page.count('"thumbnail":"') == 3 and '"thumbnail":null' not in page
    assert f"<title>Copies among {photos}, {more}</title>" in page


def test_pairs_are_scored_against_labelled_copies():
    from pipeline.errors import InputError
    from pipeline.collection.ground_truth import score_groups

    paths = ["/photos/a/1.jpg", "/photos/a/2.jpg", "/photos/b/3.jpg", "/photos/b/4.jpg", "/photos/5.jpg"]
    labels = {"a/1.jpg": ["2.jpg", "/photos/b/3.jpg"], "2.jpg": ["a/1.jpg"], "b/4.jpg": [], "gone.jpg": ["5.jpg"]}
    # true pairs: 1-2, 1-3, and gone-5 (never findable); 5.jpg alone in a group with 4 is a wrong pair
    scores = score_groups([["/photos/a/1.jpg", "/photos/a/2.jpg"], ["/photos/b/4.jpg", "/photos/5.jpg"]],
                          labels, paths, ["/photos"])
    assert (scores.true_pairs, scores.found_pairs, scores.correct) == (3, 2, 1)
    assert scores.precision == 0.5 and scores.recall == pytest.approx(1 / 3) and scores.f1 == pytest.approx(0.4)
    assert scores.unknown == ["gone.jpg"]
    with pytest.raises(InputError, match="names none of the 5 files of the collection"):
        score_groups([], {"elsewhere.jpg": []}, paths, ["/photos"])


def test_the_command_scores_its_groups_against_a_ground_truth_file(with_copies, tmp_path):
    artifacts, copies = with_copies
    root = Bundle.load(artifacts).manifest.roots[0]
    truth = {}
    for original, made in copies.items():
        family = [os.path.relpath(path, root) for path in (original, *made)]
        truth.update({name: [other for other in family if other != name] for name in family})
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts), *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    listed, as_json = run("--ground-truth", str(tmp_path / "truth.json")), run("--json", "--ground-truth",
                                                                              str(tmp_path / "truth.json"))
    assert listed.returncode == as_json.returncode == 0, listed.stderr
    body = json.loads(as_json.stdout)
    found = {frozenset((a["path"], b["path"])) for group in body["groups"] for a in group["images"]
             for b in group["images"] if a["path"] < b["path"]}
    true = {frozenset((os.path.join(root, a), os.path.join(root, b))) for a, others in truth.items() for b in others}
    scored = body["ground_truth"]
    assert (scored["true_pairs"], scored["found_pairs"], scored["correct"]) == (len(true), len(found), len(found & true))
    assert scored["recall"] >= 0.9 and scored["precision"] == 1.0
    assert f"pair precision 1.0000, recall {scored['recall']:.4f}" in listed.stdout
    (tmp_path / "wrong.json").write_text('["not", "a", "map"]')
    wrong = run("--ground-truth", str(tmp_path / "wrong.json"))
    assert wrong.returncode != 0 and wrong.stderr.strip() == (
        f"error: {tmp_path / 'wrong.json'}: must be a JSON object of each file to the list of its copies")


def test_shared_local_features_propose_the_copies_a_descriptor_misses():
    """Rotated by 30 degrees, letterboxed, inside a screenshot, of photos among 80 look-alikes (the sample's): each
    copy's original is among the images sharing most of its visual words."""
    from helpers import near_copy
    from pipeline.collection.verification import LocalFeatures
    from pipeline.collection.visual_words import PER_IMAGE, shared_feature_pairs

    photos = sorted(SAMPLE.glob("*/*.jpg"))[:80]
    descriptors = [LocalFeatures.of(np.asarray(Image.open(path).convert("RGB"))).descriptors for path in photos]
    expected = set()
    for number, kind in enumerate(("rotate", "letterbox", "screenshot", "rotate", "letterbox", "screenshot")):
        source = 7 + 11 * number
        copy = near_copy(Image.open(photos[source]).convert("RGB"), kind, seed=25 if kind == "rotate" else number)
        descriptors.append(LocalFeatures.of(np.asarray(copy)).descriptors)
        expected.add((source, len(descriptors) - 1))
    pairs = {tuple(pair) for pair in shared_feature_pairs(descriptors).tolist()}
    assert expected <= pairs
    assert len(pairs) <= PER_IMAGE * len(descriptors)  # a few candidates an image at most


def test_an_exact_twin_does_not_use_up_the_nearest_candidate(tmp_path):
    """Two identical files of a rotated copy sit far from the photo and its resized copy: each twin's nearest
    other than its twin is still proposed."""
    from pipeline.collection.duplicates import candidate_pairs, index_search
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", per_class=5)
    source = sorted((photos / "dress").glob("*.jpg"))[0]
    half = save_near_copy(source, "half_size", source.with_name("half.jpg"))
    twin = save_near_copy(source, "rotate", source.with_name("rotated.jpg"), seed=25)
    shutil.copy(twin, twin.with_name("rotated-again.jpg"))
    fit(photos, tmp_path / "artifacts", tiny_config(image_size=224))
    bundle = Bundle.load(tmp_path / "artifacts")
    row = {path: number for number, path in enumerate(bundle.catalog.paths)}
    pairs, distances = candidate_pairs(index_search(bundle), len(bundle.catalog), max_distance=0.05, progress=False)
    proposed = {tuple(pair) for pair in pairs.tolist()}
    twins = sorted((row[str(twin)], row[str(twin.with_name("rotated-again.jpg"))]))
    family = {row[str(source)], row[str(half)]}
    assert tuple(twins) in proposed
    across = [distance for pair, distance in zip(pairs.tolist(), distances) if set(pair) & set(twins) and set(pair) &
              family]
    assert across and min(across) > 0.05  # proposed though far apart, as each twin's nearest but its twin
