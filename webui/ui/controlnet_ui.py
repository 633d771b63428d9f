"""ControlNet units in a generation tab, and the ControlNet tab that shows every unit at once.

Each unit's controls are registered in the tab's inputs as `controlnet::<i>::<field>` with
the field names of AUTOMATIC1111's ControlNet extension; `controlnet_request_fields` turns
them into `alwayson_scripts["controlnet"]["args"]`, the same shape API clients send. The
detection itself (preprocessors, resizing) lives in features/controlnet; this module only
shows it.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..app import Easel
from ..features.controlnet import choices
from ..features.controlnet.apply import detect_map
from ..features.controlnet.flux import UNION_TYPES
from ..features.controlnet.units import CONTROL_MODES, RESIZE_MODES, ControlUnit, parse_infotext_unit
from .common import error_html, esc
from .generation_controls import GenerationControls, as_float, as_int
from .uploads import checked_image, settings_limit

PREFIX = "controlnet::"
DEFAULT_SIZE = 512


def unit_count(easel: Easel) -> int:
    return max(1, min(10, int(easel.settings.settings.control_net_unit_count)))


def _unet_config(easel: Easel) -> dict[str, Any] | None:
    current = easel.models.current
    if current is None:
        return None
    # a transformer family: a config no UNet ControlNet, adapter or IP-Adapter fits
    components = current.configs.components
    config = dict(components.get("unet") or {"cross_attention_dim": None, "block_out_channels": [],
                                             **components.get("transformer", {})})
    return {**config, "family": current.architecture.adapter.name}  # Flux ControlNets fit by family, SD 3 by config


def _model_choices(easel: Easel, module: str) -> list[str]:
    return choices.model_names(easel.controlnets, easel.ip_adapters, _unet_config(easel), module)


def models_note(easel: Easel, module: str) -> str:
    """Where a unit's model list is empty, say where models go and where to get them (else nothing)."""
    if len(_model_choices(easel, module)) > 1:
        return ""
    ip_adapter = choices.is_ip_adapter_module(module)
    kind = "IP-Adapter" if ip_adapter else "ControlNet"
    folder = easel.paths.model_dir("ipadapter" if ip_adapter else "controlnet")
    family = " for the loaded checkpoint's model family" if easel.models.current is not None else ""
    return (f'<div class="easel-notice" style="font-size:12px">No {kind} model{family} is installed. Put '
            f"<code>.safetensors</code> files into <code>{esc(folder)}</code> and press 🔄, or get one in "
            f"Models → Download.</div>")


def _threshold_update(spec: tuple | None) -> dict:
    if spec is None:
        return gr.update(visible=False)
    label, default, minimum, maximum = spec
    return gr.update(visible=True, label=label, minimum=minimum, maximum=maximum, value=default)


