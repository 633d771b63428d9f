"""BFL's original Flux transformer layout (`double_blocks.*`, fused qkv) <-> diffusers' FluxTransformer2DModel.

Why our own table rather than diffusers' `convert_flux_transformer_checkpoint_to_diffusers`: that
function fixes the width at the published 3072 (so tiny test models cannot go through it) and
only goes one way, while the tests must also *write* files in BFL's layout. This table is derived
from the config, runs both ways, and tests/test_flux_files.py checks that on the real
architecture (meta tensors) it yields exactly the keys and shapes diffusers' function yields.
"""
from __future__ import annotations

from typing import Any

import torch

# (BFL name, diffusers names, how the tensor is split): "copy", "chunk" (equal parts), "split" (q, k, v, mlp),
# "swap" (BFL stores shift, scale; diffusers scale, shift)
Rule = tuple[str, tuple[str, ...], str]


def _pair(bfl: str, ours: str, op: str = "copy", suffixes: tuple[str, ...] = ("weight", "bias")) -> list[Rule]:
    return [(f"{bfl}.{s}", (f"{ours}.{s}",), op) for s in suffixes]


def rules(config: dict[str, Any]) -> list[Rule]:
    out: list[Rule] = []
    out += _pair("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    out += _pair("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    out += _pair("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    out += _pair("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if config.get("guidance_embeds"):
        out += _pair("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        out += _pair("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    out += _pair("txt_in", "context_embedder") + _pair("img_in", "x_embedder")
    for i in range(int(config.get("num_layers", 19))):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        out += _pair(f"{b}.img_mod.lin", f"{d}.norm1.linear") + _pair(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        for s in ("weight", "bias"):
            out.append((f"{b}.img_attn.qkv.{s}", tuple(f"{d}.attn.to_{x}.{s}" for x in "qkv"), "chunk"))
            out.append((f"{b}.txt_attn.qkv.{s}", tuple(f"{d}.attn.add_{x}_proj.{s}" for x in "qkv"), "chunk"))
        for stream, name in (("img", ""), ("txt", "added_")):
            out.append((f"{b}.{stream}_attn.norm.query_norm.scale", (f"{d}.attn.norm_{name}q.weight",), "copy"))
            out.append((f"{b}.{stream}_attn.norm.key_norm.scale", (f"{d}.attn.norm_{name}k.weight",), "copy"))
        out += _pair(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj") + _pair(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        out += _pair(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj") + _pair(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
        out += _pair(f"{b}.img_attn.proj", f"{d}.attn.to_out.0") + _pair(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
    for i in range(int(config.get("num_single_layers", 38))):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        out += _pair(f"{b}.modulation.lin", f"{d}.norm.linear")
        for s in ("weight", "bias"):
            out.append((f"{b}.linear1.{s}", tuple(f"{d}.{x}.{s}" for x in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                             "proj_mlp")), "split"))
        out.append((f"{b}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",), "copy"))
        out.append((f"{b}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",), "copy"))
        out += _pair(f"{b}.linear2", f"{d}.proj_out")
    out += _pair("final_layer.linear", "proj_out")
    out += _pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return out


def _inner(config: dict[str, Any]) -> int:
    return int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(tensors: dict[str, torch.Tensor], config: dict[str, Any],
                 prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(diffusers state dict, tensors the table does not use) from BFL-named tensors under `prefix`."""
    inner, remaining = _inner(config), dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for bfl, ours, op in rules(config):
        tensor = remaining.pop(prefix + bfl, None)
        if tensor is None:
            continue
        if op == "chunk":
            parts = tensor.chunk(3, dim=0)
        elif op == "split":
            parts = tensor.split((inner, inner, inner, tensor.shape[0] - 3 * inner), dim=0)
        elif op == "swap":
            parts = (_swap(tensor),)
        else:
            parts = (tensor,)
        out.update({name: part.contiguous() for name, part in zip(ours, parts)})
    return out, remaining


def from_diffusers(state: dict[str, torch.Tensor], config: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """BFL's layout (as flux1-dev.safetensors has it) from a diffusers FluxTransformer2DModel state dict."""
    out: dict[str, torch.Tensor] = {}
    for bfl, ours, op in rules(config):
        if not all(name in state for name in ours):
            continue
        parts = [state[name] for name in ours]
        out[prefix + bfl] = _swap(parts[0]) if op == "swap" else torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    return out
