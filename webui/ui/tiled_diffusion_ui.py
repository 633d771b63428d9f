"""The Tiled Diffusion accordion of the txt2img and img2img tabs.

Controls are registered in the tab's inputs as `tiled_diffusion::<argument>` (the extension's
argument names) and `tiled_diffusion::region<n>::<value>` for the first REGIONS region boxes
(the API takes the extension's 8); `tiled_request_fields` turns them into
`alwayson_scripts["Tiled Diffusion"]` in the extension's positional order (what API clients send),
and `pasted_tiled_fields` reads an infotext's `Tiled Diffusion` value back. The tiling itself
lives in features/tiled_diffusion. img2img's accordion also has the extension's Upscaler, Scale Factor
and "Keep input image size" (the input is upscaled before the tiled img2img).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..features.tiled_diffusion.args import (BACKGROUND, FOREGROUND, METHODS, MIXTURE, MULTIDIFFUSION, NAMES, ORDER,
                                              REGION_NAMES, REGION_ORDER, args_from_params)
from .generation_controls import GenerationControls, as_float, as_int

PREFIX = "tiled_diffusion::"
REGIONS = 2
_INTS = ("image_width", "image_height", "tile_width", "tile_height", "overlap", "tile_batch_size", "noise_inverse_steps",
         "noise_inverse_renoise_kernel")
_SHOWN = ("enabled", "method", "overwrite_size", *_INTS, "enable_bbox_control", "draw_background", "noise_inverse",
          "noise_inverse_retouch", "noise_inverse_renoise_strength", "keep_input_size", "upscaler_name",
          "scale_factor")
NO_UPSCALER = "None"


def upscaler_choices(easel: Any) -> list[str]:
    """Extras' upscalers ("None" first), the names the extension's img2img Upscaler takes."""
    names = easel.upscalers.list_upscalers() if easel is not None else []
    return [NO_UPSCALER, *(n for n in names if n != NO_UPSCALER)]


def build_tiled_diffusion(controls: GenerationControls, img2img: bool = False, easel: Any = None) -> None:
    p = f"{controls.prefix}_tiled_diffusion"
    i = controls.inputs
    with gr.Accordion("Tiled Diffusion", open=False, elem_id=f"{p}_accordion"):
        with gr.Row():
            i[PREFIX + "enabled"] = gr.Checkbox(False, label="Enable Tiled Diffusion", elem_id=f"{p}_enabled")
            i[PREFIX + "method"] = gr.Dropdown(list(METHODS), value=MIXTURE if img2img else MULTIDIFFUSION,
                                               label="Method", elem_id=f"{p}_method")
        if not img2img:
            with gr.Row():
                i[PREFIX + "overwrite_size"] = gr.Checkbox(False, label="Overwrite image size",
                                                           elem_id=f"{p}_overwrite_size")
                i[PREFIX + "image_width"] = gr.Slider(256, 16384, value=1024, step=16, label="Image width",
                                                      elem_id=f"{p}_image_width")
                i[PREFIX + "image_height"] = gr.Slider(256, 16384, value=1024, step=16, label="Image height",
                                                       elem_id=f"{p}_image_height")
        with gr.Row():
            i[PREFIX + "tile_width"] = gr.Slider(4, 256, value=96, step=1, label="Latent tile width",
                                                 elem_id=f"{p}_tile_width")
            i[PREFIX + "tile_height"] = gr.Slider(4, 256, value=96, step=1, label="Latent tile height",
                                                  elem_id=f"{p}_tile_height")
        with gr.Row():
            i[PREFIX + "overlap"] = gr.Slider(0, 256, value=8 if img2img else 48, step=1, label="Latent tile overlap",
                                              elem_id=f"{p}_overlap")
            i[PREFIX + "tile_batch_size"] = gr.Slider(1, 8, value=4, step=1, label="Latent tile batch size",
                                                      elem_id=f"{p}_tile_batch_size")
        if img2img:
            _upscale(i, p, easel)
            _noise_inversion(i, p)
        with gr.Accordion("Region Prompt Control", open=False, elem_id=f"{p}_regions"):
            with gr.Row():
                i[PREFIX + "enable_bbox_control"] = gr.Checkbox(False, label="Enable Control",
                                                                elem_id=f"{p}_enable_bbox_control")
                i[PREFIX + "draw_background"] = gr.Checkbox(False, label="Draw full canvas background",
                                                            elem_id=f"{p}_draw_background")
            gr.Markdown("Boxes as fractions of the canvas (x, y: top left). A region's prompt is appended to the "
                        "main prompt. Background boxes blend like tiles; Foreground boxes lie on top, feathered.",
                        elem_id=f"{p}_regions_note")
            for n in range(REGIONS):
                key, q = f"{PREFIX}region{n}::", f"{p}_region{n}"
                with gr.Group():
                    with gr.Row():
                        i[key + "enable"] = gr.Checkbox(False, label=f"Enable Region {n + 1}", elem_id=f"{q}_enable")
                        i[key + "blend_mode"] = gr.Dropdown([BACKGROUND, FOREGROUND], value=BACKGROUND, label="Type",
                                                            elem_id=f"{q}_blend_mode")
                        i[key + "feather_ratio"] = gr.Slider(0, 1, value=0.2, step=0.05, label="Feather",
                                                             elem_id=f"{q}_feather_ratio")
                        i[key + "seed"] = gr.Number(-1, label="Seed", precision=0, elem_id=f"{q}_seed")
                    with gr.Row():
                        for name in ("x", "y", "w", "h"):
                            default = dict(REGION_ORDER)[name]
                            i[key + name] = gr.Slider(0, 1, value=default, step=0.0001, label=name,
                                                      elem_id=f"{q}_{name}")
                    i[key + "prompt"] = gr.Textbox(label=f"Region {n + 1} prompt (appended to the prompt)",
                                                   elem_id=f"{q}_prompt")
                    i[key + "neg_prompt"] = gr.Textbox(label=f"Region {n + 1} negative prompt (appended)",
                                                       elem_id=f"{q}_neg_prompt")


def _upscale(i: dict, p: str, easel: Any) -> None:
    """img2img's canvas: the input upscaled first, and the input's (upscaled) size kept (the extension's)."""
    with gr.Row():
        i[PREFIX + "keep_input_size"] = gr.Checkbox(True, label="Keep input image size",
                                                    elem_id=f"{p}_keep_input_size")
        i[PREFIX + "upscaler_name"] = gr.Dropdown(upscaler_choices(easel), value=NO_UPSCALER, label="Upscaler",
                                                  allow_custom_value=True, elem_id=f"{p}_upscaler_name")
        i[PREFIX + "scale_factor"] = gr.Slider(1, 8, value=2, step=0.05, label="Scale Factor",
                                               elem_id=f"{p}_scale_factor")
        refresh = gr.Button("🔄", elem_classes="easel-tool", scale=0, min_width=42, elem_id=f"{p}_upscaler_refresh")
    refresh.click(lambda: gr.update(choices=upscaler_choices(easel)), None, i[PREFIX + "upscaler_name"],
                  api_name=False)


def _noise_inversion(i: dict, p: str) -> None:
    """img2img's Noise Inversion controls (the extension's names, ranges and defaults)."""
    with gr.Accordion("Noise Inversion", open=False, elem_id=f"{p}_noise_inversion"):
        with gr.Row():
            i[PREFIX + "noise_inverse"] = gr.Checkbox(False, label="Enable Noise Inversion",
                                                      elem_id=f"{p}_noise_inverse")
            i[PREFIX + "noise_inverse_steps"] = gr.Slider(1, 200, value=10, step=1, label="Inversion steps",
                                                          elem_id=f"{p}_noise_inverse_steps")
        gr.Markdown("Needs the Euler sampler. The input's own noise, found by walking it up the noise levels, "
                    "is where img2img starts: the result stays close to the input. *Retouch* above 1 sharpens; "
                    "*Renoise* mixes fresh noise back in, weighed by the picture's local detail.", elem_id=f"{p}_noise_inversion_note")
        with gr.Row():
            i[PREFIX + "noise_inverse_retouch"] = gr.Slider(1, 100, value=1, step=0.1, label="Retouch",
                                                            elem_id=f"{p}_noise_inverse_retouch")
            i[PREFIX + "noise_inverse_renoise_strength"] = gr.Slider(0, 2, value=1, step=0.01, label="Renoise strength",
                                                                     elem_id=f"{p}_noise_inverse_renoise_strength")
            i[PREFIX + "noise_inverse_renoise_kernel"] = gr.Slider(2, 512, value=64, step=1,
                                                                   label="Renoise kernel size",
                                                                   elem_id=f"{p}_noise_inverse_renoise_kernel")


def tiled_request_fields(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The `alwayson_scripts["Tiled Diffusion"]` entry from the accordion (None when not enabled)."""
    if not fields.get(PREFIX + "enabled"):
        return None
    values = {name: default for name, default in ORDER}
    for name in _SHOWN:
        if PREFIX + name in fields:
            value = fields[PREFIX + name]
            if name in _INTS:
                values[name] = as_int(value, values[name])
            elif name == "scale_factor":
                values[name] = as_float(value, values[name])
            elif isinstance(values[name], bool):
                values[name] = bool(value)
            else:
                values[name] = value or values[name] if name == "upscaler_name" else value
    regions: list[Any] = []
    if values["enable_bbox_control"]:
        for n in range(REGIONS):
            key = f"{PREFIX}region{n}::"
            for name, default in REGION_ORDER:
                value = fields.get(key + name, default)
                if name in ("x", "y", "w", "h", "feather_ratio"):
                    value = as_float(value, default)
                elif name == "seed":
                    value = as_int(value, -1)
                elif name == "enable":
                    value = bool(value)
                else:
                    value = value if value is not None else default
                regions.append(value)
    return {"args": [values[name] for name in NAMES] + regions}


def pasted_tiled_fields(params: dict[str, str]) -> dict[str, Any]:
    args = args_from_params(params)
    if args is None:
        return {}
    values = dict(zip(NAMES, args))
    out = {PREFIX + name: values[name] for name in _SHOWN if name not in ("image_width", "image_height",
                                                                          "overwrite_size")}
    flat = args[len(NAMES):]
    count = len(REGION_NAMES)
    for n in range(REGIONS):
        chunk = flat[n * count:(n + 1) * count]
        key = f"{PREFIX}region{n}::"
        if len(chunk) == count:
            out.update({key + name: value for name, value in zip(REGION_NAMES, chunk)})
        else:
            out[key + "enable"] = False
    return out
