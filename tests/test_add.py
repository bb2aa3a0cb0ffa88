"""Incremental add on a real fit: new images are found at once, old ones keep their results."""

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, copy_subset, tiny_config
from pipeline.add import add_images
from pipeline.artifacts import current_fit, load_catalog, read_manifest
from pipeline.errors import InputError
from pipeline.search import Searcher


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
    assert len(load_catalog(current_fit(artifacts))) == 16
    before_fit = current_fit(artifacts)
    before = Searcher(artifacts)
    old_query = sorted((old / "hat").glob("*.jpg"))[2]
    old_result = before.search_file(old_query, n=3)

    summary = add_images(new, artifacts)
    assert summary.added == 10 and summary.already_indexed == 0 and summary.images == 26
    assert [s.path.rsplit("/", 1)[1] for s in summary.skipped] == ["broken.jpg"]
    assert current_fit(artifacts) != before_fit and not before_fit.exists()

    after = Searcher(artifacts)
    assert after.catalog.paths[:16] == before.catalog.paths  # old ids unchanged
    for query in sorted((new / "pants").glob("*.jpg"))[:2] + sorted((new / "shoes").glob("*.jpg"))[:2]:
        first = after.search_file(query, n=1, nprobe="all").results[0]
        assert first.path == str(query) and first.same_image and first.distance < 1e-5
    again = after.search_file(old_query, n=3)
    assert again.results[0].path == old_result.results[0].path == str(old_query)
    manifest = read_manifest(current_fit(artifacts))
    assert manifest["images"] == 26 and manifest["additions"][-1]["added"] == 10
    assert manifest["additions"][-1]["skipped"] == [{"path": str(new / "shoes" / "broken.jpg"),
                                                     "reason": "not a decodable image"}]


def added_once(base):
    """The fixture's bundle after the new folder was added once, whichever test runs first."""
    _, new, artifacts = base
    if len(load_catalog(current_fit(artifacts))) == 16:
        add_images(new, artifacts)
    return new, artifacts


def test_adding_the_same_folder_again_changes_nothing(base):
    new, artifacts = added_once(base)
    before = current_fit(artifacts)
    summary = add_images(new, artifacts)
    assert summary.added == 0 and summary.already_indexed == 10
    assert current_fit(artifacts) == before and len(load_catalog(before)) == 26


def test_add_script_and_its_errors(base, tmp_path):
    new, artifacts = added_once(base)
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(new), "--artifacts", str(artifacts)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("added 0 images (10 already indexed, 1 skipped)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        add_images(tmp_path / "empty", artifacts)
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(new), "--artifacts",
                              str(tmp_path / "none")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 2 and "no fitted artifacts" in process.stderr.strip().splitlines()[-1]
