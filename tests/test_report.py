"""The HTML report of a real fit: sections, embedded images, sampling, and the no-label case."""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import PIXELS, ROOT, SAMPLE, tiny_config
from pipeline.artifacts import Bundle
from pipeline.report import build_report, stratified_sample


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.text = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    collector = _Collector()
    collector.feed(path.read_text())
    collector.close()
    return collector, " ".join(collector.text)


def test_stratified_sample_respects_the_cap_and_keeps_every_group():
    groups = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sample = stratified_sample(groups, 100, seed=0)
    assert len(sample) == 100 and len(set(sample)) == 100
    counts = np.bincount(groups[sample])
    assert counts.tolist() == [90, 9, 1]
    assert len(stratified_sample(groups, 5000)) == 1000  # no sampling below the cap


def test_report_of_a_labelled_fit(fitted, tmp_path):
    artifacts, summary = fitted
    out = build_report(Bundle.load(artifacts), tmp_path / "report.html", max_points=20, thumbnails_per_cluster=3,
                       png_dir=tmp_path / "png")
    page, text = parse(out)
    assert {"summary", "tsne", "clusters", "reconstructions", "training"} <= page.ids
    figures = [img for img in page.images if img.get("class") == "figure"]
    assert {img["alt"] for img in figures} == {"t-SNE by cluster", "t-SNE by label", "training curves"}
    assert "reconstructs what the backbone sees" in text  # over a backbone, reconstructions are no pictures
    assert all(img["src"].startswith("data:image/png;base64,") for img in figures)
    thumbnails = [img for img in page.images if img["src"].startswith("data:image/jpeg;base64,")]
    assert len(thumbnails) == sum(min(3, n) for n in _cluster_sizes(text))
    assert "20 of 32 images" in text and "cluster purity" in text and "adjusted Rand index" in text
    assert f"{summary.clusters} clusters" in text and "purity" in text
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "training_curves.png", "tsne_clusters.png", "tsne_labels.png"]


def _cluster_sizes(text):
    return [int(n) for n in re.findall(r"cluster \d+ · (\d+) images", text)]


def test_report_without_labels_has_no_label_sections(tmp_path):
    from pipeline.fit import fit

    photos = tmp_path / "flat"
    photos.mkdir()
    for path in sorted(SAMPLE.rglob("*.jpg"))[::10]:
        shutil.copy(path, photos / path.name)
    fit(photos, tmp_path / "artifacts", tiny_config(**PIXELS, epochs=1))
    process = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report.py"), "--artifacts", str(tmp_path / "artifacts"),
         "--out", str(tmp_path / "flat.html")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == f"report: {tmp_path / 'flat.html'}"
    page, text = parse(tmp_path / "flat.html")
    assert {"summary", "tsne", "clusters", "reconstructions", "training"} <= page.ids
    alts = {img.get("alt") for img in page.images}
    assert "t-SNE by cluster" in alts and "t-SNE by label" not in alts
    assert "purity" not in text and "Rand" not in text


def test_report_without_a_fit_is_a_clear_error(tmp_path):
    from pipeline.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no fitted artifacts"):
        build_report(Bundle.load(tmp_path / "none"), tmp_path / "r.html")


def test_report_when_the_photos_have_moved_since_the_fit(tmp_path):
    from conftest import copy_subset
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=4)
    fit(photos, tmp_path / "artifacts", tiny_config(**PIXELS, epochs=1))
    shutil.rmtree(photos)
    page, text = parse(build_report(Bundle.load(tmp_path / "artifacts"), tmp_path / "moved.html"))
    assert "None of the sampled images can be read any more." in text and "missing" in text
    assert not [img for img in page.images if img["src"].startswith("data:image/jpeg")]
    assert {"summary", "tsne", "clusters", "reconstructions", "training"} <= page.ids
