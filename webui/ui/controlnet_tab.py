"""The ControlNet tab: every unit side by side with its preview, plus txt2img's controls.

For working on control maps: all units visible at once, each with "Run preprocessor", and
Generate makes a txt2img image with them (the same request the txt2img tab would make).
"""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from .controlnet_ui import build_units_grid
from .generation_controls import (GenerationControls, build_output, build_prompt_area, build_sampling,
                                  wire_generation)
from .runner import SessionJobs
from .txt2img import txt2img_request


def build_controlnet_tab(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs) -> GenerationControls:
    controls = GenerationControls("controlnet")
    build_prompt_area(easel, controls)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            build_sampling(easel, controls)
        with gr.Column(scale=1):
            build_output(controls)
    build_units_grid(easel, controls)
    wire_generation(easel, controls, sessions, checkpoint, txt2img_request, api_name="controlnet_txt2img",
                    queue_label="ControlNet")
    return controls
