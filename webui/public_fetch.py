"""Fetching a URL someone else typed, without letting them reach the server's own network.

Used for image URLs in API requests and for the Extensions tab's index URL. A URL is fetched
only over http(s), without credentials in it, from a host whose every address is globally
routable (never private, loopback, link-local or multicast). The connection goes to the very
address that was checked (a DNS server that answers a public address to the check and
127.0.0.1 a moment later gets nowhere), and each redirect (at most MAX_REDIRECTS) is checked
and pinned the same way. Every refusal is a FetchRefused whose message says why, phrased with
the caller's noun ("image URL", "index URL").
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 3
REDIRECT_STATUSES = {301, 302, 303, 307, 308}


class FetchRefused(ValueError):
    """The URL may not be fetched, or fetching it failed; the message is meant for the user."""

    user_facing = True


def public_addresses(host: str, resolve: Callable[[str], list[str]] | None = None) -> list[str] | None:
    """The host's addresses if every one is globally routable, else None (unresolvable counts as not public)."""
    resolve = resolve or _resolve
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolve(host)]
        except (OSError, ValueError):
            return None
    if not addresses:
        return None
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            return None
    return [str(a) for a in addresses]


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def check_url(url: str, noun: str, resolve: Callable[[str], list[str]] | None = None,
              pinned: Callable[[str], str | None] = lambda host: None) -> tuple[str, str]:
    """(host, the address to connect to) for a URL that may be fetched; FetchRefused otherwise.

    `pinned`: addresses already checked in this download (a redirect back to a host keeps its address).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"only http and https {noun}s are accepted")
    if parts.username or parts.password:
        raise FetchRefused(f"{noun}s must not contain credentials")
    known = pinned(parts.hostname)
    if known is not None:
        return parts.hostname, known
    addresses = public_addresses(parts.hostname, resolve)
    if addresses is None:
        raise FetchRefused(f"{parts.hostname!r} is a private, loopback or link-local address; refused")
    return parts.hostname, addresses[0]


class PinnedBackend:
    """An httpcore network backend that connects only to addresses checked beforehand.

    httpx would resolve the host name again when it connects; here the connection goes to the
    address that was checked, while the URL (so the Host header, TLS SNI and certificate check)
    keeps the name. A host that was not checked is never connected to.
    """

    def __init__(self, inner=None):
        import httpcore

        self.pins: dict[str, str] = {}
        self.inner = inner or httpcore.SyncBackend()

    def pin(self, host: str, address: str) -> None:
        self.pins[host.lower().strip("[]")] = address

    def pinned(self, host: str) -> str | None:
        return self.pins.get(host.lower().strip("[]"))

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None):
        import httpcore

        address = self.pinned(host)
        if address is None:
            raise httpcore.ConnectError(f"{host} was not checked; refusing to connect")
        return self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                      socket_options=socket_options)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        import httpcore

        raise httpcore.ConnectError("public URLs never use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def fetch_public(url: str, *, noun: str, max_bytes: int, timeout: float, accept: bytes = b"*/*",
                 resolve: Callable[[str], list[str]] | None = None, network=None) -> bytes:
    """GET a public URL: each host checked once and connected to at that address; at most
    MAX_REDIRECTS redirects, each to a URL that passes the same check; at most `max_bytes` in
    `timeout` seconds. `network` is the httpcore backend underneath the pinning (the real
    sockets unless a test routes them)."""
    import httpcore

    deadline = time.monotonic() + timeout
    timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    backend = PinnedBackend(network)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        host, address = check_url(current, noun, resolve, backend.pinned)
        backend.pin(host, address)
        try:
            with httpcore.ConnectionPool(network_backend=backend, retries=0) as pool:
                with pool.stream("GET", current, headers=[(b"Accept", accept), (b"User-Agent", b"Easel")],
                                 extensions={"timeout": timeouts}) as response:
                    if response.status in REDIRECT_STATUSES:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise FetchRefused(f"the {noun} answered HTTP {response.status} without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status != 200:
                        raise FetchRefused(f"the {noun} answered HTTP {response.status}")
                    data = bytearray()
                    for chunk in response.iter_stream():
                        data.extend(chunk)
                        if len(data) > max_bytes:
                            raise FetchRefused(f"the file at the {noun} is larger than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise FetchRefused(f"the {noun} took longer than {timeout:g} s")
                    return bytes(data)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            raise FetchRefused(f"the {noun} could not be fetched ({type(exc).__name__})") from exc
    raise FetchRefused(f"the {noun} redirected more than {MAX_REDIRECTS} times")


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
