"""The Regional Prompter accordion of the txt2img and img2img tabs.

Controls are registered in the tab's inputs as `regions::<argument>` with Regional Prompter's
argument names; `regions_request_fields` turns them into `alwayson_scripts["Regional Prompter"]`
in the extension's positional order (what API clients send) and `pasted_regions_fields` reads an
infotext's `RP ...` keys back. Layout and attention live in features/regions.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..features.regions.args import NAMES, ORDER, args_from_params
from .generation_controls import GenerationControls
from .uploads import checked_image, settings_limit

PREFIX = "regions::"
_SHOWN = ("active", "mode", "matrix_submode", "calc_mode", "ratios", "base_ratios", "use_base", "use_common",
          "use_ncommon", "flip", "mask", "prompt_submode", "threshold")


def build_regions(easel: Easel, controls: GenerationControls) -> None:
    p = f"{controls.prefix}_regional_prompter"
    i = controls.inputs
    with gr.Accordion("Regional Prompter", open=False, elem_id=f"{p}_accordion"):
        i[PREFIX + "active"] = gr.Checkbox(False, label="Active", elem_id=f"{p}_active")
        gr.Markdown("One prompt per region, separated by `BREAK` (`ADDCOMM`: common to all, `ADDBASE`: base "
                    "prompt mixed in at the base ratio). Regions are numbered top to bottom, left to right. "
                    "*Prompt* mode: the first part describes the whole picture, each further part is "
                    "`effect, target` and acts where the picture's prompt attends to its target word "
                    "(attention above the threshold; one threshold per region, comma separated).",
                    elem_id=f"{p}_note")
        with gr.Row():
            i[PREFIX + "mode"] = gr.Radio(["Matrix", "Mask", "Prompt"], value="Matrix", label="Divide mode",
                                          elem_id=f"{p}_mode")
            i[PREFIX + "matrix_submode"] = gr.Radio(["Columns", "Rows"], value="Columns", label="Main splitting",
                                                    elem_id=f"{p}_matrix_submode")
            i[PREFIX + "flip"] = gr.Checkbox(False, label="Flip , and ;", elem_id=f"{p}_flip")
            i[PREFIX + "calc_mode"] = gr.Radio(["Attention", "Latent"], value="Attention", label="Calculation mode",
                                               elem_id=f"{p}_calc_mode")
        with gr.Row():
            i[PREFIX + "ratios"] = gr.Textbox("1,1", label="Divide ratio (, columns; ; rows)", elem_id=f"{p}_ratios")
            i[PREFIX + "base_ratios"] = gr.Textbox("0.2", label="Base ratio", elem_id=f"{p}_base_ratios")
        with gr.Row():
            i[PREFIX + "prompt_submode"] = gr.Radio(["Prompt", "Prompt-Ex"], value="Prompt", label="Prompt mode",
                                                    elem_id=f"{p}_prompt_submode")
            i[PREFIX + "threshold"] = gr.Textbox("0.4", label="Threshold (Prompt mode)", elem_id=f"{p}_threshold")
        with gr.Row():
            i[PREFIX + "use_base"] = gr.Checkbox(False, label="Use base prompt", elem_id=f"{p}_use_base")
            i[PREFIX + "use_common"] = gr.Checkbox(False, label="Use common prompt", elem_id=f"{p}_use_common")
            i[PREFIX + "use_ncommon"] = gr.Checkbox(False, label="Use common negative prompt",
                                                    elem_id=f"{p}_use_ncommon")
        i[PREFIX + "mask"] = checked_image(settings_limit(easel.settings), type="pil", label="Region mask (Mask mode: regions in Regional Prompter's "
                                      "colours)", sources=["upload", "clipboard"], elem_id=f"{p}_mask", height=200)


def regions_request_fields(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The `alwayson_scripts["Regional Prompter"]` entry from the accordion (None when not active)."""
    if not fields.get(PREFIX + "active"):
        return None
    values = {name: default for name, default in ORDER}
    for name in _SHOWN:
        if PREFIX + name in fields:
            value = fields[PREFIX + name]
            values[name] = bool(value) if isinstance(values[name], bool) else value
    values["ratios"] = str(values["ratios"] or "")
    values["base_ratios"] = str(values["base_ratios"] or "0")
    values["threshold"] = str(values["threshold"] if values["threshold"] not in (None, "") else "0.4")
    return {"args": [values[name] for name in NAMES]}


def pasted_regions_fields(params: dict[str, str]) -> dict[str, Any]:
    args = args_from_params(params)
    if args is None:
        return {}
    values = dict(zip(NAMES, args))
    submode = {"Horizontal": "Columns", "Vertical": "Rows"}.get(values["matrix_submode"], values["matrix_submode"])
    values["matrix_submode"] = submode
    return {PREFIX + name: values[name] for name in _SHOWN if name != "mask"}
