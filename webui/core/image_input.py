"""Opening user-supplied images safely: the size is checked before any pixel is decoded.

Pillow's own decompression-bomb guard stays on; on top of it a configurable limit
(setting `img_max_megapixels`, default 100) refuses huge images with a clear message
instead of decoding hundreds of megabytes.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

DEFAULT_MAX_MEGAPIXELS = 100.0


class ImageInputError(ValueError):
    user_facing = True


def open_image_checked(source: str | Path | bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                       name: str = "image") -> Image.Image:
    """Open, check the declared size, then decode. Raises ImageInputError naming `name`."""
    try:
        handle = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageInputError(f"{name}: not a readable image ({exc})") from None
    width, height = handle.size
    if width * height > max_megapixels * 1_000_000:
        handle.close()
        raise ImageInputError(f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, more than the "
                              f"{max_megapixels:g} allowed (setting img_max_megapixels)")
    try:
        handle.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{name}: the file is damaged or truncated ({exc})") from None
    return handle
