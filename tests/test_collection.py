"""A collection kept in step with its photos on real fits: add, sync (new, changed, deleted files), remove."""

import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from helpers import ROOT, SAMPLE, copy_subset, tiny_config
from pipeline.bundle.artifacts import Bundle
from pipeline.bundle.catalog import Catalog
from pipeline.bundle.layout import current_folder
from pipeline.bundle.writer import ArtifactWriter
from pipeline.collection.changes import add_images, sync
from pipeline.data.images import find_images
from pipeline.errors import InputError
from pipeline.model.embed import embed_files
from pipeline.search.searcher import Searcher, SearchOptions


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A fit of dresses and hats, and a folder of pants and shoes to add."""
    from pipeline.fit import fit

    root = tmp_path_factory.mktemp("add")
    old = copy_subset(root / "old", classes=("dress", "hat"), per_class=8)
    new = copy_subset(root / "new", classes=("pants", "shoes"), per_class=5)
    (new / "shoes" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    artifacts = root / "artifacts"
    fit(old, artifacts, tiny_config())
    return old, new, artifacts


def test_added_images_are_found_and_old_results_are_kept(base, tmp_path):
    old, new, fitted = base
    artifacts = tmp_path / "artifacts"
    shutil.copytree(fitted, artifacts)  # its own copy: the other tests add to the shared one
    before = Searcher(Bundle.load(artifacts))
    before_fit = before.bundle.folder
    assert len(before.catalog) == 16
    old_query = sorted((old / "hat").glob("*.jpg"))[2]
    old_result = before.search_file(old_query, SearchOptions(n=3))

    summary = add_images(new, artifacts)
    assert summary.added == 10 and summary.unchanged == 0 and summary.changed == summary.removed == 0
    assert summary.images == 26
    assert [s.path.rsplit("/", 1)[1] for s in summary.skipped] == ["broken.jpg"]
    assert current_folder(artifacts) != before_fit and before_fit.exists()  # kept: imgsim restore brings it back

    after = Searcher(Bundle.load(artifacts))
    assert after.catalog.paths[:16] == before.catalog.paths  # old ids unchanged
    for query in sorted((new / "pants").glob("*.jpg"))[:2] + sorted((new / "shoes").glob("*.jpg"))[:2]:
        first = after.search_file(query, SearchOptions(n=1, nprobe="all")).results[0]
        assert first.path == str(query) and first.same_image and first.distance < 1e-5
    again = after.search_file(old_query, SearchOptions(n=3))
    assert again.results[0].path == old_result.results[0].path == str(old_query)
    manifest = after.bundle.manifest
    assert manifest.images == 26 and manifest.changes[-1]["action"] == "add" and manifest.changes[-1]["added"] == 10
    assert manifest.changes[-1]["skipped"] == [{"path": str(new / "shoes" / "broken.jpg"),
                                                "reason": "not a decodable image"}]
    assert after.index.nprobe_ == summary.nprobe and manifest.recall_at_10[summary.nprobe] >= 0.95


def added_once(base):
    """The fixture's bundle after the new folder was added once, whichever test runs first."""
    _, new, artifacts = base
    if len(Bundle.load(artifacts).catalog) == 16:
        add_images(new, artifacts)
    return new, artifacts


def test_adding_the_same_folder_again_changes_nothing(base):
    new, artifacts = added_once(base)
    before = current_folder(artifacts)
    summary = add_images(new, artifacts)
    assert summary.added == 0 and summary.unchanged == 10
    assert current_folder(artifacts) == before and len(Bundle.load(artifacts).catalog) == 26


def test_add_script_and_its_errors(base, tmp_path):
    new, artifacts = added_once(base)
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(new), "--artifacts", str(artifacts)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("add: 0 added, 0 changed, 0 removed, 10 unchanged, 0 skipped")
    assert "1 file unreadable when last read and unchanged since, not read again" in process.stdout
    assert process.stderr == ""  # said once, on stdout
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        add_images(tmp_path / "empty", artifacts)
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(new), "--artifacts",
                              str(tmp_path / "none")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 2 and "no fitted artifacts" in process.stderr.strip().splitlines()[-1]


