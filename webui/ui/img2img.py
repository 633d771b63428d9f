"""The img2img tab (img2img, Sketch, Batch) and the Inpaint tab (Inpaint, Inpaint sketch,
Inpaint upload, Outpaint). Controls use AUTOMATIC1111's `img2img_*` elem_ids where it has
them; the Inpaint tab's own prompt/generate controls use the `inpaint_` prefix.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr
from PIL import Image

from ..app import Easel
from ..core.request import GenerationRequest
from ..features.img2img import MASKED_CONTENT, RESIZE_MODES, mask_to_l
from ..features.soft_inpaint import ALWAYSON_NAME, ENABLED_FIELD, PARAMETERS, alwayson_args
from .controlnet_ui import build_controlnet_units
from .detailer_ui import build_detailer
from .regions_ui import build_regions
from .tiled_diffusion_ui import build_tiled_diffusion
from .extra_networks import build_extra_networks
from .generation_controls import (GenerationControls, as_float, as_int, build_output, build_prompt_area,
                                  build_sampling, common_request_fields, wire_generation)
from .runner import SessionJobs
from .generation_options import build_face_and_tiling, build_wildcards
from .scripts_ui import build_scripts
from .uploads import after_upload, checked_editor, checked_image, editor_value, settings_limit

INPAINT_AREAS = ("Whole picture", "Only masked")          # inpaint_full_res 0 / 1
MASK_MODES = ("Inpaint masked", "Inpaint not masked")      # inpainting_mask_invert 0 / 1
BRUSH_MASK = gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=24)
BRUSH_SKETCH = gr.Brush(colors=["#000000", "#ffffff", "#e11d48", "#2563eb", "#16a34a", "#facc15"],
                        default_color="#000000", color_mode="defaults", default_size=12)


def editor_layers(value: Any) -> tuple[Image.Image | None, Image.Image | None, Image.Image | None]:
    """(background, painted strokes as one RGBA layer, composite) from an ImageEditor value."""
    if not isinstance(value, dict):
        return None, None, None
    background = value.get("background")
    composite = value.get("composite")
    strokes = None
    for layer in value.get("layers") or []:
        if isinstance(layer, Image.Image):
            layer = layer.convert("RGBA")
            strokes = layer if strokes is None else Image.alpha_composite(strokes, layer)
    return background, strokes, composite


def _fit_size(image: Image.Image | None):
    """Width/height sliders follow an uploaded picture (rounded to /8, at most 2048)."""
    if not isinstance(image, Image.Image):
        return gr.skip(), gr.skip()
    scale = min(1.0, 2048 / max(image.size))
    return max(64, round(image.width * scale / 8) * 8), max(64, round(image.height * scale / 8) * 8)


def _size_and_strength(controls: GenerationControls) -> None:
    i = controls.inputs
    p = "img2img" if controls.prefix == "img2img" else controls.prefix
    i["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode",
                                elem_id=f"{p}_resize_mode" if p != "img2img" else "resize_mode")
    with gr.Row():
        i["width"] = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{p}_width")
        i["height"] = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{p}_height")
    i["scale_by"] = gr.Slider(0, 4, value=0, step=0.05, label="Resize by (0: use width/height)",
                              elem_id=f"{p}_scale")
    i["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                        elem_id=f"{p}_denoising_strength")


def _sized(fields: dict[str, Any], image: Image.Image) -> tuple[int, int]:
    scale = as_float(fields.get("scale_by"))
    if scale > 0:
        return max(64, round(image.width * scale / 8) * 8), max(64, round(image.height * scale / 8) * 8)
    return as_int(fields.get("width")), as_int(fields.get("height"))


def _base_request(fields: dict[str, Any], image: Image.Image, **extra: Any) -> GenerationRequest:
    width, height = _sized(fields, image)
    return GenerationRequest(**common_request_fields(fields, fields.get("__script_titles")), mode="img2img", init_images=[image], width=width,
                             height=height, resize_mode=as_int(fields.get("resize_mode")),
                             denoising_strength=as_float(fields.get("denoising_strength"), 0.75), **extra)


# ---- img2img tab ------------------------------------------------------------------------------


def build_img2img(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs, local: bool) -> GenerationControls:
    controls = GenerationControls("img2img")
    limit = settings_limit(easel.settings)  # every upload's declared size is checked before decoding
    build_prompt_area(easel, controls)
    controls.extra_networks = build_extra_networks(easel, "img2img", controls.prompt, checkpoint)
    mode = gr.State("img2img")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="mode_img2img") as subtabs:
                with gr.Tab("img2img", id="img2img_plain", elem_id="img2img_img2img_tab") as tab_plain:
                    image = checked_image(limit, label="Image for img2img", type="pil", image_mode="RGB",
                                          elem_id="img2img_image", sources=["upload", "clipboard"], height=360)
                with gr.Tab("Sketch", id="img2img_sketch", elem_id="img2img_img2img_sketch_tab") as tab_sketch:
                    sketch = checked_editor(limit, label="Sketch", type="pil", elem_id="img2img_sketch",
                                            brush=BRUSH_SKETCH, image_mode="RGBA", height=360, layers=False)
                with gr.Tab("Batch", id="img2img_batch", elem_id="img2img_batch_tab") as tab_batch:
                    note = ("Process every image in a folder on this computer; results go to the output folder."
                            if local else "Folder batch is only available when Easel listens on this computer "
                                          "(127.0.0.1).")
                    gr.Markdown(note)
                    batch_in = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir",
                                          interactive=local)
                    batch_out = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir",
                                           interactive=local)
                    batch_mask = gr.Textbox(label="Inpaint mask directory (optional)",
                                            elem_id="img2img_batch_inpaint_mask_dir", interactive=local)
            _size_and_strength(controls)
            build_sampling(easel, controls, size_controls=False)
            build_face_and_tiling(controls)
            build_wildcards(easel, controls)
            build_controlnet_units(easel, controls, note="empty: the img2img input")
            build_detailer(easel, controls, img2img=True)
            build_regions(easel, controls)
            build_tiled_diffusion(controls, img2img=True, easel=easel)
            build_scripts(easel, controls, "img2img")
        with gr.Column(scale=1):
            build_output(controls)
    controls.subtabs, controls.image = subtabs, image
    controls.editor_tabs = [(tab_sketch, editor_value(sketch))]
    controls.inputs.update(img2img_mode=mode, image=image, sketch=editor_value(sketch), batch_input_dir=batch_in,
                           batch_output_dir=batch_out, batch_mask_dir=batch_mask)
    for tab, name in ((tab_plain, "img2img"), (tab_sketch, "sketch"), (tab_batch, "batch")):
        tab.select(lambda n=name: n, None, mode, api_name=False)
    after_upload(image, _fit_size, image, [controls.inputs["width"], controls.inputs["height"]])

    def build(fields: dict[str, Any]) -> GenerationRequest:
        fields["__script_titles"] = controls.script_titles
        which = fields.get("img2img_mode")
        if which == "batch":
            from ..features.batch import batch_request

            if not local:
                raise ValueError("Folder batch is only available when Easel listens on 127.0.0.1")
            return batch_request(fields, lambda f, img: _base_request(f, img))
        if which == "sketch":
            background, _, composite = editor_layers(fields.get("sketch"))
            picture = composite or background
        else:
            picture = fields.get("image")
        if not isinstance(picture, Image.Image):
            raise ValueError("Image for img2img: upload an image first" if which != "sketch" else
                             "Sketch: upload an image first")
        return _base_request(fields, picture.convert("RGB"))

    wire_generation(easel, controls, sessions, checkpoint, build, api_name="img2img")
    return controls


# ---- Inpaint tab ---------------------------------------------------------------------------------


def _soft_inpainting(i: dict[str, Any]) -> None:
    """AUTOMATIC1111's "Soft inpainting" accordion: off by default, its defaults and ranges."""
    with gr.Accordion("Soft inpainting", open=False, elem_id="img2img_soft_inpainting"):
        i[ENABLED_FIELD] = gr.Checkbox(False, label="Soft inpainting", elem_id="img2img_soft_inpainting_enabled",
                                       info="Blend original and new content by the mask's opacity "
                                            "(a high mask blur is recommended)")
        for p in PARAMETERS:
            i[p.field] = gr.Slider(p.low, p.high, value=p.default, step=p.step, label=p.label, info=p.info,
                                   elem_id=f"img2img_{p.field}")


