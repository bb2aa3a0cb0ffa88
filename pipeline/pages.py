"""Self-contained HTML pages written to files: inline thumbnails, and the duplicates page.

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
from typing import Any, Optional

from tqdm import tqdm

from .errors import ImageError
from .images import read_file, thumbnail_jpeg

THUMBNAIL = 96  # gallery thumbnails of the report
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


def write_duplicates_page(found, bundle, path: str | os.PathLike) -> Path:
    """The duplicates view of the service (``web/duplicates.js``) as one file: every group's images
    with their thumbnails inline, the one to keep marked. Nothing can be removed from it."""
    data = found.to_dict()
    images = [image for group in data["groups"] for image in group["images"]]
    for image in tqdm(images, desc="page thumbnails", unit="img", disable=not images):
        image["thumbnail"] = thumbnail_base64(image["path"], DUPLICATE_THUMBNAIL)
    title = f"Copies among {html.escape(bundle.manifest.data_dir)}"
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
