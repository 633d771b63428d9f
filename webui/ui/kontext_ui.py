"""The txt2img tab's "Kontext reference" accordion: a picture FLUX.1 Kontext dev looks at (features/kontext.py).

Controls are `kontext::image` and `kontext::resize`; `kontext_request_fields` makes them
`alwayson_scripts["Kontext"]` (what API clients send) and `pasted_kontext_fields` restores the resize
choice from an infotext (the picture is not in it).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..features.kontext import PREFERRED, RESIZE_MODES
from .generation_controls import GenerationControls

PREFIX = "kontext::"
IMAGE = PREFIX + "image"


def build_kontext(controls: GenerationControls) -> None:
    p = f"{controls.prefix}_kontext"
    i = controls.inputs
    with gr.Accordion("Kontext reference", open=False, elem_id=f"{p}_accordion"):
        gr.Markdown("For FLUX.1 Kontext checkpoints: the picture the prompt edits or refers to "
                    "(the hires pass sees it too).")
        i[IMAGE] = gr.Image(type="pil", label="Reference image", elem_id=f"{p}_image", height=240)
        i[PREFIX + "resize"] = gr.Radio(list(RESIZE_MODES), value=PREFERRED, label="Reference size",
                                        elem_id=f"{p}_resize")


def kontext_request_fields(fields: dict[str, Any]) -> dict[str, Any] | None:
    """`alwayson_scripts["Kontext"]`, or None without a picture."""
    image = fields.get(IMAGE)
    if image is None:
        return None
    return {"args": [image, fields.get(PREFIX + "resize") or PREFERRED]}


def pasted_kontext_fields(params: dict[str, str]) -> dict[str, Any]:
    resize = params.get("Kontext resize")
    return {PREFIX + "resize": resize} if resize in RESIZE_MODES else {}
