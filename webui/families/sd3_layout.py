"""Stability's SD3 / SD 3.5 single-file layout (`joint_blocks.*`, fused qkv) from diffusers' SD3Transformer2DModel.

Reading Stability's files uses diffusers' own `convert_sd3_transformer_checkpoint_to_diffusers`
(webui/families/sd3.py). diffusers has no function for the other direction, which the tests need
to *write* files in Stability's layout (and `Family.join_single_file` needs for saving): this is
that inverse, derived from the config; tests/test_sd3.py checks that diffusers' function maps its
output back to the very same tensors.
"""
from __future__ import annotations

from typing import Any

import torch

# (Stability name, diffusers names, op): "copy", "cat" (fused qkv), "swap" (shift/scale halves exchanged)
Rule = tuple[str, tuple[str, ...], str]


def _pair(ours: str, theirs: str, op: str = "copy") -> list[Rule]:
    return [(f"{ours}.{s}", (f"{theirs}.{s}",), op) for s in ("weight", "bias")]


def rules(config: dict[str, Any]) -> list[Rule]:
    layers = int(config.get("num_layers", 24))
    dual = set(config.get("dual_attention_layers") or ())
    qk_norm = bool(config.get("qk_norm"))
    out: list[Rule] = [("pos_embed", ("pos_embed.pos_embed",), "copy")]
    out += _pair("x_embedder.proj", "pos_embed.proj")
    out += _pair("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    out += _pair("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    out += _pair("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    out += _pair("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    out += _pair("context_embedder", "context_embedder")
    for i in range(layers):
        x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
        last = i == layers - 1
        for s in ("weight", "bias"):
            out.append((f"{x}.attn.qkv.{s}", tuple(f"{d}.attn.to_{q}.{s}" for q in "qkv"), "cat"))
            out.append((f"{c}.attn.qkv.{s}", tuple(f"{d}.attn.add_{q}_proj.{s}" for q in "qkv"), "cat"))
        if qk_norm:
            out += [(f"{x}.attn.ln_q.weight", (f"{d}.attn.norm_q.weight",), "copy"),
                    (f"{x}.attn.ln_k.weight", (f"{d}.attn.norm_k.weight",), "copy"),
                    (f"{c}.attn.ln_q.weight", (f"{d}.attn.norm_added_q.weight",), "copy"),
                    (f"{c}.attn.ln_k.weight", (f"{d}.attn.norm_added_k.weight",), "copy")]
        out += _pair(f"{x}.attn.proj", f"{d}.attn.to_out.0")
        if not last:
            out += _pair(f"{c}.attn.proj", f"{d}.attn.to_add_out")
        if i in dual:
            for s in ("weight", "bias"):
                out.append((f"{x}.attn2.qkv.{s}", tuple(f"{d}.attn2.to_{q}.{s}" for q in "qkv"), "cat"))
            if qk_norm:
                out += [(f"{x}.attn2.ln_q.weight", (f"{d}.attn2.norm_q.weight",), "copy"),
                        (f"{x}.attn2.ln_k.weight", (f"{d}.attn2.norm_k.weight",), "copy")]
            out += _pair(f"{x}.attn2.proj", f"{d}.attn2.to_out.0")
        out += _pair(f"{x}.adaLN_modulation.1", f"{d}.norm1.linear")
        out += _pair(f"{c}.adaLN_modulation.1", f"{d}.norm1_context.linear", "swap" if last else "copy")
        out += _pair(f"{x}.mlp.fc1", f"{d}.ff.net.0.proj") + _pair(f"{x}.mlp.fc2", f"{d}.ff.net.2")
        if not last:
            out += _pair(f"{c}.mlp.fc1", f"{d}.ff_context.net.0.proj") + _pair(f"{c}.mlp.fc2", f"{d}.ff_context.net.2")
    out += _pair("final_layer.linear", "proj_out")
    out += _pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    return out


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def from_diffusers(state: dict[str, torch.Tensor], config: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Stability's layout (as sd3.5_large.safetensors has it, under `prefix`) from a diffusers state dict."""
    out: dict[str, torch.Tensor] = {}
    for name, ours, op in rules(config):
        if not all(key in state for key in ours):
            continue
        parts = [state[key] for key in ours]
        out[prefix + name] = _swap(parts[0]) if op == "swap" else torch.cat(parts, dim=0) if op == "cat" else parts[0]
    return out
