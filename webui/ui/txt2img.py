"""The txt2img tab. Component elem_ids are AUTOMATIC1111's, so user scripts and styles keep working."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..core import samplers
from ..core.request import GenerationRequest
from ..features.hires import SAME_CHECKPOINT, same_checkpoint
from .controlnet_ui import build_controlnet_units
from .detailer_ui import build_detailer
from .regions_ui import build_regions
from .tiled_diffusion_ui import build_tiled_diffusion
from .kontext_ui import build_kontext
from .extra_networks import build_extra_networks
from .generation_controls import (GenerationControls, as_float, as_int, build_output, build_prompt_area,
                                  build_sampling, common_request_fields, wire_generation)
from .runner import SessionJobs
from .generation_options import build_face_and_tiling, build_wildcards
from .scripts_ui import build_scripts

SAME = "Use same"


def _hires_controls(easel: Easel, controls: GenerationControls) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        i = controls.inputs
        i["enable_hr"] = gr.Checkbox(False, label="Enable hires. fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            i["hr_upscaler"] = gr.Dropdown(easel.engine.feature("hires").upscaler_names(), value="Latent", label="Upscaler",
                                           elem_id="txt2img_hr_upscaler")
            i["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0: same)",
                                                  elem_id="txt2img_hires_steps")
            i["denoising_strength"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="txt2img_denoising_strength")
        with gr.Row():
            i["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            i["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to (0: by scale)",
                                         elem_id="txt2img_hr_resize_x")
            i["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to (0: by scale)",
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            i["hr_checkpoint_name"] = gr.Dropdown([SAME_CHECKPOINT, *easel.models.titles()], value=SAME_CHECKPOINT,
                                                  label="Hires checkpoint", allow_custom_value=True,
                                                  elem_id="hr_checkpoint")
            i["hr_sampler_name"] = gr.Dropdown([SAME, *samplers.sampler_names()], value=SAME, label="Hires sampler",
                                               elem_id="txt2img_hr_sampler")
            i["hr_scheduler"] = gr.Dropdown([SAME, *samplers.schedule_labels()], value=SAME,
                                            label="Hires schedule type", elem_id="txt2img_hr_scheduler")
        i["hr_prompt"] = gr.Textbox(label="Hires prompt (empty: same)", lines=2, elem_id="hires_prompt")
        i["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt (empty: same)", lines=2,
                                             elem_id="hires_neg_prompt")


def txt2img_request(fields: dict[str, Any], script_titles: dict[str, str] | None = None) -> GenerationRequest:
    same = lambda value: "" if value in (None, SAME) else value  # noqa: E731
    return GenerationRequest(
        **common_request_fields(fields, script_titles), mode="txt2img", width=as_int(fields.get("width")),
        height=as_int(fields.get("height")), enable_hr=bool(fields.get("enable_hr")),
        hr_upscaler=fields.get("hr_upscaler") or "Latent", hr_second_pass_steps=as_int(fields.get("hr_second_pass_steps")),
        denoising_strength=as_float(fields.get("denoising_strength"), 0.7), hr_scale=as_float(fields.get("hr_scale"), 2),
        hr_resize_x=as_int(fields.get("hr_resize_x")), hr_resize_y=as_int(fields.get("hr_resize_y")),
        hr_sampler_name=same(fields.get("hr_sampler_name")), hr_scheduler=same(fields.get("hr_scheduler")),
        hr_prompt=fields.get("hr_prompt") or "", hr_negative_prompt=fields.get("hr_negative_prompt") or "",
        hr_checkpoint_name="" if same_checkpoint(fields.get("hr_checkpoint_name")) else fields["hr_checkpoint_name"])


def build_txt2img(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs) -> GenerationControls:
    controls = GenerationControls("txt2img")
    build_prompt_area(easel, controls)
    controls.extra_networks = build_extra_networks(easel, "txt2img", controls.prompt, checkpoint)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            build_sampling(easel, controls)
            _hires_controls(easel, controls)
            build_face_and_tiling(controls)
            build_wildcards(easel, controls)
            build_controlnet_units(easel, controls)
            build_detailer(easel, controls)
            build_regions(easel, controls)
            build_tiled_diffusion(controls)
            build_kontext(controls)
            build_scripts(easel, controls, "txt2img")
        with gr.Column(scale=1):
            build_output(controls)
    wire_generation(easel, controls, sessions, checkpoint,
                    lambda fields: txt2img_request(fields, controls.script_titles), api_name="txt2img")
    return controls
