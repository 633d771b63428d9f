"""Fused QKV projections for fast mode, kept true to the weights LoRAs patch.

Fusing goes through diffusers' own `fuse_qkv_projections()` (UNet, SD 3 and Flux have it;
Z-Image's transformer does not, so it runs unfused). SD 3.5 is refused too: the fused processor
SD 3's fuse installs everywhere (`FusedJointAttnProcessor2_0`) skips the q/k RMS norms SD 3.5
has, and fails on SD 3.5 Medium's context-free second attention. diffusers keeps the separate
`to_q`/`to_k`/`to_v` layers next to the fused copy (`to_qkv`, `to_kv` for cross-attention,
`to_added_qkv` for the joint blocks). Easel's LoRA patcher and every other weight patch
address those separate layers, so the fused copy goes stale when they change.

Our choice is "fuse once, re-copy after patching": after each patch (and before each pass,
as a guard) `refresh_fused` copies the separate layers' rows into the fused weights, in place,
only where a source tensor changed since the last copy (tracked by PyTorch's in-place version
counter). Unfusing before each patch and fusing again would allocate new layers and swap
every attention processor per LoRA change; the copy is one `torch.cat` of the few attention
weights and keeps processors that features installed untouched. The cost is memory: the fused
copy duplicates the q/k/v weights while fast mode is on (see docs/architecture.md).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# fused layer -> the separate layers it is built from (diffusers' Attention.fuse_projections)
FUSED_PARTS = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def can_fuse(denoiser: torch.nn.Module) -> str | None:
    """None when diffusers can fuse this denoiser's projections; else why not (for the log)."""
    if not hasattr(denoiser, "fuse_qkv_projections"):
        return f"{type(denoiser).__name__} has no fuse_qkv_projections"
    for name, processor in getattr(denoiser, "attn_processors", {}).items():
        if "Added" in type(processor).__name__:  # diffusers refuses these (added KV projections)
            return f"{name} uses {type(processor).__name__}"
    from diffusers.models.attention_processor import Attention

    for module in denoiser.modules():
        if isinstance(module, Attention) and getattr(module, "norm_q", None) is not None:
            # diffusers' FusedJointAttnProcessor2_0 (what SD 3's fuse installs) skips the q/k norms of SD 3.5
            return "diffusers' fused processor skips its q/k RMS norms"
        weight = getattr(module, "weight", None)
        if weight is not None and (weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
                                   or hasattr(weight, "quant_type")):
            return "weights are stored quantized: fp8, NF4 or GGUF (a fused copy would lose that storage)"
    return None


def fused_layers(denoiser: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(attention module, fused layer name) for every fused projection present."""
    return [(module, fused) for module in denoiser.modules() if getattr(module, "fused_projections", False)
            for fused in FUSED_PARTS if isinstance(getattr(module, fused, None), torch.nn.Linear)]


def fuse(denoiser: torch.nn.Module) -> int:
    """Fuse through diffusers; the number of fused layers (0: nothing to fuse)."""
    denoiser.fuse_qkv_projections()
    layers = fused_layers(denoiser)
    _stamp(denoiser)
    return len(layers)


def unfuse(denoiser: torch.nn.Module) -> None:
    """diffusers' unfuse, then drop the fused copies (the UNet's unfuse keeps them and their memory)."""
    if "_easel_fused_versions" not in denoiser.__dict__:  # never fused (diffusers' unfuse would fail)
        return
    denoiser.unfuse_qkv_projections()
    for module, fused in fused_layers(denoiser):
        delattr(module, fused)
    for module in denoiser.modules():
        if getattr(module, "fused_projections", False):
            module.fused_projections = False
    denoiser.__dict__.pop("_easel_fused_versions", None)


def _sources(module: torch.nn.Module, fused: str) -> list[torch.nn.Linear]:
    return [getattr(module, part) for part in FUSED_PARTS[fused]]


def _versions(layers: list[tuple[torch.nn.Module, str]]) -> dict[int, tuple]:
    """id(fused layer) -> the identities and in-place versions of its sources' tensors."""
    stamps: dict[int, tuple] = {}
    for module, fused in layers:
        tensors = [t for source in _sources(module, fused) for t in (source.weight, source.bias) if t is not None]
        stamps[id(getattr(module, fused))] = tuple((id(t), t._version) for t in tensors)
    return stamps


def _stamp(denoiser: torch.nn.Module, layers: list[tuple[torch.nn.Module, str]] | None = None) -> None:
    """Remember the fused layers (walking every module per pass cost 15 ms on the tiny UNet) and their
    sources' versions."""
    layers = fused_layers(denoiser) if layers is None else layers
    denoiser.__dict__["_easel_fused_versions"] = (layers, _versions(layers))


@torch.no_grad()
def refresh_fused(denoiser: torch.nn.Module) -> int:
    """Copy the separate q/k/v layers into their fused copies where they changed; how many were copied."""
    state = denoiser.__dict__.get("_easel_fused_versions")
    if state is None:  # never fused
        return 0
    layers, seen = state
    now = _versions(layers)
    copied = 0
    for module, fused in layers:
        layer = getattr(module, fused)
        if seen.get(id(layer)) == now[id(layer)]:
            continue
        sources = _sources(module, fused)
        layer.weight.copy_(torch.cat([s.weight.to(layer.weight.device) for s in sources]))
        if layer.bias is not None:
            layer.bias.copy_(torch.cat([s.bias.to(layer.bias.device) for s in sources]))
        copied += 1
    if copied:
        log.debug("fused QKV: %d fused projections copied again after a weight patch", copied)
    _stamp(denoiser, layers)
    return copied
