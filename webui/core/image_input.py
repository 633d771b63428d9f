"""Opening images that came from outside (uploads, API payloads) without trusting them.

A small PNG can declare a 50,000 x 50,000 canvas and take gigabytes to decode. Pillow
only reads the header in `Image.open`, so the declared size is checked there, against
our own limit (the `img_max_size_mp` setting, 100 MP by default), before any pixel
is decoded. Pillow's own decompression-bomb guard stays on as well; whichever limit is
lower wins. Every failure is a `ImageInputError` (a ValueError) with a message a user
can act on, never a traceback.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_MEGAPIXELS = 100.0


def max_megapixels(settings) -> float:
    """The `img_max_size_mp` setting in force (the default when there are no settings or it is unset)."""
    value = settings.get("img_max_size_mp") if settings is not None else None
    return float(value) if value else DEFAULT_MAX_MEGAPIXELS


class ImageInputError(ValueError):
    """An uploaded image was refused or could not be read; the message says why."""

    user_facing = True


def _label(source: object, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return Path(source).name
    return "the image"


def open_image_checked(source: str | Path | bytes | BinaryIO, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                       name: str | None = None) -> Image.Image:
    """Decode an untrusted image after checking its declared size; returns a loaded (detached) image.

    `source` is a path, raw bytes or a binary file object. `name` is used in messages
    (e.g. the uploaded file's original name). Animated images give their first frame.
    """
    label = _label(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: BinaryIO = io.BytesIO(bytes(source))
        owned = True
    elif isinstance(source, (str, Path)):
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise ImageInputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
        owned = True
    else:
        stream, owned = source, False
    try:
        with warnings.catch_warnings():
            # Between Pillow's warning threshold and its hard limit it only warns; our limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream)
            except Image.DecompressionBombError:
                raise ImageInputError(f"{label}: the image is too large to open safely "
                                      f"(over Pillow's limit of {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} "
                                      "megapixels)") from None
            except UnidentifiedImageError:
                raise ImageInputError(f"{label}: not an image file Easel can read "
                                      "(PNG, JPEG, WebP, BMP, GIF, TIFF ...)") from None
            width, height = image.size
            megapixels = width * height / 1e6
            if megapixels > max_megapixels:
                raise ImageInputError(f"{label}: {width}x{height} is {megapixels:.1f} megapixels; the largest "
                                      f"image accepted is {max_megapixels:g} megapixels (setting "
                                      "'img_max_size_mp')")
            if width < 1 or height < 1:
                raise ImageInputError(f"{label}: the image is empty ({width}x{height})")
            try:
                image.load()
            except Image.DecompressionBombError:
                raise ImageInputError(f"{label}: the image is too large to open safely") from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageInputError(f"{label}: the file is damaged or truncated ({exc})") from None
            return image
    finally:
        if owned:
            stream.close()
