"""The search page and the report in a real headless Chromium: upload, see results, click one, see them change;
the page on a phone; a busy server; the duplicates view, removing a group's copies; the report's map on hover; hostile labels stay
text."""

import os
import re
import shutil
import threading
import time

import pytest

from helpers import copy_subset, save_near_copy, serve_app, tiny_config
from pipeline.search.searcher import SearchOptions

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
SCREENSHOT_DIR = os.environ.get("SCREENSHOT_DIR")  # set it to keep the screenshots for a look
HOSTILE_LABEL = "<img src=x onerror=window.hacked=1>"
WRITE_TOKEN = "a-write-token-long-enough"


@pytest.fixture(scope="module")
def server_url(searcher):
    yield from serve_app(searcher)


@pytest.fixture(scope="module")
def hostile_artifacts(tmp_path_factory):
    """A fit whose class folder is named like markup that would run a script if put into innerHTML."""
    from pipeline.fit import fit

    data = copy_subset(tmp_path_factory.mktemp("hostile"), classes=("hat", "shoes"), per_class=4)
    (data / "shoes").rename(data / HOSTILE_LABEL)
    artifacts = tmp_path_factory.mktemp("hostile-artifacts")
    fit(data, artifacts, tiny_config(epochs=1))
    return artifacts


@pytest.fixture(scope="module")
def hostile_server_url(hostile_artifacts):
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    yield from serve_app(Searcher(Bundle.load(hostile_artifacts)))


@pytest.fixture(scope="module")
def copies_server_url(tmp_path_factory):
    """A fit of 8 photos and two copies of one of them, served with a write token."""
    from pipeline.bundle.artifacts import Bundle
    from pipeline.fit import fit
    from pipeline.search.searcher import Searcher

    data = copy_subset(tmp_path_factory.mktemp("copies"), classes=("hat", "shoes"), per_class=4)
    original = sorted((data / "hat").glob("*.jpg"))[0]
    for seed, kind in enumerate(("jpeg15", "mirror")):
        save_near_copy(original, kind, original.with_name(f"copy-{kind}.jpg"), seed)
    artifacts = tmp_path_factory.mktemp("copies-artifacts")
    fit(data, artifacts, tiny_config(image_size=224))
    yield from serve_app(Searcher(Bundle.load(artifacts)), write_token=WRITE_TOKEN)


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
        shown = [float(text.split()[-1]) for text in page.locator("#results .hit .score").all_inner_texts()]
        assert len(shown) == 6 and shown[0] == 0.0 and shown == sorted(shown)  # in the order of the number shown
        expect(page).to_have_url(f"{server_url}/")  # an upload has no address of its own, and the page says so
        expect(page.locator("#status")).to_contain_text("an uploaded photo has no link of its own")
        page.screenshot(path=os.path.join(screenshots, "upload.png"), full_page=True)

        clicked = hits.nth(3).get_attribute("data-id")
        hits.nth(3).click()
        expect(page).to_have_url(f"{server_url}/?id={clicked}&n=6")
        expect(hits.first).to_have_attribute("data-id", clicked)  # now the clicked image is the query
        assert page.eval_on_selector("#file", "input => input.value") == ""  # no longer names the uploaded file
        expect(page.locator("#query")).to_contain_text(searcher.catalog.paths[int(clicked)])
        page.screenshot(path=os.path.join(screenshots, "clicked.png"), full_page=True)
        after_click = [hits.nth(i).get_attribute("data-id") for i in range(6)]
        assert after_click == [str(h.id) for h in searcher.search_indexed(int(clicked), SearchOptions(n=6)).results]

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


