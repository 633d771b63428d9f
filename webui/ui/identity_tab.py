"""The Identity tab: PhotoMaker (v1, v2) and InstantID on SDXL checkpoints.

Only controls live here: the method, the photos, the strengths and the usual generation
controls; the request carries them in `alwayson_scripts["identity"]` and the engine does
the rest (webui/features/identity). A panel lists the files the chosen method still needs.
Pasting parameters (PNG Info, Send to) restores the method and strengths from the image's
`Identity` entry; the photos are not in it, which the note under the method says.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..core.request import GenerationRequest
from ..features.identity.args import METHODS, RANGES, TRIGGER, parse_identity_infotext
from .common import esc
from .controlnet_ui import build_controlnet_units
from .generation_controls import (GenerationControls, as_float, as_int, build_output, build_prompt_area,
                                  build_sampling, common_request_fields, wire_generation)
from .runner import SessionJobs

PHOTOS = 4
PICKLE_NOTE = ("Published `.bin` files are read with torch's weights-only loader, which loads tensors and cannot "
               "run code; no --allow-pickle is needed for them.")
HELP = {
    "InstantID": "One face photo gives the identity; an optional pose photo gives the face's position and angle. "
                 "insightface finds the face (the largest, when there are several).",
    "PhotoMaker v1": f"1-4 photos of one person. Write the class word followed by the trigger word in the prompt: "
                     f"`a photo of a man {TRIGGER}, ...`.",
    "PhotoMaker v2": f"1-4 photos of one person (each must show the face). Write the class word followed by the "
                     f"trigger word: `a photo of a woman {TRIGGER}, ...`.",
}


SDXL_NOTE = "**Needs an SDXL checkpoint** (chosen at the top of the page)."


def files_markdown(easel: Easel, method: str) -> str:
    """What the method needs, said before any photo is uploaded: an SDXL checkpoint and its files."""
    service = easel.identity
    lines = service.missing(method) if service is not None else ["Identity is not available in this build."]
    text = SDXL_NOTE + "\n\n" + HELP.get(method, "")
    if lines:
        text += "\n\n**Files needed** (then press Generate again):\n" + "\n".join(f"- `{esc(line)}`" for line in lines)
    return text + "\n\n" + PICKLE_NOTE


# the tab's controls a pasted `Identity` entry sets (send_to writes them by these names)
PASTED = ("identity_method", "identity_adapter_strength", "identity_identitynet_strength", "identity_guidance_start",
          "identity_guidance_end", "identity_style_strength", "identity_lora_weight", "identity_note")
INSTANTID_DEFAULTS = {"guidance_start": 0.0, "guidance_end": 1.0}  # left out of the infotext when unchanged


def _clamped(name: str, value: float) -> float:
    low, high = RANGES[name]
    return min(max(value, low), high)


def pasted_identity_fields(params: dict[str, str]) -> dict[str, Any]:
    """An infotext's `Identity` entry -> the tab's control values, and the note saying the photos are not in it.

    Without the entry the note is cleared (a plain txt2img infotext restores only the usual fields).
    """
    text = params.get("Identity")
    if not text:
        return {"identity_note": ""}
    parsed = parse_identity_infotext(text)
    method = parsed.get("method")
    if method not in METHODS:
        return {"identity_note": f"The image's Identity entry names no method Easel knows ({esc(str(method))}); "
                                 "its settings were not restored."}
    values: dict[str, Any] = {"identity_method": method}
    names = ("style_strength", "lora_weight") if method != "InstantID" else \
        ("adapter_strength", "identitynet_strength", "guidance_start", "guidance_end")
    for name in names:
        value = parsed.get(name, INSTANTID_DEFAULTS.get(name))
        if value is not None:
            values[f"identity_{name}"] = _clamped(name, value)
    if method == "InstantID":
        photos = "the face photo (Photo 1)" + (" and the pose image" if parsed.get("pose_image") else "")
    else:
        count = parsed.get("photos")
        photos = f"the {count} photos" if isinstance(count, int) and count > 1 else "the photo"
    values["identity_note"] = (f"**{esc(method)}** settings restored from the image's parameters. The photos are not "
                               f"stored in them: upload {photos} again.")
    return values


def identity_args(fields: dict[str, Any]) -> dict[str, Any]:
    """The `alwayson_scripts["identity"]["args"]` object from the tab's values."""
    method = fields.get("identity_method") or METHODS[0]
    photos = [fields.get(f"identity_photo_{i}") for i in range(1, PHOTOS + 1)]
    photos = [p for p in photos if p is not None]
    if not photos:
        raise ValueError("Identity: upload a photo of the person (Photo 1).")
    args: dict[str, Any] = {"method": method, "images": photos if method != "InstantID" else photos[:1]}
    if method == "InstantID":
        args.update(pose_image=fields.get("identity_pose"),
                    adapter_strength=as_float(fields.get("identity_adapter_strength"), 0.8),
                    identitynet_strength=as_float(fields.get("identity_identitynet_strength"), 0.8),
                    guidance_start=as_float(fields.get("identity_guidance_start"), 0.0),
                    guidance_end=as_float(fields.get("identity_guidance_end"), 1.0))
    else:
        args.update(style_strength=as_float(fields.get("identity_style_strength"), 20),
                    lora_weight=as_float(fields.get("identity_lora_weight"), 1.0))
    return args