@pytest.fixture
def collection(tmp_path):
    """A fresh fit of 18 photos (3 classes) in its own folder, and 3 more photos to drop in later."""
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("dress", "hat", "pants"), per_class=6)
    spare = sorted((SAMPLE / "shoes").glob("*.jpg"))[:3]
    artifacts = tmp_path / "artifacts"
    fit(photos, artifacts, tiny_config())
    return photos, spare, artifacts


def fresh_vectors(folder, bundle):
    """Every image of ``folder`` embedded from scratch with the bundle's encoder: {path: (label, hash, vector)}."""
    embedded = embed_files(find_images(folder), bundle.encoder(), bundle.settings)
    return {r.path: (r.label, digest, vector) for r, digest, vector in zip(embedded.records, embedded.hashes,
                                                                          embedded.vectors)}


def test_sync_matches_a_fresh_index_after_new_changed_and_deleted_files(collection):
    photos, spare, artifacts = collection
    before = Bundle.load(artifacts)
    deleted = sorted((photos / "hat").glob("*.jpg"))[1]
    deleted_bytes = deleted.read_bytes()
    deleted.unlink()
    changed = sorted((photos / "dress").glob("*.jpg"))[0]
    changed.write_bytes(spare[2].read_bytes())  # the same path, a shoe now
    (photos / "shoes").mkdir()
    for path in spare[:2]:
        shutil.copy2(path, photos / "shoes" / path.name)
    (photos / "shoes" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    change = sync(artifacts)
    assert (change.added, change.changed, change.removed, change.unchanged) == (2, 1, 1, 16)
    assert [s.path for s in change.skipped] == [str(photos / "shoes" / "broken.jpg")]
    after = Bundle.load(artifacts)
    assert after.folder != before.folder and after.manifest.changes[-1]["action"] == "sync"
    assert after.manifest.changes[-1]["added"] == 2 and len(after.catalog) == 19

    fresh = fresh_vectors(photos, after)  # what a fit's index with the same encoder would hold
    synced = dict(zip(after.catalog.paths, zip(after.catalog.labels, after.catalog.hashes, after.embeddings)))
    assert set(synced) == set(fresh) and str(deleted) not in synced
    for path, (label, digest, vector) in fresh.items():
        assert synced[path][:2] == (label, digest)
        np.testing.assert_allclose(synced[path][2], vector, atol=1e-4)
    assert after.catalog.labels[after.catalog.paths.index(str(changed))] == "dress"  # its folder, new content
    searcher = Searcher(after)
    for query in [changed, photos / "shoes" / spare[0].name, sorted((photos / "pants").glob("*.jpg"))[3]]:
        result = searcher.search_file(query, SearchOptions(n=6, nprobe="all"))
        assert result.results[0].path == str(query) and result.results[0].same_image
        paths = [hit.path for hit in result.results]
        vectors = np.array([v for _, _, v in fresh.values()])
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        q = fresh[str(query)][2] / np.linalg.norm(fresh[str(query)][2])
        by_exact = [list(fresh)[i] for i in np.argsort(-(unit @ q), kind="stable")]
        assert set(paths[:2]) <= set(by_exact[:4])  # the nearest agree with a brute force over fresh vectors
    gone = searcher.search_bytes(deleted_bytes, "the deleted photo", SearchOptions(n=19, nprobe="all"))
    assert str(deleted) not in [hit.path for hit in gone.results] and not any(h.same_image for h in gone.results)

    again = sync(artifacts)  # nothing changed since
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, 19)
    assert current_folder(artifacts) == after.folder


def test_sync_refuses_when_the_fitted_folder_or_an_added_one_is_gone(collection, tmp_path):
    photos, spare, artifacts = collection
    added = tmp_path / "added" / "shoes"
    added.mkdir(parents=True)
    shutil.copy2(spare[0], added / spare[0].name)
    add_images(added.parent, artifacts)
    before = current_folder(artifacts)
    added.parent.rename(tmp_path / "added-away")
    with pytest.raises(InputError, match=f"{added.parent}: a folder added to this collection is gone; nothing changed"):
        sync(artifacts)
    (tmp_path / "added-away").rename(added.parent)
    photos.rename(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=f"{photos}: the folder this collection was fitted on is gone; nothing changed"):
        sync(artifacts)
    assert current_folder(artifacts) == before


