"""Self-contained HTML pages written to files: the report's page, the duplicates page, inline thumbnails.

A page written here opens offline and fetches nothing; its script and style are the ones the
service serves (``web/``), inlined, and its data travels as JSON in a ``<script>`` element.
"""

from __future__ import annotations

import base64
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tqdm import tqdm

from ..data.images import read_file, thumbnail_jpeg
from ..errors import ImageError

if TYPE_CHECKING:
    from ..bundle.manifest import Manifest

THUMBNAIL = 96  # gallery thumbnails of the report
MAP_THUMBNAIL = 80  # the picture shown on hovering a point of the report's map
DUPLICATE_THUMBNAIL = 160


def web_file(name: str) -> str:
    """A file of the service's ``web/`` folder, as text."""
    return resources.files("pipeline").joinpath(f"web/{name}").read_text()


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (no "</script>" can end it)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def thumbnail_base64(path: str, size: int) -> Optional[str]:
    """A JPEG thumbnail of an image file, base64-encoded; None when it cannot be read."""
    try:
        return base64.b64encode(thumbnail_jpeg(read_file(path), path, size, quality=75)).decode()
    except ImageError:
        return None


def thumbnail_html(path: str, label: Optional[str]) -> str:
    """An inline JPEG thumbnail of an image file titled with its path (and label), or a "missing" box."""
    title = html.escape(f"{path}" + (f" ({label})" if label else ""), quote=True)
    jpeg = thumbnail_base64(path, THUMBNAIL)
    if jpeg is None:
        return f"<div class=missing title='{title}'>missing</div>"
    return f"<img title='{title}' src='data:image/jpeg;base64,{jpeg}'>"


