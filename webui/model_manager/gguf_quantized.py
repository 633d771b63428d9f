"""GGUF weights kept quantized in memory: each layer dequantizes its blocks when it runs.

`loader.build_module` calls `quantize_layers` on a model still on the meta device: every Linear
and Conv2d whose file weight is quantized (Q8_0, Q6_K, Q5_K, Q4_K, Q4_0, ...) becomes a layer that
holds the file's blocks (diffusers' `GGUFParameter`) and never a dequantized copy. Linear layers
use diffusers' `GGUFLinear`. Convolutions use `GGUFConv2d` below: diffusers ships only the Linear
layer, yet a UNet's convolutions hold about a third of SDXL's weights, so leaving them dequantized
would keep a GGUF UNet near fp16 size. It dequantizes with diffusers' own `dequantize_gguf_tensor`
per call, as `GGUFLinear` does. Conv weights are stored in GGUF flattened to rows (out, in*kh*kw),
with ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>` field giving the real shape (gguf.py reads it),
since blocks run along the last axis and a 3x3 kernel's axis is too short for a block.

The family's key conversion runs on the blocks too (lazy_tensors.py): a tensor it only cut into
whole rows (Flux's fused q/k/v) stays quantized; anything else is dequantized at load.
"""
from __future__ import annotations

from typing import Any

import torch

from .lazy_tensors import StoredTensor


class GGUFConv2d(torch.nn.Conv2d):
    """A Conv2d whose weight is GGUF blocks of shape (out, in*kh*kw), dequantized per call."""

    compute_dtype: torch.dtype

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        weight = dequantize_gguf_tensor(self.weight).reshape(self.out_channels, -1, *self.kernel_size)
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        return self._conv_forward(inputs, weight.to(self.compute_dtype), bias)


def _blocks(value: Any) -> Any:
    """The GGUFParameter of a quantized file tensor (read now), or None."""
    if isinstance(value, StoredTensor):
        return value.blocks() if value.quantized else None
    return value if hasattr(value, "quant_type") else None


def _fits(value: Any, child: torch.nn.Module) -> bool:
    if isinstance(value, StoredTensor):
        return value.quantized and tuple(value.shape) == tuple(child.weight.shape)
    shape = tuple(getattr(value, "quant_shape", ()))
    return shape in {tuple(child.weight.shape), (child.weight.shape[0], child.weight[0].numel())}


def _swap(child: torch.nn.Module, compute: torch.dtype) -> torch.nn.Module | None:
    from diffusers.quantizers.gguf.utils import GGUFLinear

    if type(child) is torch.nn.Linear:
        with torch.device("meta"):
            layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None, compute_dtype=compute)
        layer.source_cls = torch.nn.Linear
        return layer
    if type(child) is torch.nn.Conv2d and child.padding_mode == "zeros":
        with torch.device("meta"):
            layer = GGUFConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                               child.padding, child.dilation, child.groups, child.bias is not None)
        layer.compute_dtype = compute
        return layer
    return None


def quantize_layers(model: torch.nn.Module, tensors: dict[str, Any], compute: torch.dtype) -> set[str]:
    """Swap (on the meta device) each Linear/Conv2d whose weight in `tensors` is quantized for a layer
    holding its blocks; returns the weight keys now set (the caller loads the rest)."""
    done: set[str] = set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            key = f"{parent_name}.{name}.weight" if parent_name else f"{name}.weight"
            value = tensors.get(key)
            if value is None or not _fits(value, child):
                continue
            layer = _swap(child, compute)
            if layer is None:
                continue
            layer.weight = _blocks(value)
            layer.requires_grad_(False)
            parent._modules[name] = layer
            done.add(key)
    return done


def is_quantized(model: Any) -> bool:
    """Whether layers were kept quantized (fp8 storage and weight patches must leave them alone)."""
    return bool(getattr(model, "patches", {}).get("gguf_quantized"))
