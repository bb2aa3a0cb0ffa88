"""The service's handlers called alone, without HTTP: each request's work and its refusals."""

import os

import pytest
from starlette.exceptions import HTTPException

from pipeline.bundle.artifacts import Bundle
from pipeline.errors import ImageError, InputError, UnknownImage
from pipeline.search.searcher import Searcher, SearchOptions
from pipeline.serve.service import SearchService

TOKEN = "a-write-token-of-24-chars"


def status_of(call) -> int:
    with pytest.raises(HTTPException) as refused:
        call()
    return refused.value.status_code


def test_queries_by_id_and_by_upload_answer_as_the_searcher_does(searcher):
    service = SearchService(searcher)
    expected = searcher.search_indexed(7, SearchOptions(n=4)).to_dict()
    assert service.search_json({"id": 7, "n": 4}) == service.search_json({"id": "7", "n": "4"}) == expected
    with open(searcher.catalog.paths[7], "rb") as handle:
        data = handle.read()
    answer = service.search_upload([(data, "photo.jpg")], [], {"n": "3"})
    assert [hit["id"] for hit in answer["results"]][0] == 7 and len(answer["results"]) == 3
    assert service.health() == {"status": "ok", "images": len(searcher.catalog)}
    assert service.stats()["queue"] == {"searches": 0, "expected_wait_ms": 0.0, "max_queue_ms": 500.0}


def test_bad_queries_are_refused_with_their_status(searcher):
    service = SearchService(searcher, max_upload_bytes=1000)
    assert status_of(lambda: service.search_json({"id": 1, "url": "http://x"})) == 400
    assert status_of(lambda: service.search_json([1, 2])) == 400
    assert status_of(lambda: service.search_json({"id": "１２"})) == 404  # fullwidth digits are not an id
    assert status_of(lambda: service.search_upload([(b"x" * 1001, "big.jpg")], [], {})) == 413
    with pytest.raises(UnknownImage):
        service.search_json({"id": 10_000})
    with pytest.raises(InputError, match="n must lie between 1 and 100, got 0"):
        service.search_json({"id": 1, "n": 0})
    with pytest.raises(ImageError):
        service.search_upload([(b"not an image", "x.jpg")], [], {})
    with pytest.raises(InputError, match="non-public address"):
        service.search_json({"url": "http://127.0.0.1:9/x.jpg"})  # refused before any connection


def test_images_are_served_by_id_only_while_they_are_the_indexed_file(fitted_copy):
    service = SearchService(Searcher(Bundle.load(fitted_copy)))
    bundle = service.searcher.bundle
    data, media_type = service.full_image("3")
    with open(bundle.catalog.paths[3], "rb") as handle:
        assert data == handle.read() and media_type == "image/jpeg"
    assert service.thumbnail("3")[:2] == b"\xff\xd8"
    assert status_of(lambda: service.full_image("../3")) == 404
    photo = bundle.catalog.paths[3]  # of the session's photos: put back whatever happens
    os.replace(photo, photo + ".moved")
    try:
        os.symlink(bundle.catalog.paths[4], photo)  # the indexed path now leads to another photo
        assert status_of(lambda: service.full_image("3")) == 404
    finally:
        if os.path.islink(photo):
            os.remove(photo)
        os.replace(photo + ".moved", photo)


def test_removal_needs_the_token_and_keeps_the_other_ids(fitted_copy):
    assert status_of(lambda: SearchService(Searcher(Bundle.load(fitted_copy))).authorise(f"Bearer {TOKEN}")) == 403
    service = SearchService(Searcher(Bundle.load(fitted_copy)), write_token=TOKEN)
    assert status_of(lambda: service.authorise("Bearer wrong")) == 401
    assert status_of(lambda: service.authorise(TOKEN)) == 401  # no scheme
    service.authorise(f"Bearer {TOKEN}")
    path_of_12 = service.searcher.bundle.catalog.paths[service.searcher.bundle.catalog.row_of(12)]
    assert service.remove_listed({"ids": [10, 11]})["removed"] == [10, 11]
    catalog = service.searcher.bundle.catalog  # the service serves the new bundle at once
    assert catalog.paths[catalog.row_of(12)] == path_of_12 and catalog.row_of(11) is None
    with pytest.raises(UnknownImage):
        service.remove(["11"])
    with pytest.raises(InputError, match="non-empty list"):
        service.remove_listed({"ids": ["3"]})
    assert status_of(lambda: service.remove(["3x"])) == 404
    with pytest.raises(InputError, match="at least 16 characters"):
        SearchService(service.searcher, write_token="short")


def test_duplicate_groups_are_worked_out_once_per_bundle_and_distance(searcher, monkeypatch, capfd):
    import pipeline.serve.service as service_module

    calls = []
    real = service_module.find_duplicates
    monkeypatch.setattr(service_module, "find_duplicates", lambda *args, **kwargs: calls.append(args[1:]) or real(
        *args, **kwargs))
    service = SearchService(searcher)
    first = service.duplicates()
    assert service.duplicates("") == service.duplicates() == first and len(calls) == 1  # answered from memory
    service.duplicates("0.1")
    assert len(calls) == 2 and calls[1][0] == 0.1
    assert "groups" in first
    assert capfd.readouterr().err == ""  # no progress bar in the server's log
    with pytest.raises(InputError, match="max_distance"):
        service.duplicates("-1")
