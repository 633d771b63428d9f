"""Tiny adapter files in published key layouts, and an independent reading of them, for the tests.

`write_ip_adapter_plus` writes the layout of `ip-adapter-plus_sd15` / `ip-adapter-plus_sdxl_vit-h`:
a Resampler image projection (Perceiver cross-attention of 16 learned queries over the vision
encoder's hidden states) under `image_proj.*`:

    latents (1, queries, hidden)                  proj_in (hidden <- encoder width), with bias
    layers.N.0.norm1 / norm2 (LayerNorms)          layers.N.0.to_q (inner <- hidden), no bias
    layers.N.0.to_kv (2 * inner <- hidden)         layers.N.0.to_out (hidden <- inner), no bias
    layers.N.1.0 (LayerNorm)  .1.1 (4*hidden <- hidden)  .1.3 (hidden <- 4*hidden): the feed-forward
    proj_out (cross-attention width <- hidden), norm_out (LayerNorm)

with 64-wide heads (inner = heads * 64) and 4 layers as published, plus the usual
`ip_adapter.N.to_k_ip / to_v_ip` for every cross-attention layer. `resampler_reference` computes
what that projection outputs straight from the file's tensors, so a test can check that the
loader put every tensor where the published model uses it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DIM_HEAD = 64  # the published Resampler's head width (diffusers reads heads = to_q rows // 64)


def write_ip_adapter_plus(path: Path, unet, embedding_width: int, seed: int = 0, queries: int = 16, depth: int = 4,
                          heads: int = 1, hidden: int | None = None) -> Path:
    """A random IP-Adapter Plus for `unet`; `embedding_width` is the vision encoder's hidden size."""
    from webui.features.ip_adapter import write_test_adapter

    # the per-layer ip_adapter.N.* tensors with the published numbering come from the plain writer
    plain = write_test_adapter(path.with_name(path.stem + ".plain.tmp.safetensors"), unet, embedding_width, seed)
    tensors = {k: v for k, v in load_file(str(plain)).items() if k.startswith("ip_adapter.")}
    plain.unlink()
    cross = unet.config.cross_attention_dim
    hidden = hidden or cross  # SD 1.5 plus: 768 = its cross-attention width; SDXL plus: 1280 -> 2048
    inner = heads * DIM_HEAD
    generator = torch.Generator().manual_seed(seed + 1000)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale / math.sqrt(shape[-1])

    def norm(prefix: str, width: int) -> None:
        tensors[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
        tensors[f"{prefix}.bias"] = 0.1 * torch.randn(width, generator=generator)

    proj = "image_proj"
    tensors[f"{proj}.latents"] = torch.randn(1, queries, hidden, generator=generator) / math.sqrt(hidden)
    tensors[f"{proj}.proj_in.weight"] = rand(hidden, embedding_width)
    tensors[f"{proj}.proj_in.bias"] = 0.1 * torch.randn(hidden, generator=generator)
    for n in range(depth):
        layer = f"{proj}.layers.{n}"
        norm(f"{layer}.0.norm1", hidden)
        norm(f"{layer}.0.norm2", hidden)
        tensors[f"{layer}.0.to_q.weight"] = rand(inner, hidden, scale=2.0)
        tensors[f"{layer}.0.to_kv.weight"] = rand(2 * inner, hidden, scale=2.0)
        tensors[f"{layer}.0.to_out.weight"] = rand(hidden, inner)
        norm(f"{layer}.1.0", hidden)
        tensors[f"{layer}.1.1.weight"] = rand(4 * hidden, hidden)
        tensors[f"{layer}.1.3.weight"] = rand(hidden, 4 * hidden)
    tensors[f"{proj}.proj_out.weight"] = rand(cross, hidden)
    tensors[f"{proj}.proj_out.bias"] = 0.1 * torch.randn(cross, generator=generator)
    norm(f"{proj}.norm_out", cross)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _layer_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def resampler_reference(state: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """The Resampler's output for encoder hidden states (batch, tokens, width), from `image_proj.*` tensors.

    Written from the published model's structure in float64: the learned queries attend to the
    concatenation of the (normalised) image features and themselves, then a GELU feed-forward,
    both with residuals; then project to the cross-attention width and normalise.
    """
    s = {k.removeprefix("image_proj."): v.double() for k, v in state.items() if k.startswith("image_proj.")}
    x = features.double() @ s["proj_in.weight"].T + s["proj_in.bias"]
    latents = s["latents"].expand(x.shape[0], -1, -1)
    depth = len({k.split(".")[1] for k in s if k.startswith("layers.")})
    for n in range(depth):
        p = f"layers.{n}"
        image, queries = _layer_norm(x, s, f"{p}.0.norm1"), _layer_norm(latents, s, f"{p}.0.norm2")
        q = queries @ s[f"{p}.0.to_q.weight"].T
        k, v = (torch.cat([image, queries], dim=1) @ s[f"{p}.0.to_kv.weight"].T).chunk(2, dim=-1)
        heads = q.shape[-1] // DIM_HEAD
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, DIM_HEAD).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(DIM_HEAD), dim=-1)
        attended = (weights @ split(v)).transpose(1, 2).reshape(q.shape)
        latents = attended @ s[f"{p}.0.to_out.weight"].T + latents
        hidden = _layer_norm(latents, s, f"{p}.1.0") @ s[f"{p}.1.1.weight"].T
        latents = torch.nn.functional.gelu(hidden) @ s[f"{p}.1.3.weight"].T + latents
    return _layer_norm(latents @ s["proj_out.weight"].T + s["proj_out.bias"], s, "norm_out")
