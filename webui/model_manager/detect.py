"""Tell what a single-file checkpoint is from its tensor names and shapes alone.

Reading only the safetensors header (names, shapes) is instant even for a 7 GB file, so
the library can show every checkpoint's architecture without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..families.registry import all_families, family_by_context_width, family_by_marker
from .architecture import Architecture
from .convert import with_unet_prefix

Shapes = dict[str, tuple[int, ...]]

_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


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
    """Architecture of a single-file checkpoint in the original layout (a UNet-only file too, with or
    without its `model.diffusion_model.` prefix: its text encoders and VAE come from companion files)."""
    shapes = dict(with_unet_prefix(shapes))
    for family in all_families():  # families with a layout of their own (a transformer) say so first
        found = family.detect_file(shapes)
        if found is not None:
            return Detection(Architecture(family.name, **found))
    unet_in = shapes.get(_UNET_IN)
    if unet_in is None:
        if any(k.startswith(("lora_", "lora_unet")) or ".lora_" in k for k in shapes):
            raise DetectionError("this is a LoRA, not a checkpoint: put it in models/Lora")
        if any(k.startswith(("encoder.", "decoder.")) for k in shapes):
            raise DetectionError("this is a VAE, not a checkpoint: put it in models/VAE")
        raise DetectionError("neither UNet tensors (model.diffusion_model.*) nor a transformer Easel knows "
                             "(Flux's double_blocks.*): not a checkpoint Easel can load")

    adapter = family_by_marker(shapes)  # a text-encoder tensor only one family has
    if adapter is None:
        by_width = family_by_context_width(_context_width(shapes))  # the UNet's cross-attention width
        if by_width is None:
            raise DetectionError("the file has no text encoder Easel recognises")
        if not by_width.takes_companions():
            raise DetectionError(f"the file has a {by_width.label} UNet but no text encoder; Easel loads a "
                                 f"{by_width.label} UNet only as a full checkpoint")
        adapter = by_width  # a UNet-only file: text encoders and VAE from models/text_encoder and models/VAE
    family = adapter.name

    in_channels = unet_in[1]
    if in_channels not in (4, 9):
        raise DetectionError(f"UNet with {in_channels} input channels (e.g. instruct-pix2pix) is not supported")
    inpainting = in_channels == 9

    if "v_pred" in shapes:  # a marker tensor some trainers add
        return Detection(Architecture(family, "v_prediction", inpainting))
    return Detection(Architecture(family, "epsilon", inpainting), prediction_uncertain=adapter.prediction_uncertain)
