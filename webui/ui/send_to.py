""""Send to" buttons: an image and its generation parameters go to another tab.

The parameters are parsed with core.pnginfo (any tool's format), turned into request
field values, and written into the target tab's controls by field name. The checkpoint
recorded in the image is selected when it is installed (matched by hash, then by name).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr
from PIL import Image

from ..app import Easel
from ..core import samplers
from ..core.images import read_infotext
from ..core.infotext import parse_infotext
from ..pnginfo import infotext_to_fields, override_items
from ..features.img2img import MASKED_CONTENT, RESIZE_MODES
from ..model_manager.registry import ModelNotFoundError
from .common import esc
from .controlnet_ui import PREFIX as CONTROLNET_PREFIX, pasted_unit_fields
from .detailer_ui import PREFIX as DETAILER_PREFIX, pasted_detailer_fields
from .regions_ui import PREFIX as REGIONS_PREFIX, pasted_regions_fields
from .tiled_diffusion_ui import PREFIX as TILED_PREFIX, pasted_tiled_fields
from .kontext_ui import IMAGE as KONTEXT_IMAGE, PREFIX as KONTEXT_PREFIX, pasted_kontext_fields
from .generation_controls import GenerationControls
from .identity_tab import PASTED as IDENTITY_PASTED, pasted_identity_fields
from .img2img import INPAINT_AREAS, MASK_MODES
from ..features import soft_inpaint, wildcards
from ..features.hires import SAME_CHECKPOINT
from .guidance_ui import PASTED as GUIDANCE_PASTED

# request fields a pasted infotext may set, when the target tab has a control for them
PASTEABLE = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "seed", "width",
             "height", "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
             "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_checkpoint_name",
             "denoising_strength", "mask_blur",
             "inpaint_full_res_padding", "lora_composition", "subseed", "subseed_strength", "seed_resize_from_w",
             "seed_resize_from_h", "cfg_rescale", "cfg_interval_start", "cfg_interval_end", "lora_switch_steps", "distilled_cfg_scale",
             "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert", "resize_mode", "override_settings",
             *soft_inpaint.UI_FIELDS, "restore_faces", "tiling", *wildcards.UI_FIELDS, *GUIDANCE_PASTED)
REGIONS_MASK = REGIONS_PREFIX + "mask"  # a picture: a pasted infotext does not hold it
# index-valued fields shown as radios: the label to select for each index
RADIO_LABELS: dict[str, tuple[str, ...]] = {"resize_mode": RESIZE_MODES, "inpainting_fill": MASKED_CONTENT,
                                            "inpaint_full_res": INPAINT_AREAS, "inpainting_mask_invert": MASK_MODES}


@dataclass
class SendTarget:
    tab: str                                   # id of the top-level tab
    label: str
    image: Any = None                          # component receiving the picture
    image_value: Callable[[Image.Image], Any] = lambda image: image
    controls: GenerationControls | None = None
    subtab: tuple[Any, Any] | None = None      # (Tabs component, id) to select inside the tab
    extra_outputs: list[tuple[Any, Any]] = field(default_factory=list)  # (component, value) also set on send

    def fields(self) -> list[str]:
        if self.controls is None:
            return []
        units = [name for name in self.controls.inputs if name.startswith(CONTROLNET_PREFIX)]
        identity = [name for name in IDENTITY_PASTED if name in self.controls.inputs]  # the Identity tab only
        detailer = [name for name in self.controls.inputs if name.startswith(DETAILER_PREFIX)]
        regions = [name for name in self.controls.inputs if name.startswith(REGIONS_PREFIX) and name != REGIONS_MASK]
        tiled = [name for name in self.controls.inputs if name.startswith(TILED_PREFIX)]
        kontext = [name for name in self.controls.inputs if name.startswith(KONTEXT_PREFIX) and name != KONTEXT_IMAGE]
        return [name for name in PASTEABLE if name in self.controls.inputs] + units + identity + detailer + regions \
            + tiled + kontext

    def outputs(self) -> list:
        outs = [self.image] if self.image is not None else []
        fields = [self.controls.inputs[n] for n in self.fields()] if self.controls is not None else []
        return outs + fields + [component for component, _ in self.extra_outputs]

    def extra_values(self) -> list:
        return [value for _, value in self.extra_outputs]


@dataclass
class GallerySource:
    """A gallery with Send-to buttons that is not a generation tab (Extras); GenerationControls has the same fields."""

    prefix: str
    gallery: Any
    selected: Any      # gr.State: index of the selected image
    infotexts: Any     # gr.State: parameters per image ([] : read them from the image files)
    send_row: Any


def find_checkpoint(easel: Easel, hint: dict[str, str]) -> str | None:
    """Installed checkpoint title for an infotext's Model hash / Model name, hash first."""
    for query in (hint.get("hash"), hint.get("name")):
        if query:
            try:
                return easel.models.registry.title(easel.models.find(query))
            except ModelNotFoundError:
                continue
    return None


