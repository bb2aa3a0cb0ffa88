"""The report of a fit: one self-contained HTML page showing what the model learned.

Sections: a header (settings, counts, skipped files, cluster purity and adjusted Rand index when
the images have labels), t-SNE maps coloured by cluster and by label, a gallery per cluster (the
images nearest its centroid, and its label mix), reconstructions, and the training curves.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from .artifacts import Bundle
from .dataset import to_model_input
from .errors import ImageError
from .images import prepare_image, read_file, thumbnail_jpeg
from .index import prepare_vectors
from .plots import plt, reconstruction_figure, scatter_figure, training_curve_figure

log = logging.getLogger(__name__)
THUMBNAIL = 96
RECONSTRUCTIONS = 8


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
    clusters = np.asarray(catalog.clusters)
    vectors = prepare_vectors(bundle.embeddings, index.metric)
    labelled = any(label is not None for label in catalog.labels)
    labels = np.array([label if label is not None else "(none)" for label in catalog.labels])
    figures: dict[str, plt.Figure] = {}

    sample = stratified_sample(clusters, max_points, seed)
    log.info("t-SNE of %d of %d images ...", len(sample), len(clusters))
    points = _tsne(vectors[sample], seed)
    figures["tsne_clusters"] = scatter_figure(points, [f"cluster {c}" for c in clusters[sample]], "t-SNE, by cluster")
    if labelled:
        figures["tsne_labels"] = scatter_figure(points, labels[sample].tolist(), "t-SNE, by label")
    figures["training_curves"] = training_curve_figure(manifest.history)
    members = index.members_  # built once: the property slices every cluster
    shown = sorted(range(index.nlist), key=lambda c: -len(members[c]))[:max_clusters]
    nearest = {c: _nearest_to_centroid(vectors, members[c], index.centroids_[c], thumbnails_per_cluster) for c in shown}
    if not manifest.settings.uses_backbone:  # over a backbone, what is reconstructed is no picture
        reconstructions = _reconstructions(bundle, [nearest[c][0] for c in shown[:RECONSTRUCTIONS]])
        if reconstructions is not None:
            figures["reconstructions"] = reconstructions

    encoded = {name: _figure_png(figure) for name, figure in figures.items()}
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for name, data in encoded.items():
            (Path(png_dir) / f"{name}.png").write_bytes(data)

    galleries = []
    for cluster in tqdm(shown, desc="galleries", unit="cluster"):
        thumbs = "".join(thumbnail_html(catalog.paths[i], catalog.labels[i]) for i in nearest[cluster])
        mix = ""
        if labelled:
            counted = Counter(labels[members[cluster]]).most_common()
            mix = "<p class=mix>" + ", ".join(f"{html.escape(name)} {n}" for name, n in counted) + (
                f" &middot; purity {counted[0][1] / len(members[cluster]):.0%}</p>"
            )
        galleries.append(f"<div class=cluster><h3>cluster {cluster} &middot; {len(members[cluster])} images</h3>{mix}"
                         f"<div class=thumbs>{thumbs}</div></div>")

    out_path = Path(out_path)
    out_path.write_text(_page(bundle, catalog.labels, clusters, labels if labelled else None, encoded,
                              galleries, len(sample), index.nlist, len(shown)))
    log.info("wrote report to %s", out_path)
    return out_path


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


def _last(history: dict[str, list[float]], name: str) -> str:
    return f"{history[name][-1]:.4f}" if history.get(name) else "not measured"


def _figure_png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def thumbnail_html(path: str, label: Optional[str]) -> str:
    """An inline JPEG thumbnail of an image file titled with its path (and label), or a "missing" box."""
    title = html.escape(f"{path}" + (f" ({label})" if label else ""), quote=True)
    try:
        jpeg = thumbnail_jpeg(read_file(path), path, THUMBNAIL, quality=80)
    except ImageError:
        return f"<div class=missing title='{title}'>missing</div>"
    return f"<img title='{title}' src='data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}'>"


def _image(data: bytes, alt: str) -> str:
    return f"<img class=figure alt='{alt}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _page(bundle, raw_labels, clusters, labels, figures, galleries, sampled, nlist, shown) -> str:
    settings = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in bundle.settings.to_dict().items())
    manifest = bundle.manifest
    skipped = manifest.skipped
    skipped_html = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>" for s in skipped)
    facts = [f"{manifest.images} images indexed", f"{len(skipped)} skipped", f"{nlist} clusters",
             f"nprobe {bundle.index.nprobe}", f"fitted {html.escape(manifest.created)}"]
    if labels is not None:
        known = np.array([label is not None for label in raw_labels])
        majority = sum(Counter(labels[known & (clusters == c)]).most_common(1)[0][1]
                       for c in np.unique(clusters[known]))
        facts += [f"cluster purity {majority / known.sum():.1%}",
                  f"adjusted Rand index {adjusted_rand_score(labels[known], clusters[known]):.3f}"]
    label_map = (f"<figure>{_image(figures['tsne_labels'], 't-SNE by label')}</figure>" if labels is not None else "")
    if "reconstructions" in figures:
        reconstructions = _image(figures["reconstructions"], "reconstructions")
    elif not bundle.settings.uses_backbone:
        reconstructions = "<p>None of the sampled images can be read any more.</p>"
    else:
        reconstructions = (f"<p>The autoencoder learned over the {html.escape(bundle.settings.backbone)} "
                           f"backbone's features, not pixels: it reconstructs what the backbone sees, which is no "
                           f"picture. Final validation loss: {_last(manifest.history, 'val_loss')}.</p>")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Fit report: {html.escape(manifest.data_dir)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }}
.facts span {{ display: inline-block; background: #eef; border-radius: 4px; padding: 2px 8px; margin: 2px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }} th, td {{ text-align: left; padding: 1px 10px 1px 0; }}
.maps {{ display: flex; flex-wrap: wrap; gap: 1rem; }} img.figure {{ max-width: 100%; }}
.cluster {{ border-top: 1px solid #ddd; padding: 0.4rem 0; }} .cluster h3 {{ margin: 0.2rem 0; font-size: 1rem; }}
.thumbs img, .missing {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; object-fit: contain; background: #f4f4f4;
  margin: 2px; display: inline-block; }}
.mix {{ margin: 0.1rem 0; font-size: 0.85rem; color: #555; }}
</style></head><body>
<header id=summary><h1>What the model learned</h1>
<p>Fit of <code>{html.escape(manifest.data_dir)}</code></p>
<p class=facts>{''.join(f'<span>{fact}</span>' for fact in facts)}</p>
<details><summary>settings</summary><table>{settings}</table></details>
<details><summary>{len(skipped)} skipped files</summary><ul>{skipped_html}</ul></details></header>
<section id=tsne><h2>t-SNE map of the latent vectors</h2>
<p>{sampled} of {manifest.images} images (sampled in proportion to cluster size).</p>
<div class=maps><figure>{_image(figures['tsne_clusters'], 't-SNE by cluster')}</figure>{label_map}</div></section>
<section id=clusters><h2>Clusters</h2><p>The images nearest each centroid; {shown} of {nlist} clusters, largest first.</p>
{''.join(galleries)}</section>
<section id=reconstructions><h2>Reconstructions</h2>{reconstructions}</section>
<section id=training><h2>Training curves</h2>{_image(figures['training_curves'], 'training curves')}</section>
</body></html>
"""
