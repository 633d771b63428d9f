"""The "Guidance add-ons" and "Refiner" accordions of the generation tabs (no diffusion code here).

Controls are named `<prefix>_<argument>` after each feature's argument list (features/guidance),
so the request, paste and the API share one spelling; the values become the same always-on
entries API clients send, plus the request fields `s_min_uncond`, `refiner_checkpoint` and
`refiner_switch_at`.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..features.guidance.freeu import FreeU
from ..features.guidance.pag import PAG
from ..features.guidance.sag import SAG
from ..features.guidance.slg import SLG

SCRIPTS = (FreeU, PAG, SAG, SLG)
# every field these accordions own (what a pasted infotext may set)
PASTED = ("s_min_uncond", "refiner_checkpoint", "refiner_switch_at",
          *(name for script in SCRIPTS for name in script.ui_fields()))
NO_REFINER = "None"

LABELS = {"b1": "B1", "b2": "B2", "s1": "S1", "s2": "S2", "start": "Start", "end": "End", "scale": "Scale",
          "attenuation": "Attenuation (% of scale per step)", "start_step": "Start", "end_step": "End",
          "mask_threshold": "Mask threshold", "blur_sigma": "Blur sigma", "layers": "Layers"}


def _script_controls(controls: Any, script: Any, label: str) -> None:
    p = controls.prefix
    with gr.Group():
        with gr.Row():
            for arg in script.spec:
                field = f"{script.prefix}_{arg.name}"
                elem_id = f"{p}_{field}"
                if arg.name == "enabled":
                    component = gr.Checkbox(False, label=label, elem_id=elem_id, min_width=120)
                elif isinstance(arg.default, str):
                    component = gr.Textbox(arg.default, label=LABELS.get(arg.name, arg.name), elem_id=elem_id,
                                           min_width=90)
                elif arg.choices:
                    component = gr.Radio(["1", "2"], value=str(arg.default), label="Version", elem_id=elem_id,
                                         min_width=80)
                else:
                    step = 0.01 if arg.high <= 10 else 0.1
                    component = gr.Slider(arg.low, arg.high, value=arg.default, step=step,
                                          label=LABELS.get(arg.name, arg.name), elem_id=elem_id, min_width=90)
                controls.inputs[field] = component


def build_guidance_addons(easel: Any, controls: Any) -> None:
    """NGMS, FreeU, PAG and SAG in one accordion; the refiner in its own (AUTOMATIC1111's "Refiner")."""
    p = controls.prefix
    with gr.Accordion("Guidance add-ons", open=False, elem_id=f"{p}_guidance_addons"):
        controls.inputs["s_min_uncond"] = gr.Slider(
            0, 15, value=0, step=0.01, label="NGMS: skip the negative prompt below this sigma (0: the setting's)",
            elem_id=f"{p}_s_min_uncond")
        _script_controls(controls, FreeU, "FreeU")
        _script_controls(controls, PAG, "Perturbed-Attention Guidance")
        _script_controls(controls, SAG, "Self-Attention Guidance")
        _script_controls(controls, SLG, "Skip Layer Guidance (SD 3.5 Medium)")
    with gr.Accordion("Refiner", open=False, elem_id=f"{p}_refiner"):
        with gr.Row():
            controls.inputs["refiner_checkpoint"] = gr.Dropdown(
                [NO_REFINER, *easel.models.titles()], value=NO_REFINER, label="Checkpoint", allow_custom_value=True,
                elem_id=f"{p}_refiner_checkpoint")
            controls.inputs["refiner_switch_at"] = gr.Slider(0.01, 1, value=0.8, step=0.01, label="Switch at",
                                                             elem_id=f"{p}_refiner_switch_at")


def guidance_scripts(fields: dict[str, Any]) -> dict[str, Any]:
    """The always-on entries the accordions' values switch on."""
    scripts = {}
    for script in SCRIPTS:
        entry = script.alwayson_from_fields(fields)
        if entry is not None:
            scripts[script.title] = entry
    return scripts


def guidance_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Request fields: NGMS (0: leave it to the setting) and the refiner."""
    out: dict[str, Any] = {}
    sigma = fields.get("s_min_uncond")
    if sigma:
        out["s_min_uncond"] = float(sigma)
    refiner = fields.get("refiner_checkpoint")
    if refiner and refiner != NO_REFINER:
        out["refiner_checkpoint"] = refiner
        out["refiner_switch_at"] = float(fields.get("refiner_switch_at") or 0.8)
    return out