def pasted_fields(easel: Easel, text: str) -> dict[str, Any]:
    """Request field values from an infotext; extensions may adjust them (infotext_pasted hook)."""
    info = parse_infotext(text) if text else None
    values = infotext_to_fields(info) if info else {}
    if info:
        values.update(pasted_unit_fields(info.params))
        values.update(pasted_identity_fields(info.params))
        values.update(pasted_detailer_fields(info.params))
        values.update(pasted_regions_fields(info.params))
        values.update(pasted_tiled_fields(info.params))
        values.update(pasted_kontext_fields(info.params))
        values["override_settings"] = override_items(info)
        for key in ("refiner_checkpoint", "hr_checkpoint_name"):  # "name [hash]" as A1111 writes it -> the title
            if values.get(key):
                name, _, short = values[key].partition(" [")
                values[key] = find_checkpoint(easel, {"name": name, "hash": short.rstrip("]")}) or values[key]
    easel.engine.hooks.call("infotext_pasted", text=text, fields=values)
    return values


def paste_updates(easel: Easel, target: SendTarget, text: str) -> list:
    values = pasted_fields(easel, text)
    updates = []
    for name in target.fields():
        if name == "override_settings":  # always replaced, so entries from an earlier paste do not linger
            items = values.get(name) or []
            updates.append(gr.update(choices=items, value=items, visible=bool(items)))
            continue
        if name not in values:
            updates.append(gr.skip())
            continue
        value = values[name]
        if name in RADIO_LABELS:
            labels = RADIO_LABELS[name]
            index = int(value)
            updates.append(labels[index] if 0 <= index < len(labels) else gr.skip())
            continue
        if name in ("hr_sampler_name", "hr_scheduler") and not value:
            value = "Use same"
        if name == "hr_checkpoint_name" and not value:
            value = SAME_CHECKPOINT
        if name == "sampler_name" and value not in samplers.sampler_names():
            updates.append(gr.skip())
            continue
        updates.append(value)
    return updates


def checkpoint_update(easel: Easel, text: str) -> tuple[Any, str]:
    """(dropdown update, note) for the checkpoint an infotext names."""
    hint = infotext_to_fields(parse_infotext(text)).get("checkpoint_hint") if text else None
    if not hint:
        return gr.skip(), ""
    title = find_checkpoint(easel, hint)
    if title:
        return gr.update(value=title, choices=easel.models.titles()), f"Checkpoint {esc(title)} selected (from the image's parameters)."
    name = hint.get("name") or hint.get("hash")
    return gr.skip(), f"The image was made with {esc(name)}, which is not installed."


def gallery_image(gallery: Any, index: int) -> Image.Image | None:
    if not gallery:
        return None
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    source = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(source, dict):
        source = source.get("path") or source.get("image", {}).get("path")
    if isinstance(source, Image.Image):
        return source
    try:
        return Image.open(source).convert("RGB") if source else None
    except OSError:
        return None


def gallery_text(gallery: Any, index: int, texts: list[str] | None) -> str:
    """The selected image's parameters: from the tab's list, else from the image file itself (Extras keeps them)."""
    if texts and isinstance(index, int) and 0 <= index < len(texts):
        return texts[index]
    if not gallery:
        return ""
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    source = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(source, dict):
        source = source.get("path") or source.get("image", {}).get("path")
    if isinstance(source, Image.Image):
        return read_infotext(source) or ""
    try:
        with Image.open(source) as image:
            return read_infotext(image) or ""
    except (OSError, TypeError, ValueError):
        return ""


def wire_send_buttons(easel: Easel, tabs: gr.Tabs, checkpoint: gr.Dropdown, source: GenerationControls | GallerySource,
                      targets: list[SendTarget]) -> None:
    """Buttons under a gallery: the selected image and its parameters go to each target tab."""
    with source.send_row:
        for target in targets:
            if target.controls is source or target.tab == source.prefix:
                continue
            button = gr.Button(f"Send to {target.label}", size="sm", elem_id=f"{source.prefix}_send_to_{target.tab}")

            def send(gallery, index, texts, target=target):
                image = gallery_image(gallery, index)
                text = gallery_text(gallery, index, texts)
                picked, _ = checkpoint_update(easel, text)
                image_update = [target.image_value(image) if image is not None else gr.skip()] if target.image else []
                sub = [gr.Tabs(selected=target.subtab[1])] if target.subtab else []
                return [gr.Tabs(selected=target.tab), picked, *sub, *image_update,
                        *paste_updates(easel, target, text), *target.extra_values()]

            outputs = [tabs, checkpoint] + ([target.subtab[0]] if target.subtab else []) + target.outputs()
            button.click(send, [source.gallery, source.selected, source.infotexts], outputs, api_name=False)
