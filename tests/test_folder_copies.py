"""Copies in a folder with no fit (imgsim duplicates DIR): found, verified and kept as with a fit; nothing written but
the cache; a second run from the cache loads no model."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, copy_subset, save_near_copy
from pipeline.collection.folder_copies import default_cache, find_in_folder
from pipeline.errors import ArtifactError, InputError


@pytest.fixture
def folder(tmp_path):
    """16 photos of the sample, three copies of one (rotated 30 degrees, letterboxed, a 256-colour GIF) and a broken
    file."""
    photos = copy_subset(tmp_path / "photos", per_class=4)
    source = sorted((photos / "hat").glob("*.jpg"))[1]
    save_near_copy(source, "rotate", photos / "hat" / "rotated.jpg", seed=25)
    save_near_copy(source, "letterbox", photos / "shoes" / "letterboxed.jpg")
    Image.open(source).convert("P", palette=Image.Palette.ADAPTIVE).save(photos / "hat" / "as.gif")
    (photos / "broken.jpg").write_bytes(b"not an image")
    return photos, source


def test_a_folder_with_no_fit_groups_its_copies_and_writes_nothing_but_the_cache(folder, tmp_path, monkeypatch):
    photos, source = folder
    before = sorted(path for path in tmp_path.rglob("*"))
    found = find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)
    assert [sorted(member.path for member in group.members) for group in found.groups] == [sorted(
        [str(source), str(photos / "hat" / "rotated.jpg"), str(photos / "hat" / "as.gif"),
         str(photos / "shoes" / "letterboxed.jpg")])]
    assert found.groups[0].keeper.path == str(source) and found.images == 19
    assert found.unreadable == [str(photos / "broken.jpg")]
    written = sorted(set(tmp_path.rglob("*")) - set(before))
    assert written and all((tmp_path / "cache") in [path, *path.parents] for path in written)

    import pipeline.collection.duplicates as duplicates
    import pipeline.collection.folder_copies as folder_copies

    def no_model(*_):
        raise AssertionError("the backbone was loaded though every descriptor is cached")

    monkeypatch.setattr(folder_copies, "_embed", no_model)
    monkeypatch.setattr(duplicates, "shared_feature_pairs", no_model)  # the same files: their words' pairs are kept
    again = find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)
    assert again.to_dict() == found.to_dict()


def test_the_backbone_is_converted_for_litert_once_and_kept_in_the_cache(folder, tmp_path, monkeypatch):
    import re

    import pipeline.train.export

    photos, _ = folder
    first = find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("backbone-efficientnet-lite0-224-*.tflite"))) == 1

    def no_conversion(*_):
        raise AssertionError("the backbone was converted again")

    monkeypatch.setattr(pipeline.train.export, "exported_model", no_conversion)
    shutil.rmtree(next((tmp_path / "cache").glob("descriptors-*")))  # every image described again, by the kept export
    assert find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False).to_dict() == first.to_dict()
    export = next((tmp_path / "cache").glob("backbone-*.tflite"))
    export.write_bytes(b"not a flatbuffer")
    shutil.rmtree(next((tmp_path / "cache").glob("descriptors-*")))
    message = f"{export} (delete it: the next run converts it again): not a LiteRT model"
    with pytest.raises(ArtifactError, match=re.escape(message)):
        find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)


def test_a_file_changed_since_the_last_run_is_read_again(folder, tmp_path):
    """Hashes are kept by each file's size and time: a file rewritten since is hashed, described and verified anew."""
    photos, source = folder
    find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)
    assert str(photos / "hat" / "rotated.jpg") in json.loads((tmp_path / "cache" / "hashes.json").read_text())
    shoe = sorted((photos / "shoes").glob("*.jpg"))[0]
    shutil.copy(shoe, photos / "hat" / "rotated.jpg")  # now a twin of a shoe
    again = find_in_folder(photos, cache_folder=tmp_path / "cache", progress=False)
    groups = sorted(sorted(member.path for member in group.members) for group in again.groups)
    assert sorted([str(photos / "hat" / "rotated.jpg"), str(shoe)]) in groups
    assert all(str(photos / "hat" / "rotated.jpg") not in group or str(source) not in group for group in groups)


def test_the_command_takes_a_folder_and_moves_its_copies_out(folder, tmp_path):
    photos, source = folder
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    command = [sys.executable, str(ROOT / "scripts" / "duplicates.py"), str(photos), "--json"]
    listed = subprocess.run(command + ["--move-to", str(tmp_path / "moved")], capture_output=True, text=True,
                            cwd=tmp_path, env=environment, timeout=300)
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert len(body["groups"]) == 1 and body["groups"][0]["images"][0]["path"] == str(source)
    assert "moved 3 files into" in listed.stderr and source.exists()
    assert sorted(path.name for path in (tmp_path / "moved").rglob("*.*")) == ["as.gif", "letterboxed.jpg",
                                                                                "rotated.jpg"]
    assert (tmp_path / "xdg" / "imgsim" / "duplicates" / "verdicts.json").is_file()
    assert not (tmp_path / "artifacts").exists()  # nothing else written
    empty = subprocess.run([sys.executable, str(ROOT / "scripts" / "duplicates.py"), str(tmp_path / "moved" / "x")],
                           capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=60)
    assert empty.returncode != 0 and empty.stderr.strip() == f"error: {tmp_path / 'moved' / 'x'}: not a folder"


def test_a_folder_is_scored_against_a_ground_truth_and_listed_once(folder, tmp_path, monkeypatch, capsys):
    import pipeline.collection.folder_copies as folder_copies
    import pipeline.data.images as images
    from pipeline.cli import build_parser

    photos, source = folder
    copies = (photos / "hat" / "rotated.jpg", photos / "hat" / "as.gif", photos / "shoes" / "letterboxed.jpg")
    family = [os.path.relpath(path, photos) for path in (source, *copies)]
    (tmp_path / "truth.json").write_text(json.dumps({name: [other for other in family if other != name]
                                                     for name in family}))
    listings, find_images = [], images.find_images

    def counted(*args, **kwargs):
        listings.append(args)
        return find_images(*args, **kwargs)

    monkeypatch.setattr(folder_copies, "find_images", counted)
    args = build_parser().parse_args(["duplicates", str(photos), "--cache", str(tmp_path / "cache"), "--json",
                                      "--ground-truth", str(tmp_path / "truth.json")])
    with monkeypatch.context() as patched:
        patched.setattr(images, "find_images", counted)
        assert args.command(args) == 0
    scored = json.loads(capsys.readouterr().out)["ground_truth"]
    assert (scored["true_pairs"], scored["found_pairs"], scored["correct"]) == (6, 6, 6) and len(listings) == 1


def test_the_cache_of_a_fit_is_not_named_with_cache(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--cache", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode != 0 and run.stderr.strip() == (
        "error: --cache is for a folder (imgsim duplicates DIR); a fit's cache is in its artifacts folder")


def test_the_default_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache() == tmp_path / "imgsim" / "duplicates"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(default_cache()).endswith(os.path.join(".cache", "imgsim", "duplicates"))
    with pytest.raises(InputError, match="no image files found"):
        find_in_folder(tmp_path, cache_folder=tmp_path / "cache", progress=False)