def test_a_sync_against_an_emptied_or_unmounted_folder_changes_nothing(collection, tmp_path):
    """mv data data.away && mkdir data; imgsim sync: refused, nothing changed; the same through a link to an empty
    folder (a disk's mount point with nothing mounted); once the photos are back, nothing to do."""
    photos, _, artifacts = collection
    before = current_folder(artifacts)
    away = tmp_path / "away"
    photos.rename(away)
    photos.mkdir()
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync.py"), "--artifacts", str(artifacts)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert process.returncode == 2 and process.stderr.splitlines() == [
        f"error: {photos}: holds no image file now, while 18 indexed images came from it; nothing changed (is its "
        f"disk mounted? if you emptied it, sync with --allow-mass-removal)"]
    photos.rmdir()
    (tmp_path / "mount-point").mkdir()
    photos.symlink_to(tmp_path / "mount-point")
    with pytest.raises(InputError, match="holds no image file now"):
        sync(artifacts)
    assert current_folder(artifacts) == before and len(Bundle.load(artifacts).catalog) == 18
    photos.unlink()
    away.rename(photos)
    again = sync(artifacts)
    assert (again.added, again.removed, again.unchanged) == (0, 0, 18) and current_folder(artifacts) == before


def test_a_sync_that_would_drop_a_fifth_of_the_index_must_be_told_and_can_be_undone(collection):
    photos, _, artifacts = collection
    before = current_folder(artifacts)
    for path in sorted((photos / "hat").glob("*.jpg"))[:4]:  # 4 of 18: 22%
        path.unlink()
    with pytest.raises(InputError, match=r"this sync would drop 4 of the 18 indexed images \(4 gone; more than 20%\); "
                                         r"nothing changed \(if they are meant to go, sync with --allow-mass-removal\)"):
        sync(artifacts)
    assert current_folder(artifacts) == before
    searcher = Searcher(Bundle.load(artifacts))

    def imgsim(*args):
        process = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--artifacts", str(artifacts)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert process.returncode == 0, process.stderr
        return process.stdout

    assert imgsim("sync", "--allow-mass-removal").startswith("sync: 0 added, 0 changed, 4 removed")
    assert searcher.refresh() and len(searcher.catalog) == 14
    listed = imgsim("restore", "--list").splitlines()
    assert [line.split()[0] for line in listed] == [before.name, current_folder(artifacts).name]
    assert "18 images" in listed[0] and listed[1].endswith("(current)")
    assert imgsim("restore").strip() == f"restored: {before}"  # the previous bundle, as it was
    assert current_folder(artifacts) == before and searcher.refresh() and len(searcher.catalog) == 18


