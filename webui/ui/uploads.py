"""Image upload components that check an upload's declared size before anything decodes it.

Gradio's Image and ImageEditor open uploads with Pillow before a handler runs. A small
PNG can declare a 50,000 x 50,000 canvas, so every upload slot in Easel uses one of these
instead: the file goes through core/image_input.open_image_checked (header checked
against the `img_max_size_mp` setting; Pillow's own decompression-bomb guard stays on),
and a refused file stops the event with a `gr.Error` carrying the message, which the
page shows and API clients of the Gradio routes receive; the handler never runs.

Each slot also checks a file the moment it is uploaded (`explain_refusals`): a refused file is
taken out of the slot again and the reason stays written under it, instead of a picture that
looks accepted and a toast on every Generate that vanishes after a few seconds. That check
gets Gradio's raw upload value (its paths already confined to Gradio's upload folder by
Gradio, as for any input) and decodes it the same way Generate will.

The limit is read from settings on every upload, so changing it needs no restart. It is
set as a private attribute after construction (not an __init__ argument) because Gradio
sends every __init__ argument to the browser as component config.

Image editors are never an input of a server event. Gradio's page re-reads the value of every
component that has been an input of a finished event whenever any event changes status (each
queue-panel tick, each progress message of a generation), and reading an ImageEditor exports its
canvases as PNG files and uploads them again: a painted picture went up three files at a time,
several times a second, for as long as the page was open. So each editor has a hidden twin
(`EditorValue`, same checks): events that need the picture first copy the editor's value into the
twin in the browser (`read_editors`, no server round trip), and the server event reads the twin,
which costs nothing to re-read.
"""
from __future__ import annotations

import base64
import binascii
import html
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr
from PIL import Image, ImageOps

from gradio.context import Context

from ..core.image_input import DEFAULT_MAX_MEGAPIXELS, ImageInputError, max_megapixels, open_image_checked
from .common import error_html

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


def _open(component: gr.components.Component, payload: Any) -> Image.Image | None:
    """Decode one uploaded file after checking its declared size (ImageInputError when refused)."""
    source = _source(payload)
    if source is None:
        return None
    limit: Limit = getattr(component, "_easel_limit", None) or (lambda: DEFAULT_MAX_MEGAPIXELS)
    return open_image_checked(source, limit(), name=_label(component, payload))


def check_upload(component: gr.components.Component, payload: Any) -> Image.Image | None:
    """Decode one uploaded file after checking its declared size; refusal -> gr.Error naming the slot and file."""
    try:
        return _open(component, payload)
    except ImageInputError as exc:
        raise gr.Error(html.escape(str(exc), quote=False), title="Image refused", print_exception=False) from None


def refusal(component: gr.components.Component, value: Any) -> str | None:
    """Why a raw upload value (an Image's file, an ImageEditor's background) is refused; None if it is fine."""
    if isinstance(value, dict) and "background" in value:  # ImageEditor: the uploaded picture is the background
        value = value.get("background")
    if not isinstance(value, dict):
        return None
    payload = SimpleNamespace(path=value.get("path"), url=value.get("url"), orig_name=value.get("orig_name"))
    try:
        _open(component, payload)
    except ImageInputError as exc:
        return str(exc)
    except gr.Error as exc:  # a damaged data: URL
        return str(exc.message)
    return None


def explain_refusals(component: gr.components.Component) -> gr.HTML | None:
    """Under `component`, a note that says why an upload was refused; the refused file leaves the slot.

    Call right after creating the component, inside its layout. The upload event it wires is
    kept as `component._easel_checked` so handlers that need the picture can run after it
    (`after_upload`) and see the slot already emptied when the file was refused.
    """
    if Context.root_block is None:  # built outside a page (a test of the component alone)
        return None
    elem_id = getattr(component, "elem_id", None)
    note = gr.HTML("", elem_id=f"{elem_id}_refused" if elem_id else None, elem_classes="easel-refused")

    def check(value: Any):
        reason = refusal(component, value)
        if reason is None:
            return gr.skip(), ""
        return None, error_html(f"Refused: {reason}")

    check_opts = dict(preprocess=False, api_name=False, show_progress="hidden", concurrency_limit=None)
    twin = getattr(component, "_easel_value", None)
    if twin is not None:  # an editor: its picture reaches the server through its twin
        component._easel_checked = read_editors(component.upload, [twin]).then(  # type: ignore[attr-defined]
            check, twin, [component, note], **check_opts)
    else:
        component._easel_checked = component.upload(  # type: ignore[attr-defined]
            check, component, [component, note], **check_opts)
    component.clear(lambda: "", None, note, api_name=False, show_progress="hidden")
    return note


