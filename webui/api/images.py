"""Images at the API edge: base64 in and out, and (only when enabled) http(s) URLs.

AUTOMATIC1111 accepts an image field as raw base64, a `data:image/...;base64,` URL, or an
http(s) URL it downloads. Easel accepts the same, but a URL only when the protected
setting `api_enable_requests` is on, and never one whose host resolves to a private,
loopback, link-local or otherwise non-global address (no reaching into the server's own
network). Every failure is a 422 naming the field.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from typing import Callable
from urllib.parse import urlsplit

from PIL import Image

from ..core.image_input import DEFAULT_MAX_MEGAPIXELS, ImageInputError, open_image_checked
from ..core.images import encode_image
from .errors import invalid

MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024
DOWNLOAD_TIMEOUT = 20.0


def encode_b64(image: Image.Image, fmt: str = "png", infotext: str | None = None, quality: int = 80) -> str:
    """base64 of the image file, with the infotext embedded as the saved files carry it."""
    return base64.b64encode(encode_image(image, fmt, infotext, quality)).decode("ascii")


def host_is_public(host: str, resolve: Callable[[str], list[str]] | None = None) -> bool:
    """True only if every address the host resolves to is globally routable."""
    resolve = resolve or _resolve
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolve(host)]
        except (OSError, ValueError):
            return False
    if not addresses:
        return False
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            return False
    return True


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def check_url(field: str, url: str, enabled: bool) -> str:
    """Raise a 422 naming `field` unless the URL may be fetched; returns the URL."""
    if not enabled:
        raise invalid(field, "image URLs are turned off; send the image as base64 (an administrator can allow "
                             "URLs with the setting api_enable_requests)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(field, "only http and https image URLs are accepted")
    if parts.username or parts.password:
        raise invalid(field, "image URLs must not contain credentials")
    if not host_is_public(parts.hostname):
        raise invalid(field, f"{parts.hostname!r} is a private, loopback or link-local address; refused")
    return url


def _download(field: str, url: str) -> bytes:
    import httpx

    try:
        with httpx.Client(follow_redirects=False, timeout=DOWNLOAD_TIMEOUT) as client:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise invalid(field, f"the image URL answered HTTP {response.status_code}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data.extend(chunk)
                    if len(data) > MAX_DOWNLOAD_BYTES:
                        raise invalid(field, f"the image at the URL is larger than {MAX_DOWNLOAD_BYTES} bytes")
                return bytes(data)
    except httpx.HTTPError as exc:
        raise invalid(field, f"the image URL could not be fetched ({type(exc).__name__})") from exc


def decode_image(field: str, value: str, *, allow_urls: bool = False,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """A PIL image from base64, a data: URL, or (if allowed and public) an http(s) URL."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "an image is required (base64)")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        data = _download(field, check_url(field, text, allow_urls))
    else:
        if text.startswith("data:"):
            header, sep, text = text.partition(",")
            if not sep or ";base64" not in header:
                raise invalid(field, "a data: URL must be base64 encoded")
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid(field, "is not valid base64") from exc
    try:
        return open_image_checked(data, max_megapixels, field)
    except ImageInputError as exc:
        raise invalid(field, str(exc).removeprefix(f"{field}: ")) from exc
