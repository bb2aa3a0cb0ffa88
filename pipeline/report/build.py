"""The report of a fit: one self-contained HTML page showing what the model learned.

Sections: a header (settings, counts, skipped files, cluster purity and adjusted Rand index when
the images have labels); an interactive t-SNE map (coloured by label or by cluster, the clusters
outlined, each point's thumbnail and path on hover: readable at any number of clusters); a gallery
per cluster (the images nearest its centroid, and its label mix); reconstructions (a fit from
pixels only); and the training curves, with what they measure and which epoch was kept.
"""

from __future__ import annotations

import colorsys
import io
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from ..bundle.artifacts import Bundle
from ..data.dataset import to_model_input
from ..data.images import prepare_image, read_file
from ..errors import ImageError
from ..index.clustered import prepare_vectors
from ..train.early_stopping import kept_epoch
from .pages import MAP_THUMBNAIL, cluster_gallery, report_page, script_json, thumbnail_base64
from .plots import plt, reconstruction_figure, training_curve_figure, tsne_figure

log = logging.getLogger(__name__)
RECONSTRUCTIONS = 8
OUTLINE_SHARE = 0.9  # a cluster's outline wraps this share of its points nearest its middle


def stratified_sample(groups: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row ids of at most ``max_points`` rows, each group keeping its share (at least one)."""
    groups = np.asarray(groups)
    if len(groups) <= max_points:
        return np.arange(len(groups))
    rng = np.random.default_rng(seed)
    names, counts = np.unique(groups, return_counts=True)
    shares = counts * max_points / len(groups)
    quotas = np.maximum(1, np.floor(shares)).astype(int)
    short = max(0, max_points - quotas.sum())  # hand out what flooring left, largest remainders first
    quotas[np.argsort(np.floor(shares) - shares, kind="stable")[:short]] += 1
    while quotas.sum() > max_points:  # the minimum of one per group can overshoot: trim the largest
        quotas[np.argmax(quotas)] -= 1
    chosen = [rng.choice(np.flatnonzero(groups == name), quota, replace=False) for name, quota in zip(names, quotas)]
    return np.sort(np.concatenate(chosen))


def build_report(
    bundle: Bundle,
    out_path: str | os.PathLike = "report.html",
    max_points: int = 3000,
    thumbnails_per_cluster: int = 8,
    max_clusters: int = 60,
    png_dir: Optional[str | os.PathLike] = None,
    seed: int = 0,
) -> Path:
    """Write the HTML report of a bundle; return its path.

    ``max_points`` caps the t-SNE sample (stratified by cluster); galleries are shown for the
    ``max_clusters`` largest clusters. With ``png_dir``, every figure is also saved as a PNG.
    """
    manifest, catalog, index = bundle.manifest, bundle.catalog, bundle.index
    clusters = catalog.cluster_array()
    vectors = prepare_vectors(bundle.embeddings, index.metric)
    labelled = any(label is not None for label in catalog.labels)
    labels = np.array([label if label is not None else "(none)" for label in catalog.labels])
    figures: dict[str, plt.Figure] = {}

    sample = stratified_sample(clusters, max_points, seed)
    log.info("t-SNE of %d of %d images ...", len(sample), len(clusters))
    points = _tsne(vectors[sample], seed)
    tsne_map = TsneMap.build(points, sample, catalog, clusters, labels, labelled, index.nlist)
    figures["training_curves"] = training_curve_figure(manifest.history, kept_epoch(manifest.history))
    members = index.members_  # built once: the property slices every cluster
    shown = sorted(range(index.nlist), key=lambda c: -len(members[c]))[:max_clusters]
    nearest = {c: _nearest_to_centroid(vectors, members[c], index.centroids_[c], thumbnails_per_cluster) for c in shown}
    if not manifest.settings.uses_backbone:  # over a backbone, what is reconstructed is no picture
        reconstructions = _reconstructions(bundle, [nearest[c][0] for c in shown[:RECONSTRUCTIONS]])
        if reconstructions is not None:
            figures["reconstructions"] = reconstructions
    if png_dir is not None:
        figures["tsne"] = tsne_map.figure()

    encoded = {name: _figure_png(figure) for name, figure in figures.items()}
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for name, data in encoded.items():
            (Path(png_dir) / f"{name}.png").write_bytes(data)

    galleries = [cluster_gallery(cluster, len(members[cluster]),
                                 [(catalog.paths[i], catalog.labels[i]) for i in nearest[cluster]],
                                 Counter(labels[members[cluster]]).most_common() if labelled else None)
                 for cluster in tqdm(shown, desc="galleries", unit="cluster")]
    unreadable = manifest.unreadable_files(catalog.indexed_paths)
    facts = [f"{manifest.images} images indexed", f"{len(unreadable)} skipped", f"{index.nlist} clusters",
             f"nprobe {index.nprobe_}", f"fitted {manifest.created}",
             *(_agreement(catalog.labels, clusters, labels) if labelled else [])]
    reconstructions = encoded.get("reconstructions", b"" if manifest.settings.uses_backbone else None)
    out_path = Path(out_path)
    out_path.write_text(report_page(
        manifest, facts, unreadable, len(tsne_map.paths), tsne_map.to_json(), labelled, galleries, (len(shown), index.nlist), reconstructions,
        encoded["training_curves"], training_caption(bundle.settings, manifest.history)))
    return out_path


def _agreement(raw_labels: list[Optional[str]], clusters: np.ndarray, labels: np.ndarray) -> list[str]:
    """How well the clusters agree with the labels: purity and the adjusted Rand index."""
    known = np.array([label is not None for label in raw_labels])
    majority = sum(Counter(labels[known & (clusters == c)]).most_common(1)[0][1] for c in np.unique(clusters[known]))
    return [f"cluster purity {majority / known.sum():.1%}",
            f"adjusted Rand index {adjusted_rand_score(labels[known], clusters[known]):.3f}"]


def palette(count: int) -> list[str]:
    """``count`` distinguishable colours (#rrggbb): matplotlib's tab10 while it lasts; beyond, each
    next colour the one furthest (in CIE Lab) from those chosen, among hues of middling lightness,
    so that no two look alike however many groups there are (tab20 pairs a light and a dark shade
    of each hue, which a legend shows as near-identical pairs)."""
    if count <= 10:
        colours = np.asarray(plt.get_cmap("tab10").colors[:count])
    else:
        candidates = np.array([colorsys.hls_to_rgb(hue, lightness, saturation)
                               for hue in np.linspace(0, 1, 72, endpoint=False)
                               for lightness in (0.3, 0.42, 0.54, 0.66) for saturation in (0.5, 0.8)])
        lab = _cie_lab(candidates)
        chosen = [0]
        nearest = np.linalg.norm(lab - lab[0], axis=1)
        for _ in range(count - 1):
            chosen.append(int(np.argmax(nearest)))
            nearest = np.minimum(nearest, np.linalg.norm(lab - lab[chosen[-1]], axis=1))
        colours = candidates[chosen]
    return ["#%02x%02x%02x" % tuple(round(255 * channel) for channel in colour) for colour in colours]


def _cie_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB colours (n, 3) in [0, 1] to CIE Lab (D65): where distances match how different colours look."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def cluster_outlines(points: np.ndarray, clusters: np.ndarray,
                     share: float = OUTLINE_SHARE) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(cluster, hull polygon, middle) per cluster with 3 or more points that do not lie on a line:
    the convex hull of the ``share`` of its points nearest its median, so a stray point does not
    stretch an outline across the map."""
    from scipy.spatial import ConvexHull, QhullError

    outlines = []
    for cluster in np.unique(clusters):
        own = points[clusters == cluster]
        middle = np.median(own, axis=0)
        distances = np.linalg.norm(own - middle, axis=1)
        core = own[distances <= np.quantile(distances, share)] if len(own) > 3 else own
        if len(core) < 3:
            continue
        try:
            hull = ConvexHull(core)
        except QhullError:  # all on one line
            continue
        outlines.append((int(cluster), core[hull.vertices], middle))
    return outlines


@dataclass
class TsneMap:
    """The t-SNE map's points (scaled into the unit square) and what is drawn for them."""

    points: np.ndarray  # (n, 2) in [0, 1]
    labels: list[int]  # each point's label, an index into names["label"]
    clusters: list[int]
    paths: list[str]
    thumbnails: list[Optional[str]]  # base64 JPEG, None for an image that cannot be read
    names: dict[str, list[str]]  # per colouring ("label", "cluster"): each group's name
    labelled: bool

    @classmethod
    def build(cls, points: np.ndarray, sample: np.ndarray, catalog, clusters: np.ndarray, labels: np.ndarray,
              labelled: bool, nlist: int) -> "TsneMap":
        low, span = points.min(axis=0) if len(points) else np.zeros(2), np.ptp(points, axis=0).max(initial=0.0)
        scaled = (points - low) / (span or 1.0)
        scaled += (1.0 - scaled.max(axis=0, initial=0.0)) / 2  # centred in the square
        names, label_ids = np.unique(labels[sample], return_inverse=True)
        paths = [catalog.paths[i] for i in sample]
        return cls(scaled, label_ids.tolist(), clusters[sample].tolist(), paths, _map_thumbnails(paths),
                   {"label": names.tolist(), "cluster": [f"cluster {c}" for c in range(nlist)]}, labelled)

    @property
    def colours(self) -> dict[str, list[str]]:
        return {mode: palette(len(names)) for mode, names in self.names.items()}

    def outlines(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return cluster_outlines(self.points, np.asarray(self.clusters))

    def to_json(self) -> str:
        """The map's data for ``web/report-map.js``, safe inside a ``<script>`` element."""
        data = {
            "points": [[round(float(x), 4), round(float(y), 4), label, cluster, path, thumbnail]
                       for (x, y), label, cluster, path, thumbnail
                       in zip(self.points, self.labels, self.clusters, self.paths, self.thumbnails)],
            "outlines": [{"cluster": cluster, "polygon": np.round(polygon, 4).tolist(),
                          "centre": np.round(middle, 4).tolist()} for cluster, polygon, middle in self.outlines()],
            "names": self.names, "colours": self.colours, "labelled": self.labelled,
        }
        return script_json(data)

    def figure(self) -> plt.Figure:
        """The map as a static figure (for ``--png``): coloured by label when there are labels."""
        mode = "label" if self.labelled else "cluster"
        groups = self.labels if self.labelled else self.clusters
        colours = self.colours[mode]
        return tsne_figure(self.points, [colours[g] for g in groups], self.outlines(),
                           legend={self.names[mode][g]: colours[g] for g in sorted(set(groups))}, mode=mode)


def _map_thumbnails(paths: list[str]) -> list[Optional[str]]:
    return list(tqdm(ThreadPoolExecutor(min(8, os.cpu_count() or 1)).map(thumbnail_base64, paths,
                                                                         [MAP_THUMBNAIL] * len(paths)),
                     total=len(paths), desc="map thumbnails", unit="img"))


def _tsne(vectors: np.ndarray, seed: int) -> np.ndarray:
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2))
    reduced = PCA(min(50, *vectors.shape), random_state=seed).fit_transform(vectors)
    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def _nearest_to_centroid(vectors: np.ndarray, members: np.ndarray, centroid: np.ndarray, count: int) -> list[int]:
    offsets = np.asarray(vectors[members]) - centroid
    return members[np.argsort(np.einsum("ij,ij->i", offsets, offsets))[:count]].tolist()


def _reconstructions(bundle: Bundle, rows: list[int]) -> Optional[plt.Figure]:
    """Originals above their reconstructions, or None when none of the images can be read any more."""
    paths, image_size = bundle.catalog.paths, bundle.settings.image_size
    images = []
    for row in rows:
        try:
            images.append(prepare_image(read_file(paths[row]), paths[row], image_size))
        except ImageError as exc:  # moved or deleted since the fit
            log.warning("reconstructions: %s", exc)
    if not images:
        return None
    originals = to_model_input(np.stack(images))
    return reconstruction_figure(originals, bundle.autoencoder().predict_on_batch(originals))


def _figure_png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def training_caption(settings, history: dict[str, list[float]]) -> str:
    """What the training curves show, in words: the loss, the data it is measured on, the kept epoch."""
    if settings.uses_backbone:
        measured = (f"the mean squared error with which the autoencoder rebuilds each image's pooled "
                    f"{settings.backbone} features (its profile) from its {settings.latent_dim}-value latent")
        start = " Training starts from PCA's solution, so the first epoch is already close to the floor."
    else:
        error = {"mse": "mean squared error", "bce": "binary cross-entropy"}[settings.loss]
        measured = (f"reconstruction (the {error} of the pixels), consistency (how far the latents of two "
                    f"random views of an image disagree, NT-Xent) and loss = reconstruction + "
                    f"{settings.consistency:g} &times; consistency")
        start = ""
    on = ("on the training images (solid) and on the {:.0%} held out for validation (dashed)".format(
          settings.validation_split) if "val_loss" in history else "on the training images (none held out)")
    kept, run = kept_epoch(history), len(history.get("loss", []))
    if kept is None:
        return "<p>No training was recorded.</p>"
    stop = (f"training stopped after epoch {run}, with no better loss for {run - kept} epochs"
            if run - kept >= settings.patience else f"training ran all {run} epochs")
    return (f"<p>Per epoch, {on}, lower is better: {measured}.{start} The weights of epoch {kept} (dotted line: "
            f"the lowest {'validation ' if 'val_loss' in history else ''}loss) were kept; {stop}.</p>")
