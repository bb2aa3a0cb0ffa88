"""Shared fixtures: a small real image folder, one tiny fit per session, and a local HTTP server."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import FitConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SHARED = ROOT.parent / "shared"  # the team's real photo sets and tools, beside the project
SHARED_SAMPLES = SHARED / "data" / "package-samples"
CLASSES = ("dress", "hat", "pants", "shoes")
PER_CLASS = 8

# Small and fast, but every stage real: the pretrained backbone at 64 px (a 2 x 2 feature map), two epochs.
TINY = dict(image_size=64, latent_dim=16, epochs=2, batch_size=16, seed=1)
# The from-scratch path (--backbone none): 32 px images, two conv blocks.
PIXELS = dict(backbone="none", image_size=32, filters=(16, 32))


def tiny_config(**overrides) -> FitConfig:
    return FitConfig(**{**TINY, **overrides})


def copy_subset(destination: Path, classes=CLASSES, per_class=PER_CLASS) -> Path:
    """Copy the first ``per_class`` photos of each class of the bundled sample."""
    for name in classes:
        (destination / name).mkdir(parents=True)
        for path in sorted((SAMPLE / name).glob("*.jpg"))[:per_class]:
            shutil.copy2(path, destination / name / path.name)
    return destination


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """32 real clothing photos in 4 class folders."""
    return copy_subset(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def fitted(photos, tmp_path_factory):
    """One real fit of ``photos``: (artifacts folder, FitSummary)."""
    from pipeline.fit import fit

    artifacts = tmp_path_factory.mktemp("artifacts")
    return artifacts, fit(photos, artifacts, tiny_config())


@pytest.fixture(scope="session")
def searcher(fitted):
    from pipeline.artifacts import Bundle
    from pipeline.search import Searcher

    return Searcher(Bundle.load(fitted[0]))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, plus /slow (answers after 3 s), /drip (a byte every 0.1 s), /page.html (an HTML page) and
    /redirect/N (N redirects, then /photo.jpg), /redirect-to-file (to a file:// URL) and /redirect-to-bad-port."""

    def do_GET(self):
        if self.path == "/redirect-to-bad-port":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:99999/photo.jpg")
            self.end_headers()
            return
        if self.path == "/redirect-to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if self.path.startswith("/redirect/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{hops - 1}" if hops > 1 else "/photo.jpg")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/drip":  # an image header, then one byte every 0.1 s for 6 s
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up, as it should
                pass
            return
        if self.path == "/page.html":
            body = b"<html><body>not an image</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="session")
def http_url(http_root):
    """Base URL of an HTTP server on 127.0.0.1 serving ``http_root``."""

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(http_root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
