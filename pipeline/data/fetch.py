"""Fetching an image URL safely: http(s) only, time and size limits, and optionally public hosts only.

With ``allow_private=False`` (the server's default) a URL is refused when its host resolves to a
loopback, private, link-local, reserved, multicast or unspecified address. The check runs before
every redirect hop and again on the address each connection actually reached, so a DNS answer
that changes between the check and the connection (rebinding) is caught too.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Optional
from urllib.parse import urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import ImageError

URL_MAX_BYTES = 20 * 1024 * 1024
URL_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
MAX_URL_CHARACTERS = 8192  # longer URLs are refused unfetched (and never echoed whole)
_NON_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


# IPv6 prefixes whose last 32 bits carry an IPv4 address that the packets end up at (or may):
# NAT64 (well-known and local-use), IPv4-compatible, and SIIT's IPv4-translated addresses.
_IPV4_IN_LAST_32_BITS = tuple(ipaddress.ip_network(prefix) for prefix in
                              ("64:ff9b::/96", "64:ff9b:1::/48", "::/96", "::ffff:0:0:0/96"))


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses: False for loopback, private, shared
    (carrier-grade NAT), link-local, reserved, multicast and unspecified ones. An IPv6 address
    that embeds an IPv4 one (mapped, NAT64, 6to4, Teredo, IPv4-compatible or -translated) is
    judged by that IPv4 address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in network for network in _IPV4_IN_LAST_32_BITS) and int(ip) & 0xFFFFFFFF:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


class _NonPublicPeer(OSError):
    """Raised inside a connection that reached a non-public address."""


class _PublicOnlyHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        peer = self.sock.getpeername()[0]
        if not is_public_address(peer):
            self.sock.close()
            raise _NonPublicPeer(f"connected to non-public address {peer}")


class _PublicOnlyHTTPSConnection(_PublicOnlyHTTPConnection, HTTPSConnection):
    pass


class _PublicOnlyAdapter(HTTPAdapter):
    """A requests adapter whose connections refuse non-public peers."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PublicHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _PublicOnlyHTTPConnection}),
            "https": type("PublicHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": _PublicOnlyHTTPSConnection}),
        }


def _resolve(host: str, port: int) -> set[str]:
    return {info[4][0] for info in socket.getaddrinfo(host, port)}


def check_url(url: str, original: Optional[str] = None) -> tuple[str, Optional[int]]:
    """The host and port of an http(s) URL, checked without touching the network: ImageError naming
    ``original`` (default: ``url``) for a malformed URL, another scheme, or no host."""
    original = original or url
    if len(url) > MAX_URL_CHARACTERS:
        raise ImageError(original, f"the URL is {len(url):,} characters long, over the {MAX_URL_CHARACTERS:,} allowed",
                         "refused")
    try:
        parsed = urlparse(url)
        if parsed.hostname and not parsed.hostname.startswith("["):
            parsed.hostname.encode("idna")  # every label 1 to 63 characters
        port = parsed.port  # a port out of range raises here
    except (ValueError, UnicodeError) as exc:
        raise ImageError(original, f"not a valid URL ({exc})", "invalid") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(original, f"only http and https URLs are supported, not {scheme or 'a bare path'!r}", "refused")
    if not parsed.hostname:
        raise ImageError(original, "the URL has no host", "refused")
    return parsed.hostname, port


def _check_url(url: str, original: str, allow_private: bool) -> None:
    host, port = check_url(url, original)
    if allow_private:
        return
    try:
        addresses = _resolve(host, port or 80)
    except socket.gaierror:
        raise ImageError(original, f"cannot resolve host {host}", "unreachable") from None
    blocked = sorted(a for a in addresses if not is_public_address(a))
    if blocked:
        raise ImageError(original, f"refused: {host} resolves to a non-public address ({blocked[0]}); a service "
                                   f"started with --allow-private-urls fetches such addresses", "refused")


def fetch_url(url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES,
              allow_private: bool = True) -> bytes:
    """Download an image over http(s) with a total time limit and a size limit.

    Raises ImageError naming the URL for a bad scheme, a refused host, a connection failure, an
    HTTP error status, a non-image content type, a body over ``max_bytes``, or a download slower
    than ``timeout`` seconds. Redirects are followed (at most MAX_REDIRECTS), each hop checked.
    """
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        if not allow_private:
            session.mount("http://", _PublicOnlyAdapter())
            session.mount("https://", _PublicOnlyAdapter())
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(target, url, allow_private)
            try:
                with session.get(target, stream=True, timeout=timeout, allow_redirects=False) as response:
                    if response.is_redirect:
                        target = urljoin(target, response.headers["Location"])
                        continue
                    return _read_body(response, url, max_bytes, deadline, timeout)
            except requests.Timeout:
                raise ImageError(url, f"timed out after {timeout:g} s", "unreachable") from None
            except requests.ConnectionError as exc:
                if "_NonPublicPeer" in repr(exc) or "non-public address" in str(exc):
                    raise ImageError(url, "refused: connected to a non-public address; a service started with "
                                          "--allow-private-urls fetches such addresses", "refused") from None
                if "timed out" in str(exc).lower():  # a read timeout inside the body arrives as a ConnectionError
                    raise ImageError(url, f"timed out after {timeout:g} s", "unreachable") from None
                raise ImageError(url, "cannot connect", "unreachable") from None
            except requests.RequestException as exc:
                raise ImageError(url, f"request failed ({exc})", "unreachable") from None
    raise ImageError(url, f"more than {MAX_REDIRECTS} redirects", "unreachable")


def _read_body(response: requests.Response, url: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    if response.status_code >= 400:
        raise ImageError(url, f"HTTP {response.status_code} {response.reason}".rstrip(), "unreachable")
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith(_NON_IMAGE_TYPES):
        raise ImageError(url, f"not an image (content type {content_type.split(';')[0]})", "not_image")
    declared = response.headers.get("Content-Length") or "0"
    if declared.isdecimal() and (len(declared) > 15 or int(declared) > max_bytes):
        raise ImageError(url, f"too large ({declared} bytes, limit {max_bytes})", "too_large")
    body = bytearray()
    # read1 returns what has arrived (at least a byte), so a server that drips bytes still meets the deadline
    while chunk := response.raw.read1(64 * 1024, decode_content=True):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise ImageError(url, f"too large (over {max_bytes} bytes)", "too_large")
        if time.monotonic() > deadline:
            raise ImageError(url, f"timed out after {timeout:g} s", "unreachable")
    return bytes(body)
