"""Images at the API edge: base64 in and out, and (only when enabled) http(s) URLs.

AUTOMATIC1111 accepts an image field as raw base64, a `data:image/...;base64,` URL, or an
http(s) URL it downloads. Easel accepts the same, but a URL only when the protected
setting `api_enable_requests` is on, and never one whose host resolves to a private,
loopback, link-local or otherwise non-global address (no reaching into the server's own
network). The download connects to the very address that was checked (no second DNS
lookup a rebinding DNS server could answer differently), and each redirect is checked the
same way. Every failure is a 422 naming the field.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
import time
from typing import Callable
from urllib.parse import urljoin, urlsplit

from PIL import Image

from ..core.image_input import DEFAULT_MAX_MEGAPIXELS, ImageInputError, decode_base64_image, open_image_checked
from ..core.images import encode_image
from .errors import invalid

MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024
DOWNLOAD_TIMEOUT = 20.0
MAX_REDIRECTS = 3
REDIRECT_STATUSES = {301, 302, 303, 307, 308}


def encode_b64(image: Image.Image, fmt: str = "png", infotext: str | None = None, quality: int = 80) -> str:
    """base64 of the image file, with the infotext embedded as the saved files carry it."""
    return base64.b64encode(encode_image(image, fmt, infotext, quality)).decode("ascii")


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


def _checked(field: str, url: str, resolve: Callable[[str], list[str]] | None,
             pinned: Callable[[str], str | None] = lambda host: None) -> tuple[str, str]:
    """(host, the address to connect to) for a URL that may be fetched; a 422 naming `field` otherwise.

    `pinned`: addresses already checked in this download (a redirect back to a host keeps its address).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(field, "only http and https image URLs are accepted")
    if parts.username or parts.password:
        raise invalid(field, "image URLs must not contain credentials")
    known = pinned(parts.hostname)
    if known is not None:
        return parts.hostname, known
    addresses = public_addresses(parts.hostname, resolve)
    if addresses is None:
        raise invalid(field, f"{parts.hostname!r} is a private, loopback or link-local address; refused")
    return parts.hostname, addresses[0]


def _require_enabled(field: str, enabled: bool) -> None:
    if not enabled:
        raise invalid(field, "image URLs are turned off; send the image as base64 (an administrator can allow "
                             "URLs with the setting api_enable_requests)")


class PinnedBackend:
    """An httpcore network backend that connects only to addresses checked beforehand.

    httpx would resolve the host name again when it connects, and a DNS server that answers
    a public address to the check and 127.0.0.1 a moment later ("DNS rebinding") would get
    the server to fetch from its own network. Here the connection goes to the address that
    was checked, while the URL (so the Host header, TLS SNI and certificate check) keeps
    the name. A host that was not checked is never connected to.
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

        raise httpcore.ConnectError("image URLs never use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def fetch_url(field: str, url: str, *, resolve: Callable[[str], list[str]] | None = None, network=None) -> bytes:
    """GET an image URL: each host checked once and connected to at that address; at most
    MAX_REDIRECTS redirects, each to a URL that passes the same check. `network` is the httpcore
    backend underneath the pinning (the real sockets unless a test routes them)."""
    import httpcore

    deadline = time.monotonic() + DOWNLOAD_TIMEOUT
    timeouts = {"connect": DOWNLOAD_TIMEOUT, "read": DOWNLOAD_TIMEOUT, "write": DOWNLOAD_TIMEOUT,
                "pool": DOWNLOAD_TIMEOUT}
    backend = PinnedBackend(network)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        host, address = _checked(field, current, resolve, backend.pinned)
        backend.pin(host, address)
        try:
            with httpcore.ConnectionPool(network_backend=backend, retries=0) as pool:
                with pool.stream("GET", current, headers=[(b"Accept", b"image/*"), (b"User-Agent", b"Easel")],
                                 extensions={"timeout": timeouts}) as response:
                    if response.status in REDIRECT_STATUSES:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise invalid(field, f"the image URL answered HTTP {response.status} without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status != 200:
                        raise invalid(field, f"the image URL answered HTTP {response.status}")
                    data = bytearray()
                    for chunk in response.iter_stream():
                        data.extend(chunk)
                        if len(data) > MAX_DOWNLOAD_BYTES:
                            raise invalid(field, f"the image at the URL is larger than {MAX_DOWNLOAD_BYTES} bytes")
                        if time.monotonic() > deadline:
                            raise invalid(field, f"the image URL took longer than {DOWNLOAD_TIMEOUT:g} s")
                    return bytes(data)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            raise invalid(field, f"the image URL could not be fetched ({type(exc).__name__})") from exc
    raise invalid(field, f"the image URL redirected more than {MAX_REDIRECTS} times")


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def decode_image(field: str, value: str, *, allow_urls: bool = False,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """A PIL image from base64, a data: URL, or (if allowed and public) an http(s) URL."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "an image is required (base64)")
    text = value.strip()
    try:
        if text.startswith(("http://", "https://")):
            _require_enabled(field, allow_urls)
            data = fetch_url(field, text)  # checks the URL (and every redirect) itself
            return open_image_checked(data, max_megapixels, field)
        return decode_base64_image(text, field, max_megapixels)
    except ImageInputError as exc:
        raise invalid(field, str(exc).removeprefix(f"{field}: ")) from exc
