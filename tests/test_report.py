"""The HTML report of a real fit: sections, embedded images, sampling, and the no-label case."""

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from helpers import PIXELS, ROOT, SAMPLE, tiny_config
from pipeline.bundle.artifacts import Bundle
from pipeline.report.build import build_report, stratified_sample


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


def map_data(path):
    """The t-SNE map's data, as the page's script reads it."""
    found = re.search(r'<script id=map-data type="application/json">(.*?)</script>', path.read_text(), re.S)
    return json.loads(found.group(1))


def test_report_of_a_labelled_fit(fitted, tmp_path):
    artifacts, summary = fitted
    bundle = Bundle.load(artifacts)
    out = build_report(bundle, tmp_path / "report.html", max_points=20, thumbnails_per_cluster=3,
                       png_dir=tmp_path / "png")
    page, text = parse(out)
    assert {"summary", "tsne", "map", "clusters", "training"} <= page.ids
    assert "reconstructions" not in page.ids  # over a backbone, what is reconstructed is no picture: no section
    figures = [img for img in page.images if img.get("class") == "figure"]
    assert [img["alt"] for img in figures] == ["training curves"]
    assert all(img["src"].startswith("data:image/png;base64,") for img in figures)
    thumbnails = [img for img in page.images if img["src"].startswith("data:image/jpeg;base64,")]
    assert len(thumbnails) == sum(min(3, n) for n in _cluster_sizes(text))
    assert "20 of 32 images" in text and "cluster purity" in text and "adjusted Rand index" in text
    assert f"{summary.clusters} clusters" in text and "purity" in text
    kept = 1 + int(np.argmin(bundle.manifest.history["val_loss"]))
    assert f"The weights of epoch {kept} (dotted line: the lowest validation loss) were kept" in text
    assert "pooled efficientnet-lite0 features" in text  # the caption says what the curve measures
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["training_curves.png", "tsne.png"]

    data = map_data(out)
    assert len(data["points"]) == 20 and data["labelled"]
    catalog = bundle.catalog
    for x, y, label, cluster, path, thumbnail in data["points"]:
        row = catalog.paths.index(path)
        assert 0 <= x <= 1 and 0 <= y <= 1 and thumbnail  # every photo is there to show on hover
        assert data["names"]["label"][label] == catalog.labels[row] and cluster == catalog.clusters[row]
    assert sorted(data["names"]["label"]) == sorted({catalog.labels[catalog.paths.index(p[4])] for p in data["points"]})
    assert len(data["colours"]["cluster"]) == len(set(data["colours"]["cluster"])) == bundle.index.nlist


def _cluster_sizes(text):
    return [int(n) for n in re.findall(r"cluster \d+ · (\d+) images", text)]


def test_the_palette_and_outlines_hold_at_any_number_of_clusters():
    from pipeline.report.build import cluster_outlines, palette

    from pipeline.report.build import _cie_lab

    for count in (1, 10, 20, 57, 101):
        colours = palette(count)
        assert len(colours) == len(set(colours)) == count and all(re.fullmatch("#[0-9a-f]{6}", c) for c in colours)
        lab = _cie_lab(np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in colours]))
        closest = min((np.linalg.norm(lab[i] - lab[j]) for i in range(count) for j in range(i)), default=99)
        assert closest > {20: 20, 57: 10, 101: 7}.get(count, 0)  # no two alike (tab20's pairs were 10 to 25 apart)
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(centre, 0.02, (30, 2)) for centre in ((0.2, 0.2), (0.8, 0.8))])
    points[0] = (0.9, 0.1)  # a stray point of cluster 0, far from the rest
    clusters = np.repeat([0, 1], 30)
    line = np.array([[0.1, 0.5], [0.2, 0.5], [0.3, 0.5]])
    outlines = cluster_outlines(np.concatenate([points, line]), np.concatenate([clusters, [2, 2, 2]]))
    assert [cluster for cluster, _, _ in outlines] == [0, 1]  # three points on a line have no outline
    first = outlines[0][1]
    assert first.max() < 0.4  # the stray point does not stretch the outline across the map


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
    assert str(tmp_path / "flat.html") not in process.stderr  # the path is said once
    page, text = parse(tmp_path / "flat.html")
    assert {"summary", "tsne", "clusters", "reconstructions", "training"} <= page.ids
    assert "reconstruction (the mean squared error of the pixels)" in text
    assert {img.get("alt") for img in page.images if img.get("class") == "figure"} == {"reconstructions",
                                                                                        "training curves"}
    assert "<option value=label" not in (tmp_path / "flat.html").read_text() and not map_data(tmp_path / "flat.html")[
        "labelled"]
    assert "purity" not in text and "Rand" not in text


def test_report_without_a_fit_is_a_clear_error(tmp_path):
    from pipeline.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no fitted artifacts"):
        build_report(Bundle.load(tmp_path / "none"), tmp_path / "r.html")


def test_report_when_the_photos_have_moved_since_the_fit(tmp_path):
    from helpers import copy_subset
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=4)
    fit(photos, tmp_path / "artifacts", tiny_config(**PIXELS, epochs=1))
    shutil.rmtree(photos)
    page, text = parse(build_report(Bundle.load(tmp_path / "artifacts"), tmp_path / "moved.html"))
    assert "None of the sampled images can be read any more." in text and "missing" in text
    assert not [img for img in page.images if img["src"].startswith("data:image/jpeg")]
    assert [point[5] for point in map_data(tmp_path / "moved.html")["points"]] == [None] * 8
    assert {"summary", "tsne", "clusters", "reconstructions", "training"} <= page.ids


def test_the_static_map_stays_readable_with_57_clusters(tmp_path):
    """Issue 31: no web of 57 outlines, no legend of 57 look-alike colours: each cluster's number at its middle."""
    from matplotlib.patches import Polygon

    from pipeline.report.plots import tsne_figure
    from pipeline.report.build import cluster_outlines, palette

    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(57), 20)
    points = rng.normal(size=(57, 2))[clusters] * 0.5 + rng.normal(0, 0.08, (len(clusters), 2))
    colours = palette(57)
    legend = {f"cluster {c}": colours[c] for c in range(57)}
    figure = tsne_figure(points, [colours[c] for c in clusters], cluster_outlines(points, clusters), legend, "cluster")
    axis = figure.axes[0]
    assert not [patch for patch in axis.patches if isinstance(patch, Polygon)] and axis.get_legend() is None
    assert sorted(int(text.get_text()) for text in axis.texts) == list(range(57))
    assert "57 clusters, numbered at their middles" in axis.get_title()
    figure.savefig(tmp_path / "map.png")
    few = tsne_figure(points[:200], [colours[c] for c in clusters[:200]], cluster_outlines(points[:200], clusters[:200]),
                      {name: colour for name, colour in list(legend.items())[:10]}, "cluster")
    assert len([p for p in few.axes[0].patches if isinstance(p, Polygon)]) == 10 and few.axes[0].get_legend()
