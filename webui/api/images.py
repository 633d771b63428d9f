"""Images at the API edge: base64 in and out, and (only when enabled) http(s) URLs.

AUTOMATIC1111 accepts an image field as raw base64, a `data:image/...;base64,` URL, or an
http(s) URL it downloads. Easel accepts the same, but a URL only when the protected
setting `api_enable_requests` is on, and never one whose host resolves to a private,
loopback, link-local or otherwise non-global address (no reaching into the server's own
network): `webui/public_fetch.py`, which the Extensions tab's index URL shares. Every
failure is a 422 naming the field.
"""
from __future__ import annotations

import base64
from typing import Callable

from PIL import Image

from ..core.image_input import DEFAULT_MAX_MEGAPIXELS, ImageInputError, decode_base64_image, open_image_checked
from ..core.images import encode_image
from ..public_fetch import MAX_REDIRECTS, FetchRefused, PinnedBackend, fetch_public, public_addresses  # noqa: F401
from .errors import invalid

MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024
DOWNLOAD_TIMEOUT = 20.0


def encode_b64(image: Image.Image, fmt: str = "png", infotext: str | None = None, quality: int = 80) -> str:
    """base64 of the image file, with the infotext embedded as the saved files carry it."""
    return base64.b64encode(encode_image(image, fmt, infotext, quality)).decode("ascii")


def _require_enabled(field: str, enabled: bool) -> None:
    if not enabled:
        raise invalid(field, "image URLs are turned off; send the image as base64 (an administrator can allow "
                             "URLs with the setting api_enable_requests)")


def fetch_url(field: str, url: str, *, resolve: Callable[[str], list[str]] | None = None, network=None) -> bytes:
    """GET an image URL through the public-address filter (`public_fetch`); a 422 naming `field` otherwise."""
    try:
        return fetch_public(url, noun="image URL", max_bytes=MAX_DOWNLOAD_BYTES, timeout=DOWNLOAD_TIMEOUT,
                            accept=b"image/*", resolve=resolve, network=network)
    except FetchRefused as exc:
        raise invalid(field, str(exc)) from exc


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