def build_unit(easel: Easel, controls: GenerationControls, index: int, note: str = "") -> dict[str, Any]:
    """One unit's controls (inside the caller's layout); registered in `controls.inputs`."""
    p = f"{controls.prefix}_controlnet_{index}"
    c: dict[str, Any] = {}
    c["enabled"] = gr.Checkbox(False, label="Enable", elem_id=f"{p}_enable")
    with gr.Row():
        label = "Control image" + (f" ({note})" if note else "")
        c["image"] = checked_image(settings_limit(easel.settings), label=label, type="pil",
                                   sources=["upload", "clipboard"], elem_id=f"{p}_image", height=240)
        preview = gr.Image(label="Preprocessor preview", interactive=False, elem_id=f"{p}_preview", height=240,
                           format="png")
    with gr.Row():
        c["module"] = gr.Dropdown(choices.module_names(), value="none", label="Preprocessor", elem_id=f"{p}_module")
        c["model"] = gr.Dropdown(_model_choices(easel, "none"), value=choices.NO_MODEL, label="Model",
                                 elem_id=f"{p}_model", allow_custom_value=True)  # pasted names may be missing
        refresh = gr.Button("🔄", elem_classes="easel-tool", scale=0, min_width=42, elem_id=f"{p}_refresh")
    note_html = gr.HTML(models_note(easel, "none"), elem_id=f"{p}_models_note")
    with gr.Row():
        run = gr.Button("Run preprocessor", size="sm", elem_id=f"{p}_run_preprocessor")
        message = gr.HTML("", elem_id=f"{p}_message")
    with gr.Row():
        c["weight"] = gr.Slider(0, 2, value=1, step=0.05, label="Control weight", elem_id=f"{p}_weight")
        c["guidance_start"] = gr.Slider(0, 1, value=0, step=0.01, label="Starting control step",
                                        elem_id=f"{p}_guidance_start")
        c["guidance_end"] = gr.Slider(0, 1, value=1, step=0.01, label="Ending control step",
                                      elem_id=f"{p}_guidance_end")
    with gr.Row():
        c["pixel_perfect"] = gr.Checkbox(False, label="Pixel perfect", elem_id=f"{p}_pixel_perfect")
        c["processor_res"] = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor resolution",
                                       elem_id=f"{p}_processor_res")
    with gr.Row():  # a row of their own: four controls in one row overflow a unit's half-width column
        c["threshold_a"] = gr.Slider(0, 255, value=100, step=1, label="Threshold A", visible=False,
                                     elem_id=f"{p}_threshold_a")
        c["threshold_b"] = gr.Slider(0, 255, value=200, step=1, label="Threshold B", visible=False,
                                     elem_id=f"{p}_threshold_b")
    c["control_mode"] = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control mode",
                                 elem_id=f"{p}_control_mode")
    c["union_control_type"] = gr.Dropdown(list(UNION_TYPES), value=UNION_TYPES[0], label="Union control type",
                                          elem_id=f"{p}_union_control_type")  # Flux Union ControlNets
    c["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize mode",
                                elem_id=f"{p}_resize_mode")
    for name, component in c.items():
        controls.inputs[f"{PREFIX}{index}::{name}"] = component

    def module_changed(module: str):
        a, b = choices.thresholds(module)
        models = _model_choices(easel, module)
        return gr.update(choices=models, value=models[1] if len(models) > 1 else choices.NO_MODEL), \
            _threshold_update(a), _threshold_update(b), models_note(easel, module)

    c["module"].change(module_changed, c["module"], [c["model"], c["threshold_a"], c["threshold_b"], note_html],
                       api_name=False, show_progress="hidden")
    refresh.click(lambda module: (gr.update(choices=_model_choices(easel, module)), models_note(easel, module)),
                  c["module"], [c["model"], note_html], api_name=False)
    size = [controls.inputs[k] for k in ("width", "height") if k in controls.inputs]

    def preprocess(image, module, res, a, b, perfect, resize, *wh):
        if image is None:
            return gr.skip(), error_html("Upload a control image first.")
        width, height = (as_int(wh[0], DEFAULT_SIZE), as_int(wh[1], DEFAULT_SIZE)) if len(wh) == 2 \
            else image.size
        spec_a, spec_b = choices.thresholds(module)
        unit = ControlUnit(module=module, processor_res=as_int(res, 512), pixel_perfect=bool(perfect),
                           resize_mode=RESIZE_MODES.index(resize) if resize in RESIZE_MODES else 1,
                           threshold_a=as_float(a) if spec_a else None, threshold_b=as_float(b) if spec_b else None)
        try:
            detected = detect_map(unit, image, width, height, easel.annotators_dir, easel.models.store)
        except ValueError as exc:  # preprocessor errors say what is missing and where it goes
            return gr.skip(), error_html(str(exc))
        return detected, f"<span>{esc(module)}: {detected.width}×{detected.height}</span>"

    run.click(preprocess, [c["image"], c["module"], c["processor_res"], c["threshold_a"], c["threshold_b"],
                           c["pixel_perfect"], c["resize_mode"], *size], [preview, message], api_name=False)
    return c


def build_controlnet_units(easel: Easel, controls: GenerationControls, note: str = "") -> None:
    """An accordion with one sub-tab per unit (txt2img, img2img, inpaint)."""
    with gr.Accordion("ControlNet", open=False, elem_id=f"{controls.prefix}_controlnet"):
        with gr.Tabs():
            for index in range(unit_count(easel)):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{controls.prefix}_controlnet_tab_{index}"):
                    build_unit(easel, controls, index, note)


def build_units_grid(easel: Easel, controls: GenerationControls) -> None:
    """Every unit at once, side by side (the ControlNet tab)."""
    count = unit_count(easel)
    for start in range(0, count, 2):
        with gr.Row(equal_height=False):
            for index in range(start, min(start + 2, count)):
                with gr.Column(variant="panel"):
                    gr.Markdown(f"**ControlNet Unit {index}**")
                    build_unit(easel, controls, index)


def controlnet_request_fields(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Unit dicts (the extension's field names) up to the last enabled unit; [] when none is enabled."""
    units: dict[int, dict[str, Any]] = {}
    for key, value in fields.items():
        if key.startswith(PREFIX):
            _, index, name = key.split("::", 2)
            units.setdefault(int(index), {})[name] = value
    ordered = [units[i] for i in sorted(units)]
    enabled = [i for i, u in enumerate(ordered) if u.get("enabled")]
    if not enabled:
        return []
    result = []
    for unit in ordered[:enabled[-1] + 1]:
        spec_a, spec_b = choices.thresholds(unit.get("module") or "none")
        result.append({**unit, "enabled": bool(unit.get("enabled")),
                       "threshold_a": unit.get("threshold_a") if spec_a else None,
                       "threshold_b": unit.get("threshold_b") if spec_b else None,
                       "processor_res": as_int(unit.get("processor_res"), 512)})
    return result


def pasted_unit_fields(params: dict[str, str]) -> dict[str, Any]:
    """`ControlNet i` infotext entries -> unit control values (the control image stays as it is)."""
    values: dict[str, Any] = {}
    for key, text in params.items():
        if not key.startswith("ControlNet ") or not key[len("ControlNet "):].isdigit():
            continue
        index = int(key[len("ControlNet "):])
        try:
            unit = parse_infotext_unit(text)
        except ValueError:
            continue
        if "model" in unit:
            unit["model"] = unit["model"].split(" [", 1)[0]
        values[f"{PREFIX}{index}::enabled"] = True
        values.update({f"{PREFIX}{index}::{name}": value for name, value in unit.items()})
    return values


def unit_image(image: Image.Image | np.ndarray | None) -> Image.Image | None:
    if image is None or isinstance(image, Image.Image):
        return image
    return Image.fromarray(np.asarray(image))