def after_upload(component: gr.components.Component, fn: Callable, inputs: Any, outputs: Any) -> None:
    """Run `fn` once an upload has passed the check (a refused upload reaches it as an empty slot)."""
    checked = getattr(component, "_easel_checked", None)
    if checked is not None:
        checked.then(fn, inputs, outputs, api_name=False, show_progress="hidden")
    else:
        component.upload(fn, inputs, outputs, api_name=False)


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


class EditorValue(CheckedImageEditor):
    """The hidden twin of an editor: holds the editor's value (uploaded files) while a server event reads it.

    Never shown, so the page keeps its value as data and reading it costs nothing; its uploads are
    checked like the editor's (same limit, same label in messages). `mirror_of` (its editor) is set after
    construction: Gradio sends every __init__ argument to the browser.
    """

    mirror_of: CheckedImageEditor


# the browser-side step that copies editors' values into their twins: the values arrive in input order
COPY_VALUES_JS = "(...values) => values"


def editor_value(editor: Any) -> Any:
    """What a server event should take as input for `editor`: its hidden twin (the editor itself if it has none)."""
    return getattr(editor, "_easel_value", None) or editor


def read_editors(listener: Callable[..., Any], inputs: Any) -> Any:
    """Start an event chain on `listener` (e.g. `button.click`) that first copies, in the browser, the value of
    every editor whose twin is among `inputs` into that twin; chain the server event on the result with `.then`.
    """
    twins = [c for c in (inputs if isinstance(inputs, (list, tuple, set)) else [inputs]) if isinstance(c, EditorValue)]
    return listener(None, [t.mirror_of for t in twins], twins, js=COPY_VALUES_JS, queue=False, api_name=False,
                    show_progress="hidden")


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


def _with_note(component: Any, limit: Limit) -> Any:
    with_limit(component, limit)
    explain_refusals(component)
    return component


def _slot(factory: Callable[..., Any], limit: Limit, kwargs: dict[str, Any]) -> Any:
    """The component and its refusal note stacked in one column, so a Row still sees one slot."""
    if Context.root_block is None:
        return with_limit(factory(**kwargs), limit)
    with gr.Column(min_width=kwargs.get("min_width") or 160, scale=kwargs.get("scale") or 1):
        return _with_note(factory(**kwargs), limit)


def checked_image(limit: Limit, **kwargs: Any) -> CheckedImage:
    """A size-checked image upload (gr.Image arguments), with its refusal note under it."""
    return _slot(CheckedImage, limit, kwargs)


def checked_editor(limit: Limit, **kwargs: Any) -> CheckedImageEditor:
    """A size-checked image editor (gr.ImageEditor arguments), with its refusal note under it.

    Inside a page it gets its hidden twin (`editor_value(editor)`), which server events take as input.
    """
    if Context.root_block is None:
        return with_limit(CheckedImageEditor(**kwargs), limit)
    with gr.Column(min_width=kwargs.get("min_width") or 160, scale=kwargs.get("scale") or 1):
        editor = with_limit(CheckedImageEditor(**kwargs), limit)
        twin_args = {k: v for k, v in kwargs.items() if k in ("label", "type", "image_mode")}
        elem_id = kwargs.get("elem_id")
        twin = with_limit(EditorValue(visible=False, elem_id=f"{elem_id}_value" if elem_id else None, **twin_args),
                          limit)
        twin.mirror_of = editor
        editor._easel_value = twin
        explain_refusals(editor)
    return editor


def uploaded_image(limit: Limit, **kwargs: Any) -> UploadedImage:
    """An upload passed on as a file path (the handler decodes it with open_image_checked), with its note."""
    return _slot(UploadedImage, limit, kwargs)
