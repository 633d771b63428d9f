"""A GGUF checkpoint's denoiser kept quantized in memory, with diffusers' own GGUF layer.

The model is first built the usual way (dequantized: `gguf.read_gguf_checkpoint`, the family's
conversion, `loader.build_module`), so every family and every layout loads. Then each Linear layer
of the denoiser whose file tensor is quantized (Q8_0, Q6_K, Q5_K, Q4_K, Q4_0, ...) is swapped for
diffusers' `GGUFLinear` holding the file's quantized blocks (`GGUFParameter`, read by diffusers'
`load_gguf_checkpoint`), which dequantizes per call in the compute type. The family's own key
conversion runs on the quantized tensors too (Flux's BFL table only splits and swaps rows, which
block quantization along a row survives); a tensor whose converted shape does not match its layer
(a reshaped or non-Linear weight) stays dequantized. Why not diffusers' `from_single_file` with a
`GGUFQuantizationConfig`: its Flux conversion fixes the width at 3072 (tiny and pruned models fail)
and it needs a config from the Hub or a folder; this path needs neither and serves every family.

When it cannot (diffusers' GGUF support missing, ComfyUI-GGUF's reshaped tensors, nothing quantized),
the model keeps today's dequantized weights and the returned reason goes into the load notes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .loader import LoadedModel

_ORIG_SHAPE = "comfy.gguf.orig_shape."


def _quantized_tensors(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint
        from gguf import GGUFReader
    except ImportError as exc:
        return None, f"diffusers' GGUF support is missing ({exc})"
    if any(name.startswith(_ORIG_SHAPE) for name in GGUFReader(str(path)).fields):
        return None, "its tensors are stored reshaped (ComfyUI-GGUF)"
    try:
        return load_gguf_checkpoint(str(path), return_tensors=True), ""
    except ValueError as exc:  # a quantization type diffusers does not know
        return None, str(exc).splitlines()[0]


def keep_quantized(model: LoadedModel, path: Path) -> str:
    """Swap the denoiser's Linear weights for the file's quantized blocks; say what was done (or why not)."""
    tensors, why = _quantized_tensors(path)
    if tensors is None:
        return f"GGUF dequantized at load: {why}"
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    adapter = model.architecture.adapter
    try:
        components, _ = adapter.split_single_file(tensors, model.configs)
    except Exception as exc:  # the family's conversion could not run on quantized tensors
        return f"GGUF dequantized at load: the layout did not convert quantized ({type(exc).__name__}: {exc})"
    state = components.get(adapter.denoiser_component, {})
    denoiser = model.unet
    compute = model.device.dtype
    swapped = 0
    for parent_name, parent in list(denoiser.named_modules()):
        for name, child in list(parent.named_children()):
            key = f"{parent_name}.{name}" if parent_name else name
            weight = state.get(key + ".weight")
            if type(child) is not torch.nn.Linear or not isinstance(weight, GGUFParameter) \
                    or tuple(weight.quant_shape) != tuple(child.weight.shape):
                continue
            with torch.device("meta"):
                layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None,
                                   compute_dtype=compute)
            layer.weight = GGUFParameter(weight.as_tensor().to(child.weight.device), quant_type=weight.quant_type)
            layer.bias = child.bias
            layer.source_cls = torch.nn.Linear
            layer.requires_grad_(False)
            parent._modules[name] = layer
            swapped += 1
    if not swapped:
        return "GGUF dequantized at load: no quantized Linear weights"
    model.patches["gguf_quantized"] = swapped
    return f"GGUF kept quantized in memory: {swapped} layers"


def is_quantized(model: Any) -> bool:
    """Whether `keep_quantized` swapped layers in (fp8 storage and weight patches must leave them alone)."""
    return bool(getattr(model, "patches", {}).get("gguf_quantized"))