@pytest.mark.parametrize("width", [390, 1280])
def test_the_page_fits_the_screen_and_a_failed_search_clears_the_old_results(server_url, searcher, width, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    screenshots = SCREENSHOT_DIR or str(tmp_path)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": width, "height": 844})
        assert page.request.get(f"{server_url}/favicon.ico").status == 200
        page.goto(f"{server_url}/?id=3&n=6")
        hits = page.locator("#results .hit")
        expect(hits).to_have_count(6)
        expect(page.locator("#results .hit img").last).to_have_js_property("complete", True)
        assert page.locator("#results").bounding_box()["y"] < 0.6 * 844  # the answer starts high on the first screen
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing cut off, no sideways scroll
        for box in (page.locator(selector).bounding_box() for selector in ("#url", "#search button", "#results")):
            assert box["x"] >= 0 and box["x"] + box["width"] <= width
        second = searcher.search_indexed(3, SearchOptions(n=6)).results[1]
        meta = hits.nth(1).locator(".meta")
        expect(meta).to_contain_text(os.path.basename(second.path))  # the file name, not a cluster number
        expect(meta).to_contain_text(f"to the query {second.query_distance:.4f}")
        assert "cluster" not in meta.inner_text()
        page.screenshot(path=os.path.join(screenshots, f"results-{width}.png"), full_page=True)

        page.fill("#url", "http://127.0.0.1:9/missing.jpg")  # a loopback URL: refused by a default service
        page.click("#search button")
        expect(page.locator("#status")).to_have_class("error")
        expect(page.locator("#status")).to_contain_text("--allow-private-urls")
        expect(hits).to_have_count(0)  # the old results are gone, not shown under the new query's error
        expect(page.locator("#query img")).to_have_count(0)
        page.screenshot(path=os.path.join(screenshots, f"failed-{width}.png"), full_page=True)
        browser.close()


@pytest.fixture
def slow_server(fitted):
    """A service whose searches take 4 s each, with an admission budget of 0 ms: (its URL, a photo it indexed)."""
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    slow = Searcher(Bundle.load(fitted[0]))
    search_bytes = slow.search_bytes
    slow.search_bytes = lambda *args: time.sleep(4) or search_bytes(*args)
    for url in serve_app(slow, max_queue_ms=0):
        yield url, slow.catalog.paths[0]


def test_a_busy_server_is_said_at_once_not_waited_for(slow_server, tmp_path):
    """Overload: while a slow search holds the admission budget, the page's search hears 'busy' at once and shows
    it, with no results, instead of waiting its turn."""
    from pathlib import Path

    import httpx
    from playwright.sync_api import expect, sync_playwright

    url, photo = slow_server
    upload = {"image": ("q.jpg", Path(photo).read_bytes(), "image/jpeg")}
    holder = threading.Thread(target=lambda: httpx.post(f"{url}/api/search", files=upload, timeout=30))
    holder.start()
    time.sleep(0.5)  # the slow search is in: every other search would wait
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        started = time.monotonic()
        page.set_input_files("#file", photo)
        expect(page.locator("#status")).to_contain_text("busy; try again", timeout=2000)
        assert time.monotonic() - started < 2 and holder.is_alive()  # told before the slow search ended
        expect(page.locator("#status")).to_have_class("error")
        expect(page.locator("#results .hit")).to_have_count(0)
        page.screenshot(path=os.path.join(SCREENSHOT_DIR or str(tmp_path), "busy.png"), full_page=True)
        browser.close()
    holder.join()


def test_the_reports_map_shows_a_points_photo_on_hover_and_fetches_nothing(fitted, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pipeline.bundle.artifacts import Bundle
    from pipeline.report.build import build_report

    bundle = Bundle.load(fitted[0])
    report = build_report(bundle, tmp_path / "report.html", max_points=32)
    screenshots = SCREENSHOT_DIR or str(tmp_path)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        fetched = []
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(report.as_uri())
        dots, legend = page.locator("#map circle"), page.locator("#map-legend li")
        expect(dots).to_have_count(32)
        expect(legend).to_have_count(len(set(bundle.catalog.labels)))  # coloured by label
        assert len({dots.nth(i).get_attribute("fill") for i in range(32)}) == len(set(bundle.catalog.labels))

        top = dots.last  # drawn last, so nothing covers it
        row = bundle.catalog.paths.index(page.evaluate(
            "i => JSON.parse(document.getElementById('map-data').textContent).points[i][4]",
            int(top.get_attribute("data-i"))))
        top.hover()
        tip = page.locator("#map-tip")
        expect(tip).to_be_visible()
        expect(tip).to_contain_text(bundle.catalog.paths[row])
        expect(tip).to_contain_text(f"{bundle.catalog.labels[row]} · cluster {bundle.catalog.clusters[row]}")
        assert tip.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
        page.locator("#tsne").screenshot(path=os.path.join(screenshots, "report-map.png"))

        page.select_option("#map-colour-by", "cluster")
        clusters = sorted(set(bundle.catalog.clusters))
        expect(legend).to_have_count(len(clusters))
        legend.first.hover()  # the largest cluster picked out, the rest faded
        largest = max(clusters, key=bundle.catalog.clusters.count)
        expect(page.locator("#map circle.on")).to_have_count(bundle.catalog.clusters.count(largest))
        assert {url.split(":")[0] for url in fetched} == {"file"}  # nothing from any network, no CDN
        browser.close()


def test_a_label_that_looks_like_markup_stays_text_in_the_report(hostile_artifacts, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pipeline.bundle.artifacts import Bundle
    from pipeline.report.build import build_report

    report = build_report(Bundle.load(hostile_artifacts), tmp_path / "report.html")
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page()
        page.goto(report.as_uri())
        expect(page.locator("#map-legend")).to_contain_text(HOSTILE_LABEL)
        assert page.locator('img[src="x"]').count() == 0 and page.evaluate("window.hacked") is None
        browser.close()


def test_the_duplicates_view_marks_the_keeper_and_removes_the_copies_with_the_token(copies_server_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(f"{copies_server_url}/duplicates")
        expect(page.locator("#duplicates-status")).to_contain_text("1 group of copies (3 images)")
        expect(page.locator(".copy")).to_have_count(3)
        expect(page.locator(".copy.keep")).to_have_count(1)
        expect(page.locator(".copy.keep .badge")).to_have_text("keep")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll on a phone
        page.screenshot(path=os.path.join(SCREENSHOT_DIR or str(tmp_path), "duplicates-390.png"), full_page=True)
        button = page.locator("section.group button")
        button.click()  # no token: said at once, nothing asked or sent
        expect(page.locator("section.group .error")).to_have_text("enter the server's write token above to remove")
        asked = []

        def answer(dialog, accept):
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        page.fill("#token", "not-the-token-at-all")
        page.once("dialog", lambda dialog: answer(dialog, False))
        button.click()  # asked once, and told no: nothing happens
        page.wait_for_timeout(300)
        expect(page.locator(".copy")).to_have_count(3)
        page.once("dialog", lambda dialog: answer(dialog, True))
        button.click()
        expect(page.locator("section.group .error")).to_have_text(
            "the write token is wrong: it is not the one the server was started with")
        page.fill("#token", WRITE_TOKEN)
        page.once("dialog", lambda dialog: answer(dialog, True))
        button.click()
        expect(page.locator("section.group .note")).to_contain_text("removed 2 from the index")
        expect(page.locator("section.group .note")).to_contain_text("8 images indexed")
        expect(page.locator(".copy")).to_have_count(1)  # the removed copies left their group
        expect(page.locator("section.group h2")).to_contain_text("1. 1 image · keep")
        expect(page.locator("section.group button")).to_have_count(0)
        assert asked == ["Take the 2 other images of this group out of the index? The files stay on disk."] * 3
        browser.close()


def test_a_dragged_region_more_or_less_like_a_result_and_why_it_matched(server_url, searcher, tmp_path):
    """Issue 34 on the page: drag a rectangle over the query photo (a pointer, as a finger is) to search by that
    region; "+ like" and "− less" make one query of several photos; "why" shows the heatmaps of a match."""
    from playwright.sync_api import expect, sync_playwright

    screenshots = SCREENSHOT_DIR or str(tmp_path)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{server_url}/?id=3&n=6")
        hits = page.locator("#results .hit")
        expect(hits).to_have_count(6)
        frame = page.locator("#query .frame").bounding_box()
        page.mouse.move(frame["x"] + 0.1 * frame["width"], frame["y"] + 0.1 * frame["height"])
        page.mouse.down()
        page.mouse.move(frame["x"] + 0.6 * frame["width"], frame["y"] + 0.7 * frame["height"], steps=5)
        page.mouse.up()
        expect(page).to_have_url(re.compile(r"box=0\.1\d*%2C0\.1\d*%2C0\.5\d*%2C0\.6\d*"))
        expect(page.locator("#query")).to_contain_text("by the region outlined")
        expect(page.locator("#query .box")).to_have_count(1)
        expect(hits).to_have_count(6)
        page.screenshot(path=os.path.join(screenshots, "region.png"), full_page=True)

        page.goto(f"{server_url}/?id=3&n=6")
        expect(hits).to_have_count(6)
        hits.nth(1).locator("button", has_text="why").click()
        expect(page.locator("#why img")).to_have_js_property("complete", True)
        assert page.locator("#why img").evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=os.path.join(screenshots, "why.png"), full_page=True)
        hits.nth(1).locator("button", has_text="+ like").click()
        expect(page.locator("#status")).to_contain_text("2 photos, 0 less like")
        expect(page.locator("#query")).to_contain_text("one query from the mean of 2 photos' unit descriptors")
        hits.nth(4).locator("button", has_text="− less").click()
        expect(page.locator("#status")).to_contain_text("2 photos, 1 less like")
        expect(hits).to_have_count(6)

        page.goto(f"{server_url}/?n=6")  # an uploaded photo: why it matched, and results added to it by id
        page.set_input_files("#file", searcher.catalog.paths[3])
        expect(hits).to_have_count(6)
        hits.nth(1).locator("button", has_text="why").click()
        expect(page.locator("#why img")).to_have_js_property("complete", True)
        assert page.locator("#why img").evaluate("img => img.naturalWidth") > 100
        added = hits.nth(2).get_attribute("data-id")
        hits.nth(2).locator("button", has_text="+ like").click()
        expect(page.locator("#status")).to_contain_text("2 photos, 0 less like")
        expect(page.locator("#query")).to_contain_text(f"+ id {added}")
        expect(hits).to_have_count(6)
        browser.close()
