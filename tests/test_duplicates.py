"""Near-duplicates on a real fit of real photos mixed with near-copies made from some of them."""

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from conftest import ROOT, copy_subset, tiny_config
from helpers import NEAR_COPIES, save_near_copy
from pipeline.artifacts import Bundle
from pipeline.duplicates import find_duplicates
from pipeline.search import Searcher
from pipeline.server import create_app


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory):
    """16 photos (4 classes); 3 of them with a near-copy of each kind in the same class folder."""
    from pipeline.fit import fit

    root = tmp_path_factory.mktemp("duplicates")
    photos = copy_subset(root / "photos", per_class=4)
    originals = [sorted((photos / name).glob("*.jpg"))[1] for name in ("dress", "hat", "shoes")]
    copies = {original: [save_near_copy(original, kind, original.with_name(f"{original.stem}-{kind}.jpg"))
                         for kind in NEAR_COPIES] for original in originals}
    artifacts = root / "artifacts"
    fit(photos, artifacts, tiny_config(image_size=224))
    return artifacts, copies


def test_every_near_copy_is_grouped_with_its_original_and_nothing_else(with_copies):
    artifacts, copies = with_copies
    bundle = Bundle.load(artifacts)
    groups = [{bundle.catalog.paths[i] for i in group.ids} for group in find_duplicates(bundle)]
    for original, made in copies.items():
        expected = {str(original), *map(str, made)}
        assert expected in groups, f"{original.name}: {[g for g in groups if str(original) in g]}"
    assert len(groups) == len(copies)  # the other photos, all distinct, are in no group


def test_a_tighter_threshold_links_less(with_copies):
    bundle = Bundle.load(with_copies[0])
    assert sum(len(g.ids) for g in find_duplicates(bundle, 0.001)) < sum(len(g.ids) for g in find_duplicates(bundle))
    assert find_duplicates(bundle, 0.0) == []


def test_the_command_prints_json_and_writes_a_page(with_copies, tmp_path):
    artifacts, copies = with_copies
    page = tmp_path / "groups.html"
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "duplicates.py"), "--artifacts", str(artifacts),
                              "--json", "--html", str(page)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    body = json.loads(process.stdout)
    assert body["linkage"] == "connected components" and len(body["groups"]) == 3
    assert all(len(group["paths"]) == 1 + len(NEAR_COPIES) for group in body["groups"])
    assert page.read_text().count("<section>") == 3 and page.read_text().count("<img") == 3 * 7


def test_the_api_lists_the_groups(with_copies):
    client = TestClient(create_app(Searcher(Bundle.load(with_copies[0]))))
    body = client.get("/api/duplicates").json()
    assert len(body["groups"]) == 3 and body["threshold"] > 0
    assert client.get("/api/duplicates", params={"threshold": "0"}).json()["groups"] == []
    assert client.get("/api/duplicates", params={"threshold": "nan"}).status_code == 422
