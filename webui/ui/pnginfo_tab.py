"""PNG Info: drop an image, see its generation parameters (any tool's format), send them on."""
from __future__ import annotations

import gradio as gr
from PIL import Image

from ..app import Easel
from ..pnginfo import read_generation_info
from .common import esc
from .send_to import SendTarget, checkpoint_update, paste_updates
from .uploads import checked_image, settings_limit

TOOL_NAMES = {"automatic1111": "AUTOMATIC1111-style parameters", "comfyui": "ComfyUI workflow",
              "invokeai": "InvokeAI metadata", "novelai": "NovelAI metadata", "fooocus": "Fooocus metadata"}


def _describe(image: Image.Image | None) -> tuple[str, str]:
    """(HTML shown to the user, A1111 infotext used by the send buttons)."""
    if not isinstance(image, Image.Image):
        return "", ""
    info = read_generation_info(image)
    if info.info is None:
        extra = "".join(f"<p><b>{esc(k)}</b>: {esc(str(v)[:2000])}</p>" for k, v in info.raw.items())
        return f"<p>No generation parameters found in this image.</p>{extra}", ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in info.info.params.items())
    negative = f"<p><b>Negative prompt:</b> {esc(info.info.negative_prompt)}</p>" if info.info.negative_prompt else ""
    html = (f'<p class="easel-source">{esc(TOOL_NAMES.get(info.tool, info.tool))}</p>'
            f"<p><b>Prompt:</b> {esc(info.info.prompt)}</p>{negative}<table class='easel-params'>{rows}</table>")
    return html, info.text


def build_pnginfo(easel: Easel, tabs: gr.Tabs, checkpoint: gr.Dropdown) -> tuple[gr.Image, gr.Textbox, gr.Row, gr.HTML]:
    with gr.Row(equal_height=False):
        with gr.Column():
            image = checked_image(settings_limit(easel.settings), label="Source", type="pil", image_mode=None,
                                  elem_id="pnginfo_image", sources=["upload", "clipboard"], height=420)
        with gr.Column():
            html = gr.HTML("", elem_id="pnginfo_html")
            text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_generation_info", interactive=False)
            note = gr.HTML("", elem_id="pnginfo_checkpoint_note")
            buttons = gr.Row(elem_id="pnginfo_send_row")
    image.change(_describe, image, [html, text], api_name=False)
    return image, text, buttons, note


def wire_pnginfo_send(easel: Easel, tabs: gr.Tabs, checkpoint: gr.Dropdown, image: gr.Image, text: gr.Textbox,
                      buttons: gr.Row, note: gr.HTML, targets: list[SendTarget]) -> None:
    with buttons:
        for target in targets:
            button = gr.Button(f"Send to {target.label}", elem_id=f"pnginfo_send_{target.tab}", size="sm")

            def send(picture, parameters, target=target):
                picked, message = checkpoint_update(easel, parameters)
                image_update = ([target.image_value(picture.convert("RGB")) if isinstance(picture, Image.Image)
                                 else gr.skip()] if target.image else [])
                sub = [gr.Tabs(selected=target.subtab[1])] if target.subtab else []
                return [gr.Tabs(selected=target.tab), picked, message, *sub, *image_update,
                        *paste_updates(easel, target, parameters), *target.extra_values()]

            outputs = [tabs, checkpoint, note] + ([target.subtab[0]] if target.subtab else []) + target.outputs()
            button.click(send, [image, text], outputs, api_name=False)