def identity_request(fields: dict[str, Any]) -> GenerationRequest:
    request = GenerationRequest(**common_request_fields(fields), mode="txt2img", width=as_int(fields.get("width")),
                                height=as_int(fields.get("height")))
    request.alwayson_scripts["identity"] = {"args": identity_args(fields)}
    return request


def build_identity_tab(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs) -> GenerationControls:
    controls = GenerationControls("identity")
    build_prompt_area(easel, controls)
    i = controls.inputs
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            i["identity_method"] = gr.Radio(list(METHODS), value=METHODS[0], label="Method",
                                            elem_id="identity_method")
            # set when parameters are pasted (send_to writes it by name); Generate receives it and ignores it
            i["identity_note"] = gr.Markdown("", elem_id="identity_paste_note")
            files = gr.Markdown(files_markdown(easel, METHODS[0]), elem_id="identity_files")
            with gr.Row():
                i["identity_photo_1"] = gr.Image(type="pil", label="Photo 1 (face)", elem_id="identity_photo_1",
                                                 height=200, sources=["upload", "clipboard"])
                i["identity_pose"] = gr.Image(type="pil", label="Pose image (InstantID, optional)",
                                              elem_id="identity_pose", height=200, sources=["upload", "clipboard"])
            with gr.Accordion("More photos (PhotoMaker)", open=False):
                with gr.Row():
                    for n in range(2, PHOTOS + 1):
                        i[f"identity_photo_{n}"] = gr.Image(type="pil", label=f"Photo {n}", height=160,
                                                            elem_id=f"identity_photo_{n}",
                                                            sources=["upload", "clipboard"])
            with gr.Group(visible=True) as instantid_box:
                with gr.Row():
                    i["identity_adapter_strength"] = gr.Slider(0, 2, value=0.8, step=0.05, label="Adapter strength",
                                                               elem_id="identity_adapter_strength")
                    i["identity_identitynet_strength"] = gr.Slider(0, 2, value=0.8, step=0.05,
                                                                   label="IdentityNet strength",
                                                                   elem_id="identity_identitynet_strength")
                with gr.Row():
                    i["identity_guidance_start"] = gr.Slider(0, 1, value=0, step=0.01, label="IdentityNet start",
                                                             elem_id="identity_guidance_start",
                                                             info="Fraction of the steps (0-1), like a "
                                                                  "ControlNet unit's starting control step")
                    i["identity_guidance_end"] = gr.Slider(0, 1, value=1, step=0.01, label="IdentityNet end",
                                                           elem_id="identity_guidance_end",
                                                           info="The face adapter applies at every step")
            with gr.Group(visible=False) as photomaker_box:
                with gr.Row():
                    i["identity_style_strength"] = gr.Slider(
                        0, 100, value=20, step=1, label="Style strength (% of steps before the identity applies)",
                        elem_id="identity_style_strength")
                    i["identity_lora_weight"] = gr.Slider(0, 2, value=1.0, step=0.05, label="PhotoMaker LoRA weight",
                                                          elem_id="identity_lora_weight")
            build_sampling(easel, controls)
            build_controlnet_units(easel, controls, note="Combined with the identity method.")
        with gr.Column(scale=1):
            build_output(controls)

    def switch(method: str):
        instant = method == "InstantID"
        return gr.update(visible=instant), gr.update(visible=not instant), files_markdown(easel, method)

    i["identity_method"].change(switch, i["identity_method"], [instantid_box, photomaker_box, files],
                                api_name=False, show_progress="hidden")
    wire_generation(easel, controls, sessions, checkpoint, identity_request, api_name="identity",
                    queue_label="Identity")
    return controls
