"""Fetching image URLs from a local HTTP server: limits, errors, redirects, and the public-only guard."""

import shutil
import time

import pytest

from helpers import SAMPLE
from pipeline.data.fetch import fetch_url, is_public_address
from pipeline.errors import ImageError, shown

PHOTO = sorted((SAMPLE / "shoes").glob("*.jpg"))[0]


@pytest.fixture
def served(http_root, http_url):
    shutil.copy(PHOTO, http_root / "photo.jpg")
    return http_url


def test_returns_the_served_bytes(served):
    assert fetch_url(f"{served}/photo.jpg") == PHOTO.read_bytes()


def test_every_redirect_hop_is_checked(served, monkeypatch):
    import pipeline.data.fetch as fetch

    checked = []
    original = fetch._check_url
    monkeypatch.setattr(fetch, "_check_url", lambda url, *args: (checked.append(url), original(url, *args)))
    assert fetch_url(f"{served}/redirect/2") == PHOTO.read_bytes()
    assert checked == [f"{served}/redirect/2", f"{served}/redirect/1", f"{served}/photo.jpg"]


def test_a_redirect_to_another_scheme_is_refused(served, http_root):
    with pytest.raises(ImageError, match="only http and https"):
        fetch_url(f"{served}/redirect-to-file")


def test_follows_redirects_up_to_the_limit(served):
    assert fetch_url(f"{served}/redirect/3") == PHOTO.read_bytes()
    with pytest.raises(ImageError, match="more than 5 redirects"):
        fetch_url(f"{served}/redirect/9")


@pytest.mark.parametrize(
    "path, options, reason, kind",
    [
        ("/missing.jpg", {}, "HTTP 404", "unreachable"),
        ("/page.html", {}, "not an image .content type text/html", "not_image"),
        ("/slow", {"timeout": 0.5}, "timed out after 0.5 s", "unreachable"),
        ("/photo.jpg", {"max_bytes": 1000}, "too large", "too_large"),
    ],
    ids=["404", "html", "timeout", "too-large"],
)
def test_errors_are_clear_and_typed(served, path, options, reason, kind):
    with pytest.raises(ImageError, match=reason) as caught:
        fetch_url(served + path, **options)
    assert caught.value.source == served + path and caught.value.kind == kind


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/a.jpg", "just/a/path.jpg"])
def test_refuses_other_schemes(url):
    with pytest.raises(ImageError, match="only http and https") as caught:
        fetch_url(url)
    assert caught.value.kind == "refused"


def test_connection_refused_is_clear():
    with pytest.raises(ImageError, match="cannot connect"):
        fetch_url("http://127.0.0.1:9/photo.jpg", timeout=2)


def test_public_only_refuses_loopback_and_private_hosts(served):
    for url in (f"{served}/photo.jpg", "http://localhost:9/x.jpg", "http://10.1.2.3/x.jpg", "http://[::1]/x.jpg",
                "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(ImageError, match="refused: .* non-public address") as caught:
            fetch_url(url, allow_private=False)
        assert caught.value.kind == "refused"


def test_public_only_checks_the_connected_peer_too(served, monkeypatch):
    """A host that resolves to a public address at check time but connects to loopback (DNS rebinding)."""
    import pipeline.data.fetch as fetch

    monkeypatch.setattr(fetch, "_resolve", lambda host, port: {"93.184.216.34"})  # the check sees a public address
    with pytest.raises(ImageError, match="refused: connected to a non-public address"):
        fetch_url(f"{served}/photo.jpg", allow_private=False)


@pytest.mark.parametrize(
    "address, public",
    [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
     ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.1.1", False), ("::1", False), ("fe80::1", False),
     ("0.0.0.0", False), ("224.0.0.1", False), ("::ffff:127.0.0.1", False), ("100.64.0.1", False),
     # IPv6 forms that carry an IPv4 address: judged by it
     ("64:ff9b::7f00:1", False), ("64:ff9b::a00:1", False), ("64:ff9b::808:808", True), ("64:ff9b:1::a9fe:a9fe", False),
     ("2002:7f00:1::", False), ("2002:c0a8:101::1", False), ("2002:808:808::", True), ("::127.0.0.1", False),
     ("::8.8.8.8", True), ("::ffff:0:7f00:1", False), ("::ffff:0:a9fe:a9fe", False),
     ("2001:0:4136:e378:8000:63bf:80ff:fffe", False), ("::", False)],
)
def test_is_public_address(address, public):
    assert is_public_address(address) is public


def test_a_server_that_drips_bytes_meets_the_total_time_limit(served):
    start = time.monotonic()
    with pytest.raises(ImageError, match="timed out after 1 s") as caught:
        fetch_url(served + "/drip", timeout=1)
    assert time.monotonic() - start < 2.5 and caught.value.kind == "unreachable"  # not the 6 s of the drip


@pytest.mark.parametrize("url", ["http://[::1", "http://example.com:99999/x.jpg", "http://" + "a" * 300 + ".com/x.jpg",
                                 "http://a..b/x.jpg", "http://[zz::1]/x.jpg"])
@pytest.mark.parametrize("allow_private", [True, False])
def test_malformed_urls_are_clean_errors(url, allow_private):
    with pytest.raises(ImageError, match="not a valid URL") as caught:
        fetch_url(url, timeout=2, allow_private=allow_private)
    assert caught.value.kind == "invalid" and str(caught.value).startswith(shown(url))  # a long one cut in the middle


def test_a_redirect_to_a_malformed_url_is_a_clean_error(served, http_root):
    with pytest.raises(ImageError, match="not a valid URL"):
        fetch_url(served + "/redirect-to-bad-port")