def write_duplicates_page(found, roots: list[str], path: str | os.PathLike) -> Path:
    """The duplicates view of the service (``web/duplicates.js``) as one file: every group's images
    with their thumbnails inline, the one to keep marked. Nothing can be removed from it."""
    data = found.to_dict()
    images = [image for group in data["groups"] for image in group["images"]]
    for image in tqdm(images, desc="page thumbnails", unit="img", disable=not images):
        image["thumbnail"] = thumbnail_base64(image["path"], DUPLICATE_THUMBNAIL)
    title = f"Copies among {html.escape(', '.join(roots))}"
    path = Path(path)
    path.write_text(f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>{title}</title><style>{web_file("page.css")}</style></head><body>
<h1>{title}</h1>
<div id=duplicates-status></div><div id=duplicates></div>
<script id=duplicates-data type="application/json">{script_json(data)}</script>
<script>{web_file("duplicates.js")}</script>
</body></html>
""")
    return path


def cluster_gallery(cluster: int, size: int, images: list[tuple[str, Optional[str]]],
                    label_counts: Optional[list[tuple[str, int]]]) -> str:
    """One cluster of the report: its number and size, its label mix (most common first) and
    purity, and the thumbnails of ``images`` (path, label)."""
    thumbs = "".join(thumbnail_html(path, label) for path, label in images)
    mix = ""
    if label_counts:
        mix = ("<p class=mix>" + ", ".join(f"{html.escape(name)} {count}" for name, count in label_counts)
               + f" &middot; purity {label_counts[0][1] / size:.0%}</p>")
    return (f"<div class=cluster><h3>cluster {cluster} &middot; {size} images</h3>{mix}"
            f"<div class=thumbs>{thumbs}</div></div>")


def figure_html(png: bytes, alt: str) -> str:
    """A PNG figure, inline."""
    data = base64.b64encode(png).decode()
    return f"<img class=figure alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"


def report_page(manifest: Manifest, facts: list[str], unreadable: list[dict[str, str]], map_points: int, map_json: str,
                labelled: bool, galleries: list[str], clusters_shown: tuple[int, int], reconstructions: Optional[bytes],
                training_curves: bytes, training_caption: str) -> str:
    """The report as one page: ``facts`` (plain text) in the header with the settings and the
    ``unreadable`` files ({"path", "reason"}: skipped by the fit or a later change), the map of
    ``map_points`` images (its data ``map_json``, drawn by ``web/report-map.js``), the ``galleries``
    (shown, of all clusters), the
    ``reconstructions`` figure (None: the sampled images cannot be read; empty: over a backbone,
    no section), and the training curves with ``training_caption`` (HTML)."""
    settings = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                       for key, value in manifest.settings.to_dict().items())
    skipped = "".join(f"<li>{html.escape(item['path'])}: {html.escape(item['reason'])}</li>"
                      for item in unreadable)
    section = ""
    if reconstructions is None or reconstructions:
        shown = (figure_html(reconstructions, "reconstructions") if reconstructions
                 else "<p>None of the sampled images can be read any more.</p>")
        section = ("<section id=reconstructions><h2>Reconstructions</h2><p>Images nearest the centroids of the largest "
                   f"clusters, above what the autoencoder rebuilds from their latents.</p>{shown}</section>")
    colour_options = ("<option value=label selected>label</option>" if labelled else "") + (
        "<option value=cluster>cluster</option>")
    shown_clusters, nlist = clusters_shown
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>Fit report: {html.escape(manifest.data_dir)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }}
.facts span {{ display: inline-block; background: #eef; border-radius: 4px; padding: 2px 8px; margin: 2px; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }} th, td {{ text-align: left; padding: 1px 10px 1px 0; }}
img.figure {{ max-width: 100%; }}
.cluster {{ border-top: 1px solid #ddd; padding: 0.4rem 0; }} .cluster h3 {{ margin: 0.2rem 0; font-size: 1rem; }}
.thumbs img, .missing {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; object-fit: contain; background: #f4f4f4;
  margin: 2px; display: inline-block; }}
.mix {{ margin: 0.1rem 0; font-size: 0.85rem; color: #555; }}
.map {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }}
.map-view {{ position: relative; flex: 1 1 480px; max-width: 680px; }}
#map {{ width: 100%; height: auto; border: 1px solid #ddd; background: #fff; }}
#map circle {{ stroke: #fff; stroke-width: 0.6; }} #map circle:hover {{ r: 6; stroke: #000; }}
#map.focus circle:not(.on) {{ opacity: 0.1; }}
#map .outlines path {{ fill: none; stroke: #555; stroke-width: 0.8; stroke-dasharray: 3 2; opacity: 0.55; }}
#map .outlines text {{ font-size: 9px; fill: #333; text-anchor: middle; dominant-baseline: middle; opacity: 0.8;
  pointer-events: none; }}
#map .outlines .hot path {{ stroke: #000; stroke-width: 2; stroke-dasharray: none; opacity: 1; }}
#map:not(.outlined) .outlines g:not(.hot) {{ display: none; }}
#map-tip {{ position: absolute; width: 208px; background: #fff; border: 1px solid #999; border-radius: 4px;
  padding: 4px; font-size: 0.75rem; overflow-wrap: anywhere; box-shadow: 0 2px 6px #0003; pointer-events: none; }}
#map-tip img, #map-tip .missing {{ display: block; margin: 0 auto 2px; width: {MAP_THUMBNAIL}px;
  height: {MAP_THUMBNAIL}px; object-fit: contain; }}
#map-legend {{ flex: 0 1 260px; max-height: 640px; overflow: auto; list-style: none; padding: 0; margin: 0;
  font-size: 0.8rem; }}
#map-legend li {{ cursor: default; padding: 1px 2px; }} #map-legend li:hover {{ background: #eef; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 5px; }}
</style></head><body>
<header id=summary><h1>What the model learned</h1>
<p>Fit of <code>{html.escape(manifest.data_dir)}</code></p>
<p class=facts>{''.join(f'<span>{html.escape(fact)}</span>' for fact in facts)}</p>
<details><summary>settings</summary><table>{settings}</table></details>
<details><summary>{len(unreadable)} skipped files</summary><ul>{skipped}</ul></details></header>
<section id=tsne><h2>t-SNE map of the latent vectors</h2>
<p>{map_points} of {manifest.images} images (sampled in proportion to cluster size). Near points have near
latent vectors; the distance between far-apart groups means little. Hover a point for its image and path, a legend
entry to pick out its group.</p>
<p><label>colour by <select id=map-colour-by>{colour_options}</select></label>
<label><input type=checkbox id=map-outlines> every cluster's outline (dashed, numbered; a point's own
cluster is outlined on hover)</label></p>
<div class=map><div class=map-view><svg id=map role=img aria-label="t-SNE map"></svg><div id=map-tip hidden></div></div>
<ul id=map-legend></ul></div>
<script id=map-data type="application/json">{map_json}</script>
<script>{web_file("report-map.js")}</script></section>
<section id=clusters><h2>Clusters</h2><p>The images nearest each centroid; {shown_clusters} of {nlist} clusters, largest
first.</p>
{''.join(galleries)}</section>
{section}
<section id=training><h2>Training curves</h2>{figure_html(training_curves, 'training curves')}
{training_caption}</section>
</body></html>
"""
