"""Retrieval metrics on hand-computed cases, and evaluate.py end to end on a real fit."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, SHARED, copy_subset
from pipeline.bundle.artifacts import Bundle
from pipeline.evaluate import evaluate, reference_baselines
from pipeline.index.metrics import exact_neighbours, map_at_k, precision_at_k


def test_precision_at_k_by_hand():
    queries = np.array(["a", "b"])
    neighbours = np.array([["a", "b", "a"], ["a", "a", "a"]])
    assert precision_at_k(neighbours, queries) == pytest.approx(2 / 6)


def test_map_at_k_by_hand():
    queries = np.array(["a", "b", "c"])
    neighbours = np.array([
        ["a", "x", "a"],  # hits at ranks 1 and 3: (1/1 + 2/3) / min(3, R=2) = 0.8333
        ["x", "b", "x"],  # hit at rank 2: (1/2) / min(3, R=4) = 0.1667
        ["x", "x", "x"],  # no hit: 0
    ])
    relevant = np.array([2, 4, 1])
    assert map_at_k(neighbours, queries, relevant) == pytest.approx((5 / 6 + 1 / 6 + 0) / 3)


def test_perfect_ranking_has_map_one():
    queries = np.array(["a", "b"])
    neighbours = np.array([["a", "a"], ["b", "x"]])
    assert map_at_k(neighbours, queries, np.array([5, 1])) == pytest.approx(1.0)


def test_exact_neighbours_leave_the_query_out():
    features = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    assert exact_neighbours(features, 1).ravel().tolist() == [1, 0, 3, 2]


def test_exact_neighbours_in_euclidean_and_in_blocks():
    features = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    distances = np.linalg.norm(features[:, None] - features[None], axis=2) + np.diag([np.inf] * 50)
    expected = np.argsort(distances, axis=1)[:, :4]
    assert np.array_equal(exact_neighbours(features, 4, "euclidean", block=7), expected)


@pytest.mark.skipif(not (SHARED / "tools" / "baseline.py").is_file(),
                    reason="the team's reference tool is not beside this clone (../shared/tools/baseline.py)")
def test_reference_baselines_equal_the_reference_tool(tmp_path):
    tool = SHARED / "tools" / "baseline.py"
    data = copy_subset(tmp_path / "data", classes=("dress", "hat", "pants", "shoes", "skirt"), per_class=20)
    process = subprocess.run([sys.executable, str(tool), str(data)], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    reference = [float(value) for value in re.findall(r"P@10=([0-9.]+)(?: cos=([0-9.]+))?", process.stdout)[0] if value]
    reference += [float(value) for value in re.findall(r"(?:whiten cos|HSV hist 512 cos) P@10=([0-9.]+)", process.stdout)]
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    labels = np.array([p.split("/")[-2] for p in paths])
    ours = reference_baselines(paths, lambda ids: precision_at_k(labels[ids], labels), k=10)
    measured = [ours[name] for name in ("raw_pixels_l2", "raw_pixels", "pca_whitened", "hsv_histogram")]
    np.testing.assert_allclose(measured, reference, atol=0.0005 + 1e-9)  # the tool prints 3 decimals


def test_evaluate_the_fitted_folder(fitted, photos):
    artifacts, summary = fitted
    report = evaluate(photos, Bundle.load(artifacts), k=5)
    assert report["images"] == 32 and report["k"] == 5
    ours = report["pipeline"]
    assert 0 <= ours["precision_at_k"] <= 1 and 0 <= ours["map_at_k"] <= 1
    assert ours["recall_vs_exact"] >= 0.9 and ours["nprobe"] == summary.nprobe
    assert ours["query_ms"] > 0 and ours["exact_query_ms"] > 0
    assert set(report["baselines"]) == {"raw_pixels_l2", "raw_pixels", "pca_whitened", "hsv_histogram",
                                        "backbone_pooled", "latent_block", "orientations_block", "colors_block"}
    assert ours["query_expansion"] == 3
    assert report["pipeline"]["precision_at_k"] > 0.25  # four balanced classes: chance is 0.25
    assert report["collection"] == "the bundle's index"


def test_evaluate_scores_the_fitted_folder_alone_after_an_add(fitted, fitted_copy, photos, tmp_path):
    """The fitted folder's images are scored, not the whole collection (issue 31, 5)."""
    from pipeline.collection.changes import add_images

    added = copy_subset(tmp_path / "more", classes=("skirt",), per_class=3)
    add_images(added, fitted_copy)
    bundle = Bundle.load(fitted_copy)
    report = evaluate(photos, bundle, k=5)
    assert len(bundle.catalog) == 35 and report["images"] == 32
    assert report["collection"] == ("the fitted folder's 32 of the collection's 35 images, indexed on their own as a "
                                    "fit would")
    before = evaluate(photos, Bundle.load(fitted[0]), k=5)["pipeline"]  # the same images, before the add
    assert abs(before["precision_at_k"] - report["pipeline"]["precision_at_k"]) <= 0.05


def test_evaluate_script_on_another_folder_json(fitted, tmp_path):
    other = copy_subset(tmp_path / "other", classes=("shoes", "pants", "hat"), per_class=12)
    process = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(other), "--artifacts", str(fitted[0]), "-k", "5",
         "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)
    assert report["images"] == 36 and report["k"] == 5 and report["settings"]["image_size"] == 64
    assert {"precision_at_1", "precision_at_k", "map_at_k", "recall_vs_exact", "query_ms",
            "exact_query_ms"} <= set(report["pipeline"])
    for scores in report["baselines"].values():
        assert set(scores) == {"precision_at_1", "precision_at_k", "map_at_k"}


def test_evaluate_needs_labels(fitted, tmp_path):
    from pipeline.errors import InputError

    for path in sorted((ROOT / "data" / "sample" / "hat").glob("*.jpg"))[:3]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="class folders"):
        evaluate(tmp_path, Bundle.load(fitted[0]))
