"""Opening images that came from outside (uploads, API payloads) without trusting them.

A small PNG can declare a 50,000 x 50,000 canvas and take gigabytes to decode. Pillow
only reads the header in `Image.open`, so the declared size is checked there, against
our own limit (the `img_max_size_mp` setting, 100 MP by default), before any pixel
is decoded. Pillow's own decompression-bomb guard stays on as well; whichever limit is
lower wins. Every failure is a `ImageInputError` (a ValueError) with a message a user
can act on, never a traceback.
"""
from __future__ import annotations

import base64
import binascii
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


# Pillow plug-ins an upload may use: every format Pillow reads except EPS, whose loader runs Ghostscript
# (an external interpreter with a history of exploits) on the uploaded file.
REFUSED_FORMATS = frozenset({"EPS"})


def readable_formats() -> list[str]:
    """The Pillow formats accepted from outside (all registered readers but REFUSED_FORMATS)."""
    Image.init()
    return [fmt for fmt in Image.OPEN if fmt not in REFUSED_FORMATS]


def open_image_checked(source: str | Path | bytes | BinaryIO, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                       name: str | None = None) -> Image.Image:
    """Decode an untrusted image after checking its declared size; returns a loaded (detached) image.

    `source` is a path, raw bytes or a binary file object. `name` is used in messages
    (e.g. the uploaded file's original name). Animated images give their first frame.
    This is the one place untrusted image bytes are decoded: whatever Pillow raises on a
    damaged file (ValueError, OSError, SyntaxError, IndexError, struct.error, EOFError,
    zlib.error, TypeError, MemoryError ...) leaves it as an ImageInputError.
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
            return _decode(stream, label, max_megapixels)
    finally:
        if owned:
            stream.close()


def decode_base64_image(value: str, name: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """An image from base64 text or a `data:image/...;base64,` URL, as API clients send them (never a path).

    Errors are ImageInputError messages starting with `name`, the field that carried the text.
    """
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ImageInputError(f"{name}: a data: URL must be base64 encoded")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{name}: is not valid base64") from None
    return open_image_checked(data, max_megapixels, name)


def _decode(stream: BinaryIO, label: str, max_megapixels: float) -> Image.Image:
    try:
        image = Image.open(stream, formats=readable_formats())
    except Image.DecompressionBombError:
        raise ImageInputError(f"{label}: the image is too large to open safely "
                              f"(over Pillow's limit of {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} "
                              "megapixels)") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{label}: not an image file Easel can read "
                              "(PNG, JPEG, WebP, BMP, GIF, TIFF ...)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged header can raise anything
        raise ImageInputError(f"{label}: the file is damaged or not a readable image ({_reason(exc)})") from None
    try:
        width, height = image.size
        megapixels = width * height / 1e6
        if megapixels > max_megapixels:
            raise ImageInputError(f"{label}: {width}x{height} is {megapixels:.1f} megapixels; the largest "
                                  f"image accepted is {max_megapixels:g} megapixels (setting "
                                  "'img_max_size_mp')")
        if width < 1 or height < 1:
            raise ImageInputError(f"{label}: the image is empty ({width}x{height})")
        image.load()
        return image
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(f"{label}: the image is too large to open safely") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds; none of them is the server's fault
        raise ImageInputError(f"{label}: the file is damaged or truncated ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """A short, single-line reason from a decoder exception (no paths: the stream is in memory or ours)."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
