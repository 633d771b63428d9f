"""LoRA files in the layouts published for Flux.1, turned into the diffusers/PEFT layout
(`transformer.<module>.lora_A/lora_B`) the LoRA patcher reads, by diffusers' own conversions:

- kohya / sd-scripts (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, with `.alpha`) and the
  same under BFL's names (`diffusion_model.double_blocks.0...lora_down`, as ComfyUI saves them):
  `_convert_kohya_flux_lora_to_diffusers` (alpha folded into the weights);
- XLabs (`double_blocks.0.processor.qkv_lora1.down.weight`): `_convert_xlabs_flux_lora_to_diffusers`.

Those functions assume the published width (3072) where they split a fused single-block
projection, so they are for real Flux files; a file they cannot convert is refused by name.
"""
from __future__ import annotations

from typing import Any

_KOHYA_FLUX = ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "diffusion_model.double_blocks.",
               "diffusion_model.single_blocks.")


def flux_format(tensors: dict[str, Any]) -> str | None:
    """"kohya" or "xlabs" when the keys are one of Flux's published LoRA layouts; None otherwise."""
    if any(k.startswith(_KOHYA_FLUX) and ".lora_down.weight" in k for k in tensors):
        return "kohya"
    if any(".processor." in k and k.startswith(("double_blocks.", "single_blocks.")) for k in tensors):
        return "xlabs"
    return None


def to_diffusers_layout(tensors: dict[str, Any]) -> dict[str, Any]:
    """The same LoRA in the diffusers/PEFT layout (a new dict); tensors of other layouts as they are.
    Raises ValueError naming the layout when diffusers' conversion cannot read it."""
    kind = flux_format(tensors)
    if kind is None:  # SD 3 / Z-Image layouts (features/lora_mmdit.py), else as it is
        from .lora_mmdit import to_diffusers_layout as mmdit_layout

        return mmdit_layout(tensors)
    from diffusers.loaders import lora_conversion_utils as convert

    function = {"kohya": convert._convert_kohya_flux_lora_to_diffusers,
                "xlabs": convert._convert_xlabs_flux_lora_to_diffusers}[kind]
    try:
        return function(dict(tensors))
    except (ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise ValueError(f"a Flux LoRA in the {kind} layout that diffusers' conversion cannot read ({exc})") from exc


class QuantizedBackup:
    """What a GGUF-quantized layer had before a LoRA patched it: its class and its quantized weight."""

    def __init__(self, cls: type, weight: Any):
        self.cls, self.weight = cls, weight

    def restore(self, module: Any) -> None:
        module.__class__ = self.cls
        module.weight = self.weight


def quantized_patch(module: Any, delta: Any) -> QuantizedBackup:
    """Patch a diffusers GGUFLinear: while the LoRA is on, the layer is a plain Linear holding its dequantized
    weight plus the LoRA's change (block-quantized bytes cannot take an addition); restore() puts the
    quantized layer back as it was. Costs the layer's full-precision size only while a LoRA is on."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    backup = QuantizedBackup(type(module), module.weight)
    dtype = getattr(module, "compute_dtype", None) or torch.float32
    full = dequantize_gguf_tensor(module.weight).reshape(delta.shape).to(device=delta.device,
                                                                         dtype=torch.float32) + delta
    # GGUFLinear is a Linear, GGUFConv2d (kernel stored as rows) a Conv2d: the plain forward on a plain weight
    if isinstance(module, torch.nn.Conv2d):
        full = full.reshape(module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        module.__class__ = torch.nn.Conv2d
    else:
        module.__class__ = torch.nn.Linear
    module.weight = torch.nn.Parameter(full.to(dtype), requires_grad=False)
    return backup
