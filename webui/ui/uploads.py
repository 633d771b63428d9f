"""Image upload components that check an upload's declared size before anything decodes it.

Gradio's Image and ImageEditor open uploads with Pillow before a handler runs. A small
PNG can declare a 50,000 x 50,000 canvas, so every upload slot in Easel uses one of these
instead: the file goes through core/image_input.open_image_checked (header checked
against the `img_max_size_mp` setting; Pillow's own decompression-bomb guard stays on),
and a refused file stops the event with a `gr.Error` carrying the message, which the
page shows and API clients of the Gradio routes receive; the handler never runs.

The limit is read from settings on every upload, so changing it needs no restart. It is
set as a private attribute after construction (not an __init__ argument) because Gradio
sends every __init__ argument to the browser as component config.
"""
from __future__ import annotations

import base64
import binascii
import html
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from PIL import Image, ImageOps

from ..core.image_input import DEFAULT_MAX_MEGAPIXELS, ImageInputError, max_megapixels, open_image_checked

Limit = Callable[[], float]


def settings_limit(settings: Any) -> Limit:
    """The upload limit in megapixels, read from the settings store each time."""
    return lambda: max_megapixels(settings)


def _source(payload: Any) -> str | bytes | None:
    """The upload's bytes (data: URL) or its file path; None when there is nothing to read."""
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    url = str(getattr(payload, "url", None) or "")
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=False)
        except (IndexError, binascii.Error, ValueError):
            raise gr.Error("The pasted image could not be read (damaged data URL).") from None
    path = getattr(payload, "path", None)
    return str(path) if path else None


def _label(component: gr.components.Component, payload: Any) -> str:
    name = getattr(payload, "orig_name", None) or ""
    label = getattr(component, "label", None) or "Image"
    return f"{label} ({Path(name).name})" if name else str(label)


def check_upload(component: gr.components.Component, payload: Any) -> Image.Image | None:
    """Decode one uploaded file after checking its declared size; refusal -> gr.Error naming the slot and file."""
    source = _source(payload)
    if source is None:
        return None
    limit: Limit = getattr(component, "_easel_limit", None) or (lambda: DEFAULT_MAX_MEGAPIXELS)
    try:
        return open_image_checked(source, limit(), name=_label(component, payload))
    except ImageInputError as exc:
        raise gr.Error(html.escape(str(exc), quote=False), title="Image refused", print_exception=False) from None


class CheckedImage(gr.Image):
    """gr.Image whose uploads are size-checked and decoded by Easel (one decode).

    type="pil" only gets the decoded image (EXIF-rotated and converted to image_mode as
    gr.Image does); other types are checked, then handed to gr.Image as usual.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):  # type: ignore[override]
        image = check_upload(self, payload)
        if image is None or self.type != "pil":
            return super().preprocess(payload)
        if image.getexif().get(274, 1) != 1:  # EXIF orientation: show it the way cameras meant it
            image = ImageOps.exif_transpose(image)
        if self.image_mode is not None and image.format != "GIF":
            image = image.convert(self.image_mode)
        return image


class CheckedImageEditor(gr.ImageEditor):
    """gr.ImageEditor whose background, layers and composite are each size-checked before decoding.

    The canvas layers come from the browser at the background's size, so they are
    checked too (a crafted request could send anything).
    """

    def get_block_name(self) -> str:
        return "imageeditor"

    def convert_and_format_image(self, file, flatten_on_white: bool = False):  # type: ignore[override]
        check_upload(self, file)
        return super().convert_and_format_image(file, flatten_on_white)


class UploadedImage(gr.Image):
    """An image upload that hands the handler the uploaded file's path, undecoded.

    For handlers that decode later themselves (Extras queues the file and opens it with
    open_image_checked on the worker). Pasted data: URLs fall back to a checked decode.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):  # type: ignore[override]
        if payload is not None and getattr(payload, "path", None) and not str(payload.url or "").startswith("data:"):
            return str(payload.path)
        check_upload(self, payload)
        return super().preprocess(payload)


def with_limit(component: Any, limit: Limit) -> Any:
    component._easel_limit = limit
    return component


def checked_image(limit: Limit, **kwargs: Any) -> CheckedImage:
    """A size-checked image upload (gr.Image arguments)."""
    return with_limit(CheckedImage(**kwargs), limit)


def checked_editor(limit: Limit, **kwargs: Any) -> CheckedImageEditor:
    """A size-checked image editor (gr.ImageEditor arguments)."""
    return with_limit(CheckedImageEditor(**kwargs), limit)


def uploaded_image(limit: Limit, **kwargs: Any) -> UploadedImage:
    """An upload passed on as a file path (the handler decodes it with open_image_checked)."""
    return with_limit(UploadedImage(**kwargs), limit)
