"""Shared fixtures: a small real image folder, one tiny fit per session, and a local HTTP server."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from pathlib import Path

import pytest

from helpers import copy_subset, tiny_config


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


@pytest.fixture
def fitted_copy(fitted, tmp_path) -> Path:
    """A writable copy of the session's fit (its photos shared): for tests that change or break a bundle."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(fitted[0], artifacts)
    return artifacts


@pytest.fixture(scope="session")
def searcher(fitted):
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

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
