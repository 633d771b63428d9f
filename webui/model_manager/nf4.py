"""NF4 weight storage: the denoiser's Linear layers kept as bitsandbytes 4-bit NormalFloat.

Forge's "NF4" choice: each Linear weight becomes bitsandbytes' `Params4bit` (4 bits per weight
in blocks of 64 with one scale each, the scales themselves quantized), and `Linear4bit`
dequantizes a layer's weight only while it runs, computing in the model's dtype. Convolutions,
norms and embeddings stay as they are (bitsandbytes has no 4-bit convolution), so a UNet
shrinks less than a transformer, whose weights are almost all Linear.

Why our own walk and not diffusers' `BitsAndBytesConfig`: diffusers quantizes inside
`from_pretrained` (its quantizer swaps empty `Linear4bit` layers in before the weights load and
fills them from the checkpoint's state dict) and refuses to run without CUDA/XPU/MPS
(`validate_environment`). Easel builds its models from single files with its own loader
(`loader.build_module`), so the model already holds its weights when storage is chosen; the
swap here is the same one diffusers makes (`replace_with_bnb_linear`), with the weights we have.
bitsandbytes 0.50 quantizes and runs 4-bit layers on the CPU too, which is what the tests use;
on CUDA the same code quantizes on the GPU (unmeasured here).

bitsandbytes is optional at import: choosing nf4 without it raises `NF4Unavailable`, which names
the package and the setting.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .loader import LoadedModel

NF4 = "nf4"
PACKAGE = "bitsandbytes"


class NF4Unavailable(RuntimeError):
    """nf4 was chosen but bitsandbytes is missing (a condition of the server, not of the request)."""

    user_facing = True


def available() -> bool:
    """Whether bitsandbytes can be imported (without importing it: that takes seconds)."""
    return importlib.util.find_spec(PACKAGE) is not None


def unavailable_message(where: str = "the setting weight_storage (Settings → Stable Diffusion)",
                        others: str = "Automatic or fp8_e4m3fn") -> str:
    return (f"NF4 weight storage needs the {PACKAGE} package, which is not installed: pip install "
            f"{PACKAGE}, or choose another value for {where} ({others}).")


def _bnb():
    try:
        import bitsandbytes
    except ImportError as exc:
        raise NF4Unavailable(unavailable_message()) from exc
    return bitsandbytes


def quantize_linears(module: torch.nn.Module, compute_dtype: torch.dtype, device: torch.device,
                     keep: tuple[str, ...] = ()) -> int:
    """Replace every `nn.Linear` under `module` (except names in `keep`) by an NF4 `Linear4bit` on
    `device`; returns how many. The old weight is dropped layer by layer, so the peak is one layer."""
    bnb = _bnb()
    count = 0
    for name, child in list(module.named_modules()):
        for attr, layer in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if type(layer) is not torch.nn.Linear or any(full == k or full.startswith(k + ".") for k in keep):
                continue
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                    compute_dtype=compute_dtype, quant_type=NF4, device="meta")
            new.weight = bnb.nn.Params4bit(layer.weight.detach(), requires_grad=False, quant_type=NF4,
                                           compress_statistics=True)
            if layer.bias is not None:
                new.bias = torch.nn.Parameter(layer.bias.detach().to(compute_dtype), requires_grad=False)
            setattr(child, attr, new.to(device))  # Params4bit quantizes on its first move to a real device
            count += 1
    return count


def holds_nf4(module: torch.nn.Module) -> bool:
    """Whether any weight under `module` is a bitsandbytes 4-bit parameter."""
    return any(type(p).__name__ == "Params4bit" for p in module.parameters())


def drop_quantized(module: torch.nn.Module) -> None:
    """Free the 4-bit weights (an evicted checkpoint): `Module.to("meta")` cannot convert a `Params4bit`
    (its detach gives a plain tensor, which torch refuses as the new parameter), so they go first."""
    for layer in module.modules():
        if type(getattr(layer, "weight", None)).__name__ == "Params4bit":
            layer.weight = torch.nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)


def nf4_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's weights take, with the 4-bit layers' quantization state (absmax and its own
    state), which bitsandbytes keeps outside parameters and buffers."""
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            total += sum(x.numel() * x.element_size() for x in _state_tensors(state))
    return total


def _state_tensors(state: Any) -> list[torch.Tensor]:
    found = [getattr(state, name, None) for name in ("absmax", "code")]
    nested = getattr(state, "state2", None)
    if nested is not None:
        found += _state_tensors(nested)
    return [t for t in found if isinstance(t, torch.Tensor)]


def apply_nf4(model: "LoadedModel") -> None:
    """Store the denoiser's Linear weights in NF4 (the setting weight_storage = nf4, or --weights nf4)."""
    from .gguf_quantized import is_quantized

    if is_quantized(model):  # GGUF blocks are quantized already; requantizing them would only lose more
        model.notes.append("weight storage nf4 not applied: the GGUF weights stay quantized")
        return
    denoiser = model.unet
    where = next(denoiser.parameters()).device
    keep = tuple(getattr(denoiser, "_keep_in_fp32_modules", None) or ())
    count = quantize_linears(denoiser, model.device.dtype, where, keep)
    model.weight_storage = NF4
    model.notes.append(f"denoiser weights stored as nf4 ({count} Linear layers, bitsandbytes)")


def lora_refusal(weight_storage: str) -> str:
    """Why a LoRA cannot patch the denoiser of an NF4 model, and what to change."""
    return (f"LoRAs cannot be applied to NF4 weights (weight storage {weight_storage}): set weight_storage "
            "(Settings → Stable Diffusion, or --weights) to Automatic or fp8_e4m3fn to use LoRAs on the denoiser")
