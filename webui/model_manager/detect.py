"""Tell what a single-file checkpoint is from its tensor names and shapes alone.

Reading only the safetensors header (names, shapes) is instant even for a 7 GB file, so
the library can show every checkpoint's architecture without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .architecture import Architecture

Shapes = dict[str, tuple[int, ...]]

_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
# Text-encoder tensors that only one family has.
_MARKERS = (
    ("conditioner.embedders.1.model.ln_final.weight", "sdxl"),
    ("conditioner.embedders.0.model.ln_final.weight", "sdxl-refiner"),
    ("cond_stage_model.model.ln_final.weight", "sd2"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd1"),
    ("cond_stage_model.transformer.final_layer_norm.weight", "sd1"),
)
# Cross-attention width of the UNet, for files whose text encoder is missing or unusual.
_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}


class DetectionError(ValueError):
    """The file is not a Stable Diffusion checkpoint Easel can load."""


@dataclass(frozen=True)
class Detection:
    architecture: Architecture
    # SD 2.x files do not say whether they predict noise or velocity; the loader probes.
    prediction_uncertain: bool = False


def _context_width(shapes: Shapes) -> int | None:
    for key, shape in shapes.items():
        if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight"):
            return shape[1]
    return None


def detect(shapes: Shapes) -> Detection:
    """Architecture of a single-file checkpoint in the original layout."""
    unet_in = shapes.get(_UNET_IN)
    if unet_in is None:
        if any(k.startswith(("lora_", "lora_unet")) or ".lora_" in k for k in shapes):
            raise DetectionError("this is a LoRA, not a checkpoint: put it in models/Lora")
        if any(k.startswith(("encoder.", "decoder.")) for k in shapes):
            raise DetectionError("this is a VAE, not a checkpoint: put it in models/VAE")
        raise DetectionError("no UNet tensors (model.diffusion_model.*): not a Stable Diffusion checkpoint")

    family = next((fam for key, fam in _MARKERS if key in shapes), None)
    if family is None:
        width = _context_width(shapes)
        if width not in _CONTEXT_WIDTH:
            raise DetectionError("the file has no text encoder Easel recognises")
        raise DetectionError(
            f"the file has a {_CONTEXT_WIDTH[width]} UNet but no text encoder; Easel needs a full checkpoint")

    in_channels = unet_in[1]
    if in_channels not in (4, 9):
        raise DetectionError(f"UNet with {in_channels} input channels (e.g. instruct-pix2pix) is not supported")
    inpainting = in_channels == 9

    if "v_pred" in shapes:  # a marker tensor some trainers add
        return Detection(Architecture(family, "v_prediction", inpainting))
    return Detection(Architecture(family, "epsilon", inpainting), prediction_uncertain=family == "sd2")
