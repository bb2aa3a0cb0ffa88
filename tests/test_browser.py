"""The search page in a real headless Chromium: upload, see results, click one, see them change; hostile labels
stay text."""

import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn

from conftest import copy_subset, tiny_config
from pipeline.server import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
SCREENSHOT_DIR = os.environ.get("SCREENSHOT_DIR")  # set it to keep the screenshots for a look
HOSTILE_LABEL = "<img src=x onerror=window.hacked=1>"


def _serve(searcher):
    """Run the app for ``searcher`` on a free port in a thread; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(searcher), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(searcher):
    yield from _serve(searcher)


@pytest.fixture(scope="module")
def hostile_server_url(tmp_path_factory):
    """A fit whose class folder is named like markup that would run a script if put into innerHTML."""
    from pipeline.fit import fit
    from pipeline.artifacts import Bundle
    from pipeline.search import Searcher

    data = copy_subset(tmp_path_factory.mktemp("hostile"), classes=("hat", "shoes"), per_class=4)
    (data / "shoes").rename(data / HOSTILE_LABEL)
    artifacts = tmp_path_factory.mktemp("hostile-artifacts")
    fit(data, artifacts, tiny_config(epochs=1))
    yield from _serve(Searcher(Bundle.load(artifacts)))


def _launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )


def test_upload_then_click_a_result(server_url, searcher, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    screenshots = SCREENSHOT_DIR or str(tmp_path)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server_url)
        expect(page.locator("#stats")).to_contain_text("32 images")
        page.fill("#n", "6")
        page.set_input_files("#file", searcher.catalog.paths[0])
        hits = page.locator("#results .hit")
        expect(hits).to_have_count(6)
        expect(hits.first).to_have_attribute("data-id", "0")  # the uploaded photo is indexed: it comes first
        expect(page.locator("#results .hit img").first).to_have_js_property("complete", True)
        shown = [float(text[2:]) for text in page.locator("#results .hit .distance").all_inner_texts()]
        assert len(shown) == 6 and shown[0] == 0.0 and shown[2:] == sorted(shown[2:])  # sorted by the number shown
        expect(page.locator("#results .hit").nth(1)).to_contain_text("nearest to the query")
        page.screenshot(path=os.path.join(screenshots, "upload.png"), full_page=True)

        clicked = hits.nth(3).get_attribute("data-id")
        hits.nth(3).click()
        expect(page).to_have_url(f"{server_url}/?id={clicked}&n=6")
        expect(hits.first).to_have_attribute("data-id", clicked)  # now the clicked image is the query
        expect(page.locator("#query")).to_contain_text(searcher.catalog.paths[int(clicked)])
        page.screenshot(path=os.path.join(screenshots, "clicked.png"), full_page=True)
        after_click = [hits.nth(i).get_attribute("data-id") for i in range(6)]
        assert after_click == [str(h.id) for h in searcher.search_indexed(int(clicked), n=6).results]

        page.reload()  # the search lives in the URL: a reload shows the same results
        expect(hits.first).to_have_attribute("data-id", clicked)
        expect(hits).to_have_count(6)
        assert [hits.nth(i).get_attribute("data-id") for i in range(6)] == after_click
        browser.close()


def test_a_label_that_looks_like_markup_is_shown_as_text(hostile_server_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page()
        page.goto(f"{hostile_server_url}/?id=5&n=8")
        hits = page.locator("#results .hit")
        expect(hits).to_have_count(8)
        labels = " ".join(page.locator("#results .hit .meta").all_inner_texts())
        assert HOSTILE_LABEL in labels  # shown as the text it is
        assert page.locator('#results img[src="x"]').count() == 0  # never parsed as markup
        assert page.evaluate("window.hacked") is None
        browser.close()
