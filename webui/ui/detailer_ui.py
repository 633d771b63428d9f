"""The ADetailer accordion of the txt2img and img2img tabs: one sub-tab per detailer pass ("1st", "2nd").

Controls are registered in the tab's inputs as `adetailer::<field>` (enable, skip img2img) and
`adetailer::<pass>::<ad_* argument>`; `detailer_request_fields` turns them into
`alwayson_scripts["ADetailer"]`, the shape API clients send, and `pasted_detailer_fields` reads
an infotext's `ADetailer ...` keys back into them. Each pass also has ADetailer's separate checkpoint,
VAE, noise multiplier, "Restore faces after ADetailer" and ControlNet unit (its lists read again by
its 🔄 button). Detection and inpainting live in features/detailer; this module only shows them.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..features.controlnet.choices import module_names
from ..features.detailer.args import (SAME_CHECKPOINT, SAME_VAE, PassArgs, ordinal, passes_from_params,
                                      request_args)
from .generation_controls import GenerationControls, as_float, as_int

PREFIX = "adetailer::"
PASSES = 2            # ADetailer's default "Max models"
NONE = "None"
# (argument, kind) of each pass's controls, in the order they are laid out
_NUMBERS = {"ad_confidence": float, "ad_dilate_erode": int, "ad_mask_blur": int, "ad_denoising_strength": float,
            "ad_inpaint_only_masked_padding": int, "ad_steps": int, "ad_cfg_scale": float, "ad_mask_k_largest": int,
            "ad_inpaint_width": int, "ad_inpaint_height": int, "ad_noise_multiplier": float,
            "ad_controlnet_weight": float, "ad_controlnet_guidance_start": float,
            "ad_controlnet_guidance_end": float}
_TEXTS = ("ad_model", "ad_model_classes", "ad_prompt", "ad_negative_prompt", "ad_checkpoint", "ad_vae",
          "ad_controlnet_model", "ad_controlnet_module")
_SWITCHES = ("ad_inpaint_only_masked", "ad_use_steps", "ad_use_cfg_scale", "ad_use_inpaint_width_height",
             "ad_use_checkpoint", "ad_use_vae", "ad_use_noise_multiplier", "ad_restore_face")
# the dropdowns' "same as the job" entries, where PassArgs has None
_UNSET = {"ad_checkpoint": SAME_CHECKPOINT, "ad_vae": SAME_VAE}


def model_choices(easel: Easel) -> list[str]:
    return [NONE, *easel.engine.feature("adetailer").detectors.names()]


def checkpoint_choices(easel: Easel) -> list[str]:
    return [SAME_CHECKPOINT, *easel.models.titles()]


def vae_choices(easel: Easel) -> list[str]:
    return [SAME_VAE, *easel.vaes.choices()]


def controlnet_choices(easel: Easel) -> list[str]:
    """Every installed ControlNet (the pass's checkpoint may not be the loaded one, so none is filtered out)."""
    return [NONE, *(info.name for info in easel.controlnets.all())]


def module_choices() -> list[str]:
    return [NONE, *(name for name in module_names() if name != "none")]  # "None": the picture itself


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
                    _build_models(easel, i, key, q)


def _build_models(easel: Easel, i: dict[str, Any], key: str, q: str) -> None:
    """ADetailer's separate checkpoint, VAE, noise multiplier, face restoration and ControlNet for one pass."""
    default = PassArgs()
    with gr.Accordion("Checkpoint, VAE, noise, restore faces, ControlNet", open=False, elem_id=f"{q}_models"):
        with gr.Row():
            i[key + "ad_use_checkpoint"] = gr.Checkbox(False, label="Use separate checkpoint",
                                                       elem_id=f"{q}_ad_use_checkpoint")
            i[key + "ad_checkpoint"] = gr.Dropdown(checkpoint_choices(easel), value=SAME_CHECKPOINT,
                                                   label="ADetailer checkpoint", allow_custom_value=True,
                                                   elem_id=f"{q}_ad_checkpoint")
            i[key + "ad_use_vae"] = gr.Checkbox(False, label="Use separate VAE", elem_id=f"{q}_ad_use_vae")
            i[key + "ad_vae"] = gr.Dropdown(vae_choices(easel), value=SAME_VAE, label="ADetailer VAE",
                                            allow_custom_value=True, elem_id=f"{q}_ad_vae")
            refresh = gr.Button("🔄", elem_classes="easel-tool", scale=0, min_width=42, elem_id=f"{q}_refresh")
        with gr.Row():
            i[key + "ad_use_noise_multiplier"] = gr.Checkbox(False, label="Use separate noise multiplier",
                                                             elem_id=f"{q}_ad_use_noise_multiplier")
            i[key + "ad_noise_multiplier"] = gr.Slider(0.5, 1.5, value=default.ad_noise_multiplier, step=0.01,
                                                       label="Noise multiplier for img2img",
                                                       elem_id=f"{q}_ad_noise_multiplier")
            i[key + "ad_restore_face"] = gr.Checkbox(False, label="Restore faces after ADetailer",
                                                     elem_id=f"{q}_ad_restore_face")
        with gr.Row():
            i[key + "ad_controlnet_model"] = gr.Dropdown(controlnet_choices(easel), value=NONE,
                                                         label="ControlNet model", allow_custom_value=True,
                                                         elem_id=f"{q}_ad_controlnet_model")
            i[key + "ad_controlnet_module"] = gr.Dropdown(module_choices(), value=NONE, label="ControlNet module",
                                                          elem_id=f"{q}_ad_controlnet_module")
        with gr.Row():
            i[key + "ad_controlnet_weight"] = gr.Slider(0, 1, value=default.ad_controlnet_weight, step=0.01,
                                                        label="ControlNet weight", elem_id=f"{q}_ad_controlnet_weight")
            i[key + "ad_controlnet_guidance_start"] = gr.Slider(
                0, 1, value=default.ad_controlnet_guidance_start, step=0.01, label="ControlNet guidance start",
                elem_id=f"{q}_ad_controlnet_guidance_start")
            i[key + "ad_controlnet_guidance_end"] = gr.Slider(
                0, 1, value=default.ad_controlnet_guidance_end, step=0.01, label="ControlNet guidance end",
                elem_id=f"{q}_ad_controlnet_guidance_end")
    lists = [i[key + name] for name in ("ad_checkpoint", "ad_vae", "ad_controlnet_model")]
    refresh.click(lambda: refreshed_choices(easel), None, lists, api_name=False)


def refreshed_choices(easel: Easel) -> tuple[dict, dict, dict]:
    """The checkpoint, VAE and ControlNet lists read again from disk (the 🔄 button)."""
    easel.models.refresh()
    return (gr.update(choices=checkpoint_choices(easel)), gr.update(choices=vae_choices(easel)),
            gr.update(choices=controlnet_choices(easel)))


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
            value = stated.get(name, getattr(default, name))
            values[f"{PREFIX}{n}::{name}"] = _UNSET.get(name, value) if value is None else value
    return values
