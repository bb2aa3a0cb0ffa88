"""The HTTP API on a real fit: every endpoint, every error status, the URL guard."""

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import copy_of_fit, serve_app
from pipeline.errors import InputError
from pipeline.search.searcher import SearchOptions
from pipeline.serve.server import create_app

TOKEN = "a-write-token-of-24-chars"


@pytest.fixture(scope="module")
def client(searcher):
    return TestClient(create_app(searcher, max_upload_bytes=2_000_000))


@pytest.fixture(scope="module")
def open_client(searcher):
    """A server started with --allow-private-urls."""
    return TestClient(create_app(searcher, allow_private_urls=True))


def photo_of(searcher, image_id=0):
    with open(searcher.catalog.paths[image_id], "rb") as handle:
        return handle.read()


def test_page_is_served_without_external_resources_under_a_strict_policy(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'id="search"' in response.text and '<script src="/page.js">' in response.text
    script, style = client.get("/page.js"), client.get("/page.css")
    assert script.headers["content-type"].startswith("text/javascript") and "/api/search" in script.text
    assert style.headers["content-type"].startswith("text/css")
    for text in (response.text, script.text, style.text):
        assert "http://" not in text and "https://" not in text.replace("https://…", "") and "cdn" not in text.lower()
    assert "innerHTML" not in script.text and "<script>" not in response.text and "style=" not in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert client.get("/api/health").headers["content-security-policy"] == policy  # on every response


def test_health_and_stats(client, searcher):
    assert client.get("/api/health").json() == {"status": "ok", "images": 32}
    stats = client.get("/api/stats").json()
    assert stats["images"] == 32 and stats["clusters"] == searcher.index.nlist and stats["nprobe"] == searcher.index.nprobe_
    assert stats["labels"] == ["dress", "hat", "pants", "shoes"] and stats["settings"]["image_size"] == 64


def test_upload_search_matches_the_searcher(client, searcher):
    data = photo_of(searcher, 5)
    response = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"n": "4"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = searcher.search_bytes(data, "q.jpg", SearchOptions(n=4))
    assert [r["id"] for r in body["results"]] == [r.id for r in expected.results]
    first = body["results"][0]
    assert first["id"] == 5 and first["same_image"] and first["distance"] < 1e-5
    assert set(first) >= {"rank", "id", "path", "distance", "cluster", "label"}
    assert body["nprobe"] == searcher.index.nprobe_ and len(body["clusters"]) == body["nprobe"]


def test_search_by_id_and_nprobe_all(client, searcher):
    body = client.post("/api/search", json={"id": 7, "n": 3, "nprobe": "all"}).json()
    assert body["query"] == searcher.catalog.paths[7] and body["nprobe"] == searcher.index.nlist
    assert body["results"][0]["id"] == 7 and len(body["results"]) == 3


def test_url_search_needs_allow_private_urls_for_a_local_server(client, open_client, searcher, http_root, http_url):
    shutil.copy(searcher.catalog.paths[3], http_root / "local.jpg")
    url = f"{http_url}/local.jpg"
    refused = client.post("/api/search", json={"url": url})
    assert refused.status_code == 400 and "non-public address" in refused.json()["error"]
    assert "started with --allow-private-urls" in refused.json()["error"]  # and how to allow it
    allowed = open_client.post("/api/search", json={"url": url, "n": 2})
    assert allowed.status_code == 200 and allowed.json()["results"][0]["id"] == 3


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        (dict(json={"url": "file:///etc/passwd"}), 400, "only http and https"),
        (dict(json={"n": 3}), 400, 'exactly one of "url" or "id"'),
        (dict(content=b'{"id": 1', headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json=[1, 2]), 400, 'exactly one of "url" or "id"'),
        (dict(json={"id": 99999}), 404, "no indexed image has id 99999"),
        (dict(json={"id": "１２"}), 404, "no image with id '１２'"),  # fullwidth digits are not an id
        (dict(json={"id": 1, "n": 0}), 422, "n must lie between 1 and 100"),
        (dict(json={"id": 1, "n": "ten"}), 422, "n must be a whole number"),
        (dict(json={"id": 1, "nprobe": "-2"}), 422, "nprobe must be"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
        (dict(files={"image": ("a.txt", b"just text", "text/plain")}), 415, "not a decodable image"),
        (dict(files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "file field named 'image'"),
    ],
    ids=["scheme", "neither", "bad-json", "json-list", "unknown-id", "fullwidth-id", "n-zero", "n-text", "nprobe",
         "content-type", "not-image", "no-field"],
)
def test_errors_are_json_with_the_right_status(client, request_kwargs, status, message):
    response = client.post("/api/search", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_url_errors_map_to_statuses(open_client, http_url):
    missing = open_client.post("/api/search", json={"url": f"{http_url}/missing.jpg"})
    assert missing.status_code == 400 and "HTTP 404" in missing.json()["error"]
    page = open_client.post("/api/search", json={"url": f"{http_url}/page.html"})
    assert page.status_code == 415 and "not an image" in page.json()["error"]


def test_oversized_upload_is_413(client):
    big = b"\xff\xd8" + b"0" * 2_100_000
    response = client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=x"])
def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(client, content_type):
    def chunks():  # 3 MB against the 2 MB limit, with no Content-Length: sent chunked
        for _ in range(48):
            yield b"[" + b" " * 65_535 if content_type == "application/json" else b"x" * 65_536

    response = client.post("/api/search", content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 413 and "over the 2000000-byte limit" in response.json()["error"]
    assert "content-length" not in {key.lower() for key in response.request.headers}


def test_too_many_pixels_is_413(searcher):
    from pipeline.search.searcher import Searcher

    small_limit = Searcher(searcher.bundle, max_pixels=100 * 100)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (10, 200, 30)).save(buffer, "PNG")
    response = TestClient(create_app(small_limit)).post("/api/search", files={"image": ("px.png", buffer.getvalue())})
    assert response.status_code == 413 and "200x200 pixels" in response.json()["error"]


def test_images_are_served_by_id_only(client, searcher):
    thumb = client.get("/api/images/2")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    full = client.get("/api/images/2/full")
    assert full.status_code == 200 and full.content == photo_of(searcher, 2)
    for path in ("/api/images/32", "/api/images/-1", "/api/images/..%2F..%2Fetc%2Fpasswd",
                 "/api/images/../../etc/passwd", "/api/images/%2Fetc%2Fpasswd/full", "/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json() and "root:" not in response.text


def test_hostile_numbers_and_bodies_are_clean_errors_not_500s(client):
    huge = "9" * 5000  # past Python's limit for turning digits into an int
    assert client.get(f"/api/images/{huge}").status_code == 404
    assert client.post("/api/search", json={"id": huge}).status_code == 404
    response = client.post("/api/search", json={"id": 1, "nprobe": huge})
    assert response.status_code == 422 and "nprobe" in response.json()["error"]
    nested = client.post("/api/search", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and "not valid JSON" in nested.json()["error"]
    length = client.post("/api/search", content=b"{}", headers={"Content-Type": "application/json",
                                                                "Content-Length": "abc"})
    assert length.status_code == 400 and "Content-Length" in length.json()["error"]


def test_a_huge_n_or_expansion_from_python_is_bounded_by_the_collection(searcher):
    result = searcher.search_indexed(3, SearchOptions(n=10**12, expansion=10**12))
    assert len(result.results) == len(searcher.catalog) and result.expansion == len(searcher.catalog)
    with pytest.raises(InputError, match="n must be a whole number from 1"):
        SearchOptions(n=0)


def test_max_distance_keeps_only_results_that_close_to_the_query(client, searcher):
    data = photo_of(searcher, 7)
    everything = client.post("/api/search", json={"id": 7, "n": 12}).json()["results"]
    limit = sorted(r["query_distance"] for r in everything)[4]
    close = client.post("/api/search", json={"id": 7, "n": 12, "max_distance": limit}).json()["results"]
    assert 0 < len(close) < 12 and all(r["query_distance"] <= limit for r in close)
    assert [r["id"] for r in close] == [r["id"] for r in everything if r["query_distance"] <= limit]
    form = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"max_distance": "0"})
    assert [r["id"] for r in form.json()["results"]] == [7]  # only the image itself is at distance 0
    for bad in ("-1", "x", "inf"):
        response = client.post("/api/search", json={"id": 7, "max_distance": bad})
        assert response.status_code == 422 and "max_distance" in response.json()["error"]


def test_delete_is_off_without_a_token_and_needs_the_token(fitted_copy):
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    searcher = Searcher(Bundle.load(artifacts))
    closed = TestClient(create_app(searcher))
    assert closed.delete("/api/images/3").status_code == 403
    with pytest.raises(InputError, match="at least 16 characters"):
        create_app(searcher, write_token="s3cret")
    client = TestClient(create_app(searcher, write_token=TOKEN))
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert client.delete("/api/images/3").status_code == 401
    assert client.delete("/api/images/3", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/api/images/99", headers=authorized).status_code == 404
    assert client.delete("/api/images/３", headers=authorized).status_code == 404  # fullwidth: not an id
    assert len(Bundle.load(artifacts).catalog) == 32  # nothing removed so far

    path = searcher.catalog.paths[3]
    response = client.delete("/api/images/3", headers=authorized)
    assert response.status_code == 200 and response.json() == {"removed": 3, "images": 31}
    assert path not in Bundle.load(artifacts).catalog.paths  # on disk
    assert client.get("/api/stats").json()["images"] == 31  # and in the running server
    with open(path, "rb") as handle:
        results = client.post("/api/search", files={"image": ("q.jpg", handle.read(), "image/jpeg")},
                              data={"n": "31", "nprobe": "all"}).json()["results"]
    assert len(results) == 31 and path not in [r["path"] for r in results]


def test_an_image_keeps_its_id_whatever_is_removed_before_it(fitted_copy):
    """DELETE 10, then DELETE 11 removes the image that was 11, not the one after it; an id taken out by
    another writer is a 404, never another image."""
    from pipeline.bundle.artifacts import Bundle
    from pipeline.collection.changes import remove_images
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    searcher = Searcher(Bundle.load(artifacts))
    client = TestClient(create_app(searcher, write_token=TOKEN))
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    paths = {image_id: searcher.catalog.paths[searcher.catalog.row_of(image_id)] for image_id in (10, 11, 12, 20)}
    assert client.delete("/api/images/10", headers=authorized).status_code == 200
    assert client.delete("/api/images/11", headers=authorized).json()["removed"] == 11
    left = Bundle.load(artifacts).catalog
    assert paths[10] not in left.paths and paths[11] not in left.paths and paths[12] in left.paths
    assert left.paths[left.row_of(12)] == paths[12] and left.paths[left.row_of(20)] == paths[20]
    assert client.get("/api/images/12").status_code == 200 and client.get("/api/images/11").status_code == 404
    found = client.post("/api/search", json={"id": 20, "n": 1}).json()["results"][0]
    assert found["id"] == 20 and found["path"] == paths[20]
    remove_images([paths[20]], artifacts)  # another writer, from the command line
    assert client.delete("/api/images/20", headers=authorized).status_code == 404
    assert client.delete("/api/images/12", headers=authorized).json()["removed"] == 12


def test_the_service_serves_a_bundle_committed_while_it_runs(fitted_copy, caplog):
    import time

    from pipeline.bundle.artifacts import Bundle
    from pipeline.collection.changes import remove_images
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    searcher = Searcher(Bundle.load(artifacts))
    with TestClient(create_app(searcher, reload_seconds=0.05)) as client:  # the follower runs inside the block
        assert client.get("/api/stats").json()["images"] == 32
        removed = searcher.catalog.paths[7]
        remove_images([removed], artifacts)  # another process's writer, as far as the service knows
        deadline = time.monotonic() + 30
        while client.get("/api/stats").json()["images"] != 31 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/api/stats").json()["images"] == 31
        with open(removed, "rb") as handle:
            results = client.post("/api/search", files={"image": ("q.jpg", handle.read(), "image/jpeg")},
                                  data={"n": "31", "nprobe": "all"}).json()["results"]
        assert len(results) == 31 and removed not in [r["path"] for r in results]

        served = (artifacts / "CURRENT").read_text()
        (artifacts / "CURRENT.new").write_text("bundle-gone\n")  # a pointer to nothing: it cannot be loaded
        os.replace(artifacts / "CURRENT.new", artifacts / "CURRENT")  # at once, as a writer does: never half-written
        time.sleep(0.5)
        assert client.get("/api/stats").json()["images"] == 31
        assert caplog.text.count("still serving") == 1  # once, not at every look
        (artifacts / "CURRENT").write_text(served)
        remove_images([searcher.catalog.paths[0]], artifacts)  # a good commit: the follower goes on
        while client.get("/api/stats").json()["images"] != 30 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert client.get("/api/stats").json()["images"] == 30


def test_only_the_indexed_image_itself_is_served(fitted, tmp_path):
    """A photo replaced by a link to a secret, a photo whose bytes changed, a tampered path outside the
    collection: 404, never the file at the path."""
    import pyarrow as pa

    from helpers import rewrite_catalog
    from pipeline.bundle.artifacts import Bundle
    from pipeline.bundle.layout import current_folder
    from pipeline.search.searcher import Searcher

    artifacts, _ = copy_of_fit(fitted[0], tmp_path)
    folder = current_folder(artifacts)
    secret = tmp_path / "secret.txt"
    secret.write_text("the shadow file")
    outside = tmp_path / "outside.jpg"
    paths = Bundle.load(artifacts).catalog.paths.tolist()
    shutil.copy(paths[4], outside)
    paths[4] = str(outside)  # a tampered path: the same bytes, outside the collection's folders
    rewrite_catalog(folder, lambda table: table.set_column(1, table.schema.field("path"),
                                                           pa.array(paths, table.schema.field("path").type)))
    client = TestClient(create_app(Searcher(Bundle.load(artifacts))))
    paths = Bundle.load(artifacts).catalog.paths

    assert client.get("/api/images/1/full").content == open(paths[1], "rb").read()  # a photo as indexed: served
    os.remove(paths[1])
    os.symlink(secret, paths[1])  # replaced by a link to another file
    link = client.get("/api/images/1/full")
    assert link.status_code == 404 and b"shadow" not in link.content
    assert client.get("/api/images/1").status_code == 404  # nor its thumbnail
    with open(paths[2], "ab") as handle:
        handle.write(b"more")  # other bytes than were indexed
    assert client.get("/api/images/2/full").status_code == 404
    assert "not inside the collection's folders" in client.get("/api/images/4/full").json()["error"]


def test_a_request_for_another_host_is_refused(searcher):
    client = TestClient(create_app(searcher, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8000")
    assert client.get("/api/health").status_code == 200
    rebound = client.get("/api/images/1/full", headers={"Host": "attacker.example:8000"})
    assert rebound.status_code == 400 and "'attacker.example' is not served here" in rebound.json()["error"]
    assert client.get("/api/stats", headers={"Host": "localhost:8000"}).status_code == 200


def test_a_search_that_would_wait_too_long_is_refused_at_once_and_health_is_answered(searcher, photos):
    """Admission: past the budget a search hears 503 and Retry-After before its body is read."""
    from pipeline.serve.service import Admission

    admission = Admission(budget_s=0.1, first_cost_s=0.04)
    assert [admission.admit() for _ in range(4)] == [None, None, None, 1]  # 3 waiting at 40 ms: 120 ms is over
    admission.done()
    assert admission.admit() is None and 0.0 < admission.cost_s

    query = sorted(photos.rglob("*.jpg"))[0].read_bytes()
    with TestClient(create_app(searcher, max_queue_ms=0)) as client, ThreadPoolExecutor(8) as pool:
        # every search after the first waits too long
        answers = list(pool.map(lambda _: client.post("/api/search", files={"image": ("q.jpg", query, "image/jpeg")}),
                                range(16)))
        health = client.get("/api/health")
        statuses = sorted(answer.status_code for answer in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}
        busy = next(answer for answer in answers if answer.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["error"]
        assert "default-src 'none'" in busy.headers["content-security-policy"]  # a refusal is an answer like any
        assert health.status_code == 200 and client.get("/api/stats").json()["queue"]["searches"] == 0


def test_searches_run_in_a_few_threads_and_the_rest_wait_their_turn(searcher, photos, monkeypatch):
    import threading
    import time

    import pipeline.serve.server as server_module

    running, most, lock = [0], [0], threading.Lock()
    search_bytes = searcher.search_bytes

    def counted(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        try:
            return search_bytes(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(server_module, "SEARCH_THREADS", 2)
    monkeypatch.setattr(searcher, "search_bytes", counted)
    query = sorted(photos.rglob("*.jpg"))[0].read_bytes()
    with TestClient(create_app(searcher, max_queue_ms=60_000)) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/search", files={"image": ("q.jpg", query, "image/jpeg")}),
                                range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8 and most[0] == 2


def test_requests_beside_writers_that_sync_and_remove_meet_no_error_and_lose_no_photo(fitted, tmp_path):
    """The service follows its folder while another writer removes photos and syncs moves and new files: every
    answer is a 200, or a 404 for an id that was taken out meanwhile; afterwards every photo is indexed."""
    import threading

    from pipeline.bundle.artifacts import Bundle
    from pipeline.collection.changes import remove_images, sync
    from pipeline.data.images import find_images
    from pipeline.search.searcher import Searcher

    artifacts, copied = copy_of_fit(fitted[0], tmp_path)
    photos = sorted(find_images(copied), key=lambda record: record.path)
    stop, done = threading.Event(), []

    def writer():
        moved = Path(photos[5].path).with_suffix(".moved")
        while not stop.is_set():
            Path(photos[5].path).rename(moved)  # moved away, then back: out of the index and in again
            done.append(sync(artifacts).removed)
            moved.rename(photos[5].path)
            done.append(sync(artifacts).added)
        remove_images([photos[9].path], artifacts)

    client = TestClient(create_app(Searcher(Bundle.load(artifacts)), reload_seconds=0.05))
    upload = Path(photos[0].path).read_bytes()
    with client:
        background = threading.Thread(target=writer)
        background.start()
        try:
            def one(number):
                if number % 3 == 0:
                    return client.post("/api/search", files={"image": ("q.jpg", upload, "image/jpeg")}).status_code
                response = client.get(f"/api/images/{number % 32}" + ("/full" if number % 3 == 2 else ""))
                return response.status_code

            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(one, range(120)))
        finally:
            stop.set()
            background.join()
    assert set(statuses) <= {200, 404} and statuses.count(200) > 100 and len(done) >= 2
    final = Bundle.load(artifacts)
    assert sorted(final.catalog.paths) == sorted(record.path for record in photos if record.path != photos[9].path)


def test_slow_clients_hold_no_search_place_and_are_let_go(searcher):
    """30 connections trickling search bodies at a few bytes a second: real searches are answered at once throughout,
    and the trickling ones get 408 once their time is up (issue 29)."""
    import socket
    import threading
    import time

    import httpx

    for url in serve_app(searcher, body_grace_s=3.0):
        port = int(url.rsplit(":", 1)[1])
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        for connection in slow:
            connection.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 100000\r\n\r\n{")
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(0.2):
                for connection in slow:
                    try:
                        connection.send(b" ")
                    except OSError:  # told and let go
                        pass

        dripping = threading.Thread(target=drip, daemon=True)
        dripping.start()
        time.sleep(0.5)
        for _ in range(6):
            started = time.monotonic()
            answer = httpx.post(f"{url}/api/search", json={"id": 0, "n": 3}, timeout=10)
            assert answer.status_code == 200 and time.monotonic() - started < 1.0
            time.sleep(0.3)
        time.sleep(2.0)
        for connection in slow:
            connection.settimeout(5)
            assert connection.recv(64).startswith(b"HTTP/1.1 408")
        stop.set()
        dripping.join()
        queue = httpx.get(f"{url}/api/stats").json()["queue"]
        assert queue["searches"] == 0 and queue["expected_wait_ms"] < 100
        for connection in slow:
            connection.close()


def test_removal_bodies_are_capped_and_each_id_is_said_once(fitted_copy):
    from pipeline.bundle.artifacts import Bundle
    from pipeline.search.searcher import Searcher

    client = TestClient(create_app(Searcher(Bundle.load(fitted_copy)), write_token=TOKEN))
    authorised = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    huge = b'{"ids": [' + b"1," * 600_000 + b"1]}"
    assert client.post("/api/remove", content=huge, headers=authorised).status_code == 413
    answer = client.post("/api/remove", json={"ids": [7, 7, 7]}, headers=authorised)
    assert answer.status_code == 200 and answer.json() == {"removed": [7], "images": 31}


def test_ids_have_one_spelling_and_clients_see_no_schema_and_no_paths(fitted_copy):
    import os

    from pipeline.bundle.artifacts import Bundle
    from pipeline.bundle.writer import ArtifactWriter
    from pipeline.search.searcher import Searcher

    client = TestClient(create_app(Searcher(Bundle.load(fitted_copy)), write_token=TOKEN))
    assert client.get("/api/images/5").status_code == 200
    assert [client.get(f"/api/images/{text}").status_code for text in ("05", "005", "+5", "5.0")] == [404] * 4
    assert client.get("/openapi.json").status_code == 404
    for text in ("１", "1_0", "0x1", "1e", "--1", "½"):
        answer = client.post("/api/search", json={"id": 0, "max_distance": text})
        assert answer.status_code == 422 and answer.json()["error"].startswith("max_distance must be a number")
    assert client.post("/api/search", json={"id": 0, "max_distance": "1e1"}).status_code == 200
    with ArtifactWriter(fitted_copy):  # another writer holds the collection
        busy = client.delete("/api/images/3", headers={"Authorization": f"Bearer {TOKEN}"})
    assert busy.status_code == 409 and "another fit, add, sync or remove is changing the collection" in busy.text
    assert str(fitted_copy) not in busy.text and str(os.getpid()) not in busy.text
    long_url = client.post("/api/search", json={"url": "http://example.com/" + "x" * 70_000})
    assert long_url.status_code == 400 and len(long_url.text) < 500 and "over the 8,192 allowed" in long_url.text


def test_options_in_the_query_string_are_honoured_or_refused(client, searcher):
    """POST /api/search?n=3 answers 3; a query parameter that is no option, or one given two ways, is a 422 (issue 31)."""
    photo = {"image": ("q.jpg", photo_of(searcher, 2), "image/jpeg")}
    assert len(client.post("/api/search?n=3", files=photo).json()["results"]) == 3
    assert len(client.post("/api/search?n=4&nprobe=all", json={"id": 2}).json()["results"]) == 4
    assert client.post("/api/search?n=4", json={"id": 2, "n": 4}).status_code == 200  # the same both ways
    for url, body, message in (("/api/search?n=0", {"id": 2}, "n must lie between 1 and 100, got 0"),
                               ("/api/search?nprobe=abc", {"id": 2}, "nprobe must be a positive whole number"),
                               ("/api/search?n=3", {"id": 2, "n": 5}, "n is given twice, as '5' and '3'"),
                               ("/api/search?limit=3", {"id": 2}, "unknown query parameter 'limit': a search takes n, "
                                                                  "nprobe, max_distance")):
        answer = client.post(url, json=body)
        assert answer.status_code == 422 and message in answer.json()["error"], answer.text
    upload = client.post("/api/search?nprobe=abc", files=photo)
    assert upload.status_code == 422


def test_several_uploaded_photos_and_unlike_ones_are_one_query(client, searcher):
    photo = lambda row: photo_of(searcher, row)  # noqa: E731
    files = [("image", ("a.jpg", photo(1), "image/jpeg")), ("image", ("b.jpg", photo(2), "image/jpeg")),
             ("unlike", ("c.jpg", photo(20), "image/jpeg"))]
    answer = client.post("/api/search?n=5", files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["combined"] == "the mean of 2 photos' unit descriptors, less 0.5 times the mean of 1 unlike photos'"
    assert body["query"] == "a.jpg + b.jpg - c.jpg" and len(body["results"]) == 5
    too_many = client.post("/api/search", files=[("image", ("a.jpg", photo(1), "image/jpeg"))] * 9)
    assert too_many.status_code == 400 and "files" in too_many.json()["error"].lower()


def test_a_region_of_an_indexed_photo_or_an_upload_is_searched_by_its_box(client, searcher):
    by_id = client.post("/api/search", json={"id": 3, "box": "0.25,0.25,0.5,0.5", "n": 3})
    assert by_id.status_code == 200 and by_id.json()["box"] == [0.25, 0.25, 0.5, 0.5]
    upload = client.post("/api/search?box=0,0,0.5,1", files={"image": ("q.jpg", photo_of(searcher, 3), "image/jpeg")})
    assert upload.status_code == 200 and upload.json()["box"] == [0, 0, 0.5, 1]
    whole = client.post("/api/search", json={"id": 3, "n": 3}).json()
    assert whole["box"] is None and whole["results"][0]["same_image"]
    bad = client.post("/api/search", json={"id": 3, "box": "0.5,0.5,0.9,0.9"})
    assert bad.status_code == 422 and "must lie inside the photo" in bad.json()["error"]


def test_results_added_by_id_make_one_query_with_no_encoding(client, searcher, monkeypatch):
    """The page's "+ like" and "− less": indexed ids, whose stored vectors are used as they are, beside an id, a URL
    or an uploaded photo; the same answer as the photos uploaded, and nothing encoded but the upload."""
    uploaded = client.post("/api/search?n=5", files=[("image", ("1", photo_of(searcher, 1), "image/jpeg")),
                                                     ("image", ("2", photo_of(searcher, 2), "image/jpeg")),
                                                     ("unlike", ("20", photo_of(searcher, 20), "image/jpeg"))]).json()
    encoded = []
    encode = searcher.encoder.encoder.encode
    monkeypatch.setattr(searcher.encoder.encoder, "encode", lambda images: encoded.append(len(images)) or encode(images))
    by_id = client.post("/api/search", json={"id": 1, "like": [2], "unlike": ["20"], "n": 5})
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["query"] == "id 1 + id 2 - id 20" and encoded == []
    mixed = client.post("/api/search?n=5", files={"image": ("1.jpg", photo_of(searcher, 1), "image/jpeg")},
                        data={"like": "2", "unlike": "20"})
    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["query"] == "1.jpg + id 2 - id 20" and encoded == [1]
    ids = lambda answer: [hit["id"] for hit in answer["results"]]  # noqa: E731
    assert ids(by_id.json()) == ids(mixed.json()) == ids(uploaded)
    for body, status, message in (({"id": 1, "like": ["x"]}, 422, "'like' lists indexed image ids, got 'x'"),
                                  ({"id": 1, "like": [True]}, 422, "'like' lists indexed image ids"),
                                  ({"id": 1, "unlike": [99999]}, 404, "no indexed image has id 99999"),
                                  ({"id": 1, "like": list(range(2, 11))}, 422, "at most 8 photos a query"),
                                  ({"id": 1, "like": [2], "box": "0,0,0.5,0.5"}, 422, "a box is a region of one photo")):
        answer = client.post("/api/search", json=body)
        assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_the_api_explains_a_match_as_a_picture(client, open_client, searcher, http_root, http_url):
    """Why a result matched a query by id, by URL or by upload, or the region of it searched by."""
    is_png = lambda answer: (answer.status_code == 200 and answer.headers["content-type"] == "image/png"  # noqa: E731
                             and answer.content[:8] == b"\x89PNG\r\n\x1a\n")
    assert is_png(client.get("/api/explain?query=3&id=5"))
    assert is_png(client.get("/api/explain?query=3&id=5&box=0.1,0.1,0.5,0.5"))
    assert is_png(client.post("/api/explain", files={"image": ("q.jpg", photo_of(searcher, 3), "image/jpeg")},
                              data={"id": "5", "box": "0,0,0.5,1"}))
    shutil.copy(searcher.catalog.paths[3], http_root / "why.jpg")
    assert is_png(open_client.get("/api/explain", params={"url": f"{http_url}/why.jpg", "id": 5}))
    refused = client.get("/api/explain", params={"url": f"{http_url}/why.jpg", "id": 5})
    assert refused.status_code == 400 and "non-public address" in refused.json()["error"]
    assert client.get("/api/explain?query=3&id=99999").status_code == 404
    assert client.get("/api/explain?query=x&id=5").status_code == 404
    assert client.get("/api/explain?id=5").status_code == 400
    assert client.get("/api/explain?query=3&id=5&box=0.6,0,0.6,1").status_code == 422
    not_image = client.post("/api/explain", files={"image": ("q.jpg", b"not an image", "image/jpeg")}, data={"id": "5"})
    assert not_image.status_code == 415 and "q.jpg" in not_image.json()["error"]