def with_soft_inpainting(request: GenerationRequest, fields: dict[str, Any]) -> GenerationRequest:
    """The request with the accordion's settings as AUTOMATIC1111's "soft inpainting" always-on args (when on)."""
    if not fields.get(ENABLED_FIELD):
        return request
    values = {p.arg: as_float(fields.get(p.field), p.default) for p in PARAMETERS}
    scripts = {**request.alwayson_scripts, ALWAYSON_NAME: alwayson_args(True, values)}
    return dataclasses.replace(request, alwayson_scripts=scripts)


def build_inpaint(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs) -> GenerationControls:
    controls = GenerationControls("inpaint")
    limit = settings_limit(easel.settings)
    build_prompt_area(easel, controls)
    controls.extra_networks = build_extra_networks(easel, "inpaint", controls.prompt, checkpoint)
    mode = gr.State("inpaint")
    i = controls.inputs
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="mode_inpaint") as subtabs:
                with gr.Tab("Inpaint", id="inpaint_paint", elem_id="img2img_inpaint_tab") as tab_inpaint:
                    editor = checked_editor(limit, label="Paint the area to change", type="pil", elem_id="img2maskimg",
                                            brush=BRUSH_MASK, image_mode="RGBA", height=380, layers=False)
                with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as tab_sketch:
                    sketch = checked_editor(limit, label="Paint in colour; painted areas are regenerated", type="pil",
                                            elem_id="inpaint_sketch", brush=BRUSH_SKETCH, image_mode="RGBA",
                                            height=380, layers=False)
                with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab_upload:
                    upload_image = checked_image(limit, label="Image", type="pil", image_mode="RGB",
                                                 elem_id="img_inpaint_base", sources=["upload", "clipboard"],
                                                 height=300)
                    upload_mask = checked_image(limit, label="Mask (white = change)", type="pil", image_mode="RGBA",
                                           elem_id="img_inpaint_mask", sources=["upload", "clipboard"], height=300)
                with gr.Tab("Outpaint", id="inpaint_outpaint", elem_id="img2img_outpaint_tab") as tab_outpaint:
                    outpaint_image = checked_image(limit, label="Image to extend", type="pil", image_mode="RGB",
                                              elem_id="outpaint_image", sources=["upload", "clipboard"], height=300)
                    with gr.Row():
                        for side in ("left", "right", "up", "down"):
                            i[f"outpaint_{side}"] = gr.Slider(0, 512, value=0 if side in ("up", "down") else 128,
                                                              step=8, label=f"Pixels to expand {side}",
                                                              elem_id=f"outpaint_{side}")
            with gr.Row():
                i["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                i["inpainting_mask_invert"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0],
                                                       type="index", label="Mask mode", elem_id="img2img_mask_mode")
            i["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT), value="original", type="index",
                                            label="Masked content", elem_id="img2img_inpainting_fill")
            with gr.Row():
                i["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index",
                                                 label="Inpaint area", elem_id="img2img_inpaint_full_res")
                i["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                                          elem_id="img2img_inpaint_full_res_padding")
            _soft_inpainting(i)
            _size_and_strength(controls)
            build_sampling(easel, controls, size_controls=False)
            build_face_and_tiling(controls)
            build_wildcards(easel, controls)
            build_controlnet_units(easel, controls, note="empty: the image being inpainted")
            build_detailer(easel, controls, img2img=True)
            build_regions(easel, controls)
        with gr.Column(scale=1):
            build_output(controls)
    controls.subtabs, controls.image = subtabs, editor
    controls.editor_tabs = [(tab_inpaint, editor_value(editor)), (tab_sketch, editor_value(sketch))]
    i.update(inpaint_mode=mode, editor=editor_value(editor), sketch=editor_value(sketch), upload_image=upload_image,
             upload_mask=upload_mask, outpaint_image=outpaint_image)
    for tab, name in ((tab_inpaint, "inpaint"), (tab_sketch, "sketch"), (tab_upload, "upload"),
                      (tab_outpaint, "outpaint")):
        tab.select(lambda n=name: n, None, mode, api_name=False)
    for source in (upload_image, outpaint_image):
        after_upload(source, _fit_size, source, [i["width"], i["height"]])

    def inpaint_request(fields: dict[str, Any]) -> GenerationRequest:
        which = fields.get("inpaint_mode")
        options = dict(mask_blur=as_int(fields.get("mask_blur"), 4),
                       inpainting_mask_invert=as_int(fields.get("inpainting_mask_invert")),
                       inpainting_fill=as_int(fields.get("inpainting_fill"), 1),
                       inpaint_full_res=bool(as_int(fields.get("inpaint_full_res"))),
                       inpaint_full_res_padding=as_int(fields.get("inpaint_full_res_padding"), 32))
        if which == "outpaint":
            picture = fields.get("outpaint_image")
            if not isinstance(picture, Image.Image):
                raise ValueError("Image to extend: upload an image first")
            sides = {f"outpaint_{s}": as_int(fields.get(f"outpaint_{s}")) for s in ("left", "right", "up", "down")}
            if not any(sides.values()):
                raise ValueError("Outpaint: choose how many pixels to add on at least one side")
            options.update(sides, inpaint_full_res=False)
            return _base_request(fields, picture.convert("RGB"), **options)
        if which == "upload":
            picture, mask = fields.get("upload_image"), fields.get("upload_mask")
            if not isinstance(picture, Image.Image) or not isinstance(mask, Image.Image):
                raise ValueError("Image and Mask: upload both an image and a mask")
            return _base_request(fields, picture.convert("RGB"), mask=mask_to_l(mask), **options)
        background, strokes, composite = editor_layers(fields.get("sketch" if which == "sketch" else "editor"))
        if background is None:
            raise ValueError("Image: upload an image first")
        if strokes is None or strokes.getchannel("A").getbbox() is None:
            raise ValueError("Mask: paint over the area to change first")
        picture = (composite if which == "sketch" and composite is not None else background).convert("RGB")
        return _base_request(fields, picture, mask=strokes.getchannel("A"), **options)

    def build(fields: dict[str, Any]) -> GenerationRequest:
        return with_soft_inpainting(inpaint_request(fields), fields)

    wire_generation(easel, controls, sessions, checkpoint, build, api_name="inpaint", queue_label="inpaint")
    return controls
