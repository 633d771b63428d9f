"""The ADetailer accordion of the txt2img and img2img tabs: one sub-tab per detailer pass ("1st", "2nd").

Controls are registered in the tab's inputs as `adetailer::<field>` (enable, skip img2img) and
`adetailer::<pass>::<ad_* argument>`; `detailer_request_fields` turns them into
`alwayson_scripts["ADetailer"]`, the shape API clients send, and `pasted_detailer_fields` reads
an infotext's `ADetailer ...` keys back into them. Detection and inpainting live in
features/detailer; this module only shows them.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..features.detailer.args import PassArgs, ordinal, passes_from_params, request_args
from .generation_controls import GenerationControls, as_float, as_int

PREFIX = "adetailer::"
PASSES = 2            # ADetailer's default "Max models"
NONE = "None"
# (argument, kind) of each pass's controls, in the order they are laid out
_NUMBERS = {"ad_confidence": float, "ad_dilate_erode": int, "ad_mask_blur": int, "ad_denoising_strength": float,
            "ad_inpaint_only_masked_padding": int, "ad_steps": int, "ad_cfg_scale": float, "ad_mask_k_largest": int,
            "ad_inpaint_width": int, "ad_inpaint_height": int}
_TEXTS = ("ad_model", "ad_model_classes", "ad_prompt", "ad_negative_prompt")
_SWITCHES = ("ad_inpaint_only_masked", "ad_use_steps", "ad_use_cfg_scale", "ad_use_inpaint_width_height")


def model_choices(easel: Easel) -> list[str]:
    return [NONE, *easel.engine.feature("adetailer").detectors.names()]


def build_detailer(easel: Easel, controls: GenerationControls, img2img: bool = False) -> None:
    """The accordion; its controls go into `controls.inputs`."""
    p = f"{controls.prefix}_adetailer"
    i = controls.inputs
    default = PassArgs()
    with gr.Accordion("ADetailer", open=False, elem_id=f"{p}_accordion"):
        with gr.Row():
            i[f"{PREFIX}enable"] = gr.Checkbox(False, label="Enable ADetailer", elem_id=f"{p}_enable")
            if img2img:
                i[f"{PREFIX}skip_img2img"] = gr.Checkbox(False, label="Skip img2img", elem_id=f"{p}_skip_img2img")
        gr.Markdown("Faces: `face_insightface` (the insightface pack in models/insightface). Hands, persons: "
                    "YOLOv8 `.onnx` exports in models/adetailer.", elem_id=f"{p}_note")
        with gr.Tabs(elem_id=f"{p}_tabs"):
            for n in range(PASSES):
                q, key = f"{p}_{n}", f"{PREFIX}{n}::"
                with gr.Tab(ordinal(n + 1), elem_id=f"{q}_tab"):
                    i[key + "ad_model"] = gr.Dropdown(model_choices(easel), value=NONE, label="ADetailer model",
                                                      allow_custom_value=True, elem_id=f"{q}_ad_model")
                    i[key + "ad_model_classes"] = gr.Textbox(label="Classes (names or numbers, comma separated; "
                                                                   "empty: all)", elem_id=f"{q}_ad_model_classes")
                    i[key + "ad_prompt"] = gr.Textbox(label="ADetailer prompt (empty: the main prompt)", lines=2,
                                                      elem_id=f"{q}_ad_prompt")
                    i[key + "ad_negative_prompt"] = gr.Textbox(label="ADetailer negative prompt (empty: the main one)",
                                                               lines=2, elem_id=f"{q}_ad_negative_prompt")
                    with gr.Row():
                        i[key + "ad_confidence"] = gr.Slider(0, 1, value=default.ad_confidence, step=0.01,
                                                             label="Detection confidence threshold",
                                                             elem_id=f"{q}_ad_confidence")
                        i[key + "ad_mask_k_largest"] = gr.Slider(0, 10, value=0, step=1,
                                                                 label="Only the k largest (0: all)",
                                                                 elem_id=f"{q}_ad_mask_k_largest")
                    with gr.Row():
                        i[key + "ad_dilate_erode"] = gr.Slider(-128, 128, value=default.ad_dilate_erode, step=4,
                                                               label="Mask erosion (-) / dilation (+)",
                                                               elem_id=f"{q}_ad_dilate_erode")
                        i[key + "ad_mask_blur"] = gr.Slider(0, 64, value=default.ad_mask_blur, step=1,
                                                            label="Inpaint mask blur", elem_id=f"{q}_ad_mask_blur")
                        i[key + "ad_denoising_strength"] = gr.Slider(0, 1, value=default.ad_denoising_strength,
                                                                     step=0.01, label="Inpaint denoising strength",
                                                                     elem_id=f"{q}_ad_denoising_strength")
                    with gr.Row():
                        i[key + "ad_inpaint_only_masked"] = gr.Checkbox(True, label="Inpaint only masked",
                                                                        elem_id=f"{q}_ad_inpaint_only_masked")
                        i[key + "ad_inpaint_only_masked_padding"] = gr.Slider(
                            0, 256, value=default.ad_inpaint_only_masked_padding, step=4,
                            label="Inpaint only masked padding, pixels", elem_id=f"{q}_ad_inpaint_only_masked_padding")
                    with gr.Row():
                        i[key + "ad_use_inpaint_width_height"] = gr.Checkbox(
                            False, label="Use separate width/height", elem_id=f"{q}_ad_use_inpaint_width_height")
                        i[key + "ad_inpaint_width"] = gr.Slider(64, 2048, value=512, step=8, label="Inpaint width",
                                                                elem_id=f"{q}_ad_inpaint_width")
                        i[key + "ad_inpaint_height"] = gr.Slider(64, 2048, value=512, step=8, label="Inpaint height",
                                                                 elem_id=f"{q}_ad_inpaint_height")
                    with gr.Row():
                        i[key + "ad_use_steps"] = gr.Checkbox(False, label="Use separate steps",
                                                              elem_id=f"{q}_ad_use_steps")
                        i[key + "ad_steps"] = gr.Slider(1, 150, value=default.ad_steps, step=1, label="ADetailer steps",
                                                        elem_id=f"{q}_ad_steps")
                        i[key + "ad_use_cfg_scale"] = gr.Checkbox(False, label="Use separate CFG scale",
                                                                  elem_id=f"{q}_ad_use_cfg_scale")
                        i[key + "ad_cfg_scale"] = gr.Slider(0, 30, value=default.ad_cfg_scale, step=0.5,
                                                            label="ADetailer CFG scale", elem_id=f"{q}_ad_cfg_scale")


def detailer_request_fields(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The `alwayson_scripts["ADetailer"]` entry from the accordion's values; None when it is off."""
    if not fields.get(f"{PREFIX}enable"):
        return None
    units: dict[int, dict[str, Any]] = {}
    for key, value in fields.items():
        if not key.startswith(PREFIX) or key.count("::") != 2:
            continue
        _, index, name = key.split("::", 2)
        if name in _NUMBERS:
            value = as_int(value) if _NUMBERS[name] is int else as_float(value)
        elif name in _SWITCHES:
            value = bool(value)
        elif name in _TEXTS:
            value = str(value or "")
        units.setdefault(int(index), {})[name] = value
    ordered = [units[i] for i in sorted(units)]
    if not any(u.get("ad_model", NONE) not in ("", NONE) for u in ordered):
        return None
    for unit in ordered:
        unit["ad_model"] = unit.get("ad_model") or NONE
    return request_args(ordered, True, bool(fields.get(f"{PREFIX}skip_img2img")))


def pasted_detailer_fields(params: dict[str, str]) -> dict[str, Any]:
    """An infotext's `ADetailer ...` keys as the accordion's values ({} when it has none)."""
    passes = passes_from_params(params)
    if not passes:
        return {}
    values: dict[str, Any] = {f"{PREFIX}enable": True}
    default = PassArgs()
    for n in range(PASSES):
        stated = passes[n] if n < len(passes) else {"ad_model": NONE}
        for name in (*_TEXTS, *_NUMBERS, *_SWITCHES):
            values[f"{PREFIX}{n}::{name}"] = stated.get(name, getattr(default, name))
    return values