def test_a_folder_that_cannot_be_read_stops_a_sync(collection, monkeypatch):
    import os

    photos, _, artifacts = collection
    before = current_folder(artifacts)
    scandir = os.scandir

    def refusing(path="."):
        if str(path).endswith("hat"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # as a folder of another user would (the tests run as root)
    with pytest.raises(InputError, match=r"hat: cannot read this folder \(Permission denied\); nothing was done"):
        sync(artifacts)
    assert current_folder(artifacts) == before


def test_a_file_that_cannot_be_read_is_not_read_again_until_it_changes(collection, monkeypatch):
    from pipeline.engines.engine import LocalEngine

    photos, spare, artifacts = collection
    broken = photos / "hat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    first = sync(artifacts)
    assert [(s.path, s.reason) for s in first.skipped] == [(str(broken), "not a decodable image")]
    remembered = current_folder(artifacts)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was asked to embed")

    monkeypatch.setattr(LocalEngine, "embed", no_model)
    again = sync(artifacts)  # a no-op sync: the broken file is not decoded again, nothing is written
    assert again.skipped == [] and again.known_unreadable == 1  # counted, not listed again
    assert current_folder(artifacts) == remembered and again.added == 0
    monkeypatch.undo()
    broken.write_bytes(spare[0].read_bytes())  # the file changed: read again, a photo now
    assert sync(artifacts).added == 1


def test_a_sync_killed_at_any_point_leaves_the_previous_bundle(collection, monkeypatch):
    photos, spare, artifacts = collection
    before = Bundle.load(artifacts)
    expected = Searcher(before).search_indexed(3, SearchOptions(n=5))
    for path in spare:
        shutil.copy2(path, photos / "hat" / path.name)

    def fail_at_commit(self, *version):
        raise KeyboardInterrupt  # the last moment before CURRENT moves
    monkeypatch.setattr(ArtifactWriter, "commit", fail_at_commit)
    with pytest.raises(KeyboardInterrupt):
        sync(artifacts)
    monkeypatch.undo()
    assert current_folder(artifacts) == before.folder and not list(artifacts.glob(".staging-*"))

    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync.py"), "--artifacts", str(artifacts)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not list(artifacts.glob(".staging-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, "the sync should still be running"
        process.send_signal(signal.SIGKILL)  # mid-way: the staging folder exists, CURRENT has not moved
        process.wait(timeout=30)
    finally:
        process.kill()
    assert current_folder(artifacts) == before.folder
    assert Searcher(Bundle.load(artifacts)).search_indexed(3, SearchOptions(n=5)) == expected
    assert sync(artifacts).added == 3  # and the next sync does the work


def test_removed_images_never_come_back_until_their_content_changes(collection):
    photos, _, artifacts = collection
    bundle = Bundle.load(artifacts)
    by_path, by_id = sorted((photos / "pants").glob("*.jpg"))[0], bundle.catalog.paths.index(
        str(sorted((photos / "hat").glob("*.jpg"))[2]))
    by_id_path = bundle.catalog.paths[by_id]
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "remove.py"), str(by_path), str(by_id),
                              "--artifacts", str(artifacts)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("remove: 0 added, 0 changed, 2 removed")
    after = Bundle.load(artifacts)
    assert len(after.catalog) == 16 and {str(by_path), by_id_path}.isdisjoint(after.catalog.paths)
    assert after.index.size == 16 and after.manifest.changes[-1]["action"] == "remove"
    searcher = Searcher(after)
    result = searcher.search_file(by_path, SearchOptions(n=16, nprobe="all"))
    assert str(by_path) not in [hit.path for hit in result.results]

    assert sync(artifacts).added == 0  # still on disk, still removed
    assert str(by_path) not in Bundle.load(artifacts).catalog.paths
    by_path.write_bytes(sorted((SAMPLE / "pants").glob("*.jpg"))[-1].read_bytes())  # new content: a new photo
    assert sync(artifacts).added == 1 and str(by_path) in Bundle.load(artifacts).catalog.paths

    for bad in (["nowhere.jpg"], ["999"]):
        process = subprocess.run([sys.executable, str(ROOT / "scripts" / "remove.py"), *bad, "--artifacts",
                                  str(artifacts)], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert process.returncode == 2
        assert process.stderr.strip().splitlines() == [
            f"error: {bad[0]}: no indexed image has this path or id; nothing removed"]


def test_sync_reads_only_files_whose_size_or_time_changed(collection, monkeypatch):
    import os

    import pipeline.collection.changes as collection_module

    photos, _, artifacts = collection
    read = []
    original = collection_module.read_file
    monkeypatch.setattr(collection_module, "read_file", lambda path, *a: read.append(path) or original(path, *a))
    assert sync(artifacts).unchanged == 18 and read == []  # nothing was opened
    touched = sorted((photos / "hat").glob("*.jpg"))[0]
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # a newer time, the same bytes
    change = sync(artifacts)
    assert read == [str(touched)] and change.unchanged == 18 and change.added == change.changed == 0


def test_a_sync_or_removal_with_nothing_to_embed_loads_no_model(collection):
    photos, _, artifacts = collection
    doomed = sorted((photos / "hat").glob("*.jpg"))[0]
    doomed.unlink()
    program = ("import sys; from pipeline.collection.changes import remove_images, sync; "
               f"print(sync({str(artifacts)!r}).removed, "
               f"remove_images([{str(sorted((photos / 'pants').glob('*.jpg'))[0])!r}], {str(artifacts)!r}).removed, "
               "'tensorflow' in sys.modules, 'ai_edge_litert' in sys.modules)")
    process = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["1", "1", "False", "False"]  # a deletion synced, an image removed, no model
    assert len(Bundle.load(artifacts).catalog) == 16


def test_photos_turned_undecodable_count_against_the_mass_removal_share(collection):
    """Junked or emptied photos are dropped by a sync only within the share, like deleted ones (issue 29, 1)."""
    photos, _, artifacts = collection
    before = current_folder(artifacts)
    junked = sorted(photos.rglob("*.jpg"))[:5]
    for number, path in enumerate(junked):
        path.write_bytes(b"" if number < 2 else np.random.default_rng(number).bytes(5000))
    message = (r"this {0} would drop 5 of the 18 indexed images \(5 no longer readable as images; more than 20%\); "
               r"nothing changed \(if they are meant to go, {0} with --allow-mass-removal\)")
    with pytest.raises(InputError, match=message.format("sync")):
        sync(artifacts)
    with pytest.raises(InputError, match=message.format("add")):  # the fitted folder added again: the same guard
        add_images(photos, artifacts)
    assert current_folder(artifacts) == before
    one_more = sorted(photos.rglob("*.jpg"))[-1]
    one_more.unlink()
    with pytest.raises(InputError, match=r"drop 6 of the 18 indexed images \(1 gone and 5 no longer readable"):
        sync(artifacts)
    change = sync(artifacts, allow_mass_removal=True)
    assert (change.removed, change.images) == (6, 12) and len(change.skipped) == 5


def test_ids_are_never_reused_after_a_restore_or_a_new_fit(collection, tmp_path):
    from pipeline.bundle.artifacts import restore
    from pipeline.collection.changes import remove_images
    from pipeline.fit import fit

    photos, spare, artifacts = collection
    first, second = tmp_path / "shirts" / "shoes", tmp_path / "skirts" / "shoes"
    for folder, sources in ((first, spare), (second, sorted((SAMPLE / "shoes").glob("*.jpg"))[3:6])):
        folder.mkdir(parents=True)
        for source in sources:
            shutil.copy2(source, folder / source.name)
    add_images(first.parent, artifacts)
    added = Bundle.load(artifacts).catalog
    assert added.ids[-3:] == [18, 19, 20]
    restore(artifacts)
    assert Bundle.load(artifacts).catalog.ids == list(range(18))
    add_images(second.parent, artifacts)
    catalog = Bundle.load(artifacts).catalog
    assert catalog.ids[-3:] == [21, 22, 23]  # not 18-20: a client holding 18 means a shirt, never a skirt
    assert catalog.paths[-3:] == [str(second / source.name) for source in sorted((SAMPLE / "shoes").glob("*.jpg"))[3:6]]
    with pytest.raises(InputError, match="18: no indexed image has this path or id"):
        remove_images(["18"], artifacts)
    fit(photos, artifacts, tiny_config())  # a new fit into the same folder starts above them too
    assert Bundle.load(artifacts).catalog.ids == list(range(24, 42))


def test_a_change_that_changes_nothing_writes_no_bundle(collection, tmp_path):
    from pipeline.bundle.layout import bundles

    photos, spare, artifacts = collection
    extra = tmp_path / "extra" / "shoes"
    extra.mkdir(parents=True)
    shutil.copy2(spare[0], extra / spare[0].name)
    (extra / "broken.jpg").write_bytes(b"not an image")
    (photos / "hat" / "broken.jpg").write_bytes(b"not an image either")
    add_images(extra.parent, artifacts)
    sync(artifacts)
    kept = bundles(artifacts)
    assert add_images(extra.parent, artifacts).artifacts == kept[-1]  # an add of an indexed folder
    assert add_images(photos, artifacts).artifacts == kept[-1]
    assert sync(artifacts).artifacts == kept[-1]
    shutil.move(photos / "pants", tmp_path / "pants-away")  # a folder moved away and back between two syncs
    shutil.move(tmp_path / "pants-away", photos / "pants")
    assert sync(artifacts).artifacts == kept[-1]
    assert bundles(artifacts) == kept


def test_restore_points_outlive_small_changes(collection, tmp_path):
    """Two bundles kept, yet the one before a large drop can be restored after several small changes."""
    from pipeline.bundle.artifacts import restore
    from pipeline.bundle.layout import bundles
    from pipeline.collection.changes import remove_images

    photos, spare, artifacts = collection
    fitted = current_folder(artifacts)
    for path in sorted((photos / "hat").glob("*.jpg")):
        path.unlink()
    assert sync(artifacts, allow_mass_removal=True).removed == 6
    for number, source in enumerate(spare):  # three small adds
        folder = tmp_path / f"more{number}" / "shoes"
        folder.mkdir(parents=True)
        shutil.copy2(source, folder / source.name)
        add_images(folder.parent, artifacts)
    for image_id in ("0", "1"):  # two small removals
        remove_images([image_id], artifacts)
    assert fitted in bundles(artifacts) and len(bundles(artifacts)) <= 2 + 2 + 1
    assert restore(artifacts, fitted.name) == fitted
    assert len(Bundle.load(artifacts).catalog) == 18


def test_what_a_change_did_is_said_once_and_the_skipped_files_are_counted_everywhere(collection, tmp_path):
    """Issue 31, 7 and 11: one summary line; each skipped file once, and not again while it stays as it was; a removal
    names what it removed; an add that brings back a photo removed by hand says so; stats and the report count the
    files an add skipped."""
    from pipeline.search.searcher import Searcher
    from pipeline.serve.service import SearchService

    photos, spare, artifacts = collection
    extra = tmp_path / "extra" / "shoes"
    extra.mkdir(parents=True)
    shutil.copy2(spare[0], extra / spare[0].name)
    for name in ("broken-1.jpg", "broken-2.jpg"):
        (extra / name).write_bytes(b"\xff\xd8 not a jpeg")

    def imgsim(*args):
        process = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--artifacts", str(artifacts)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert process.returncode == 0, process.stderr
        return process.stdout + process.stderr

    said = imgsim("add", str(extra.parent))
    assert said.count("add: ") == 1 and said.count(str(extra / "broken-1.jpg")) == 1
    no_pass = mock.patch.object(Catalog, "indexed_paths", side_effect=AssertionError("a pass over every indexed path"))
    with no_pass:
        service = SearchService(Searcher(Bundle.load(artifacts)))  # loading for queries counts nothing
    assert service.stats()["skipped"] == 2
    with no_pass:
        assert service.stats()["skipped"] == 2  # counted once a bundle, not at every request
    said = imgsim("sync")
    assert "broken-1.jpg" not in said and "2 files unreadable when last read and unchanged since" in said

    hat = sorted((photos / "hat").glob("*.jpg"))[0]
    hat_id = Bundle.load(artifacts).catalog.ids[Bundle.load(artifacts).catalog.paths.index(str(hat))]
    said = imgsim("remove", str(hat))
    assert said.splitlines()[0].startswith("remove: 0 added, 0 changed, 1 removed in ") and "unchanged" not in said
    assert f"removed {hat_id}: {hat}" in said
    assert "re-added" not in imgsim("sync")  # a sync keeps it out
    said = imgsim("add", str(photos))
    assert f"re-added {hat}: it had been removed by hand, and this add named its folder" in said


def test_a_fit_of_some_extensions_keeps_to_them_in_every_add_and_sync(tmp_path):
    from PIL import Image

    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("dress", "hat"), per_class=6)
    for path in sorted(photos.rglob("*.jpg"))[::2]:
        Image.open(path).save(path.with_suffix(".png"))  # beside its JPEG: only the PNGs are asked for
    artifacts = tmp_path / "artifacts"
    fit(photos, artifacts, tiny_config(extensions=(".png",)))
    indexed = Bundle.load(artifacts).catalog.paths
    assert len(indexed) == 6 and all(path.endswith(".png") for path in indexed)
    more = copy_subset(tmp_path / "more", classes=("pants",), per_class=2)
    Image.open(next(more.rglob("*.jpg"))).save(more / "pants" / "new.png")
    assert add_images(more, artifacts).added == 1  # the PNG, not the two JPEGs
    Image.open(next(photos.rglob("*.jpg"))).rotate(90).save(photos / "hat" / "turned.png")
    shutil.copy(next(photos.rglob("*.jpg")), photos / "hat" / "another.jpg")
    changed = sync(artifacts)
    assert (changed.added, changed.removed) == (1, 0)
    assert all(path.endswith(".png") for path in Bundle.load(artifacts).catalog.paths)
