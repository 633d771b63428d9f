"""Tiny random-weight upscaler files in published key layouts, for the tests and the benchmark.

The keys are written by hand from the layouts model sites publish, not taken from
spandrel's modules, so a test that loads them checks that spandrel (and our loading)
really recognise files laid out like real ones:

- ESRGAN "old arch" (4x-UltraSharp, ESRGAN_4x ...): model.0 conv, model.1.sub.N.RDBk.convj.0
  residual-in-residual dense blocks (growth 32 channels), model.1.sub.<nb> trunk conv,
  then one conv per 2x upsampling at model.3, model.6, ..., an HR conv and the last conv;
- Real-ESRGAN Compact (SRVGGNetCompact, realesr-general-x4v3): body.0 conv, PReLU weights
  at the odd indices, convs at the even ones, and a last conv with 3*scale^2 outputs
  feeding a pixel shuffle.

The weights are scaled so outputs stay inside [0, 1] for typical images (a file whose
output clips everywhere would make tiling tests pass trivially).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

ESRGAN_GROWTH = 32


def _conv(gen: torch.Generator, out_ch: int, in_ch: int, gain: float = 1.0) -> torch.Tensor:
    std = gain * math.sqrt(2.0 / (in_ch * 9))
    return torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std


def esrgan_state_dict(scale: int = 4, features: int = 8, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """An old-layout ESRGAN (RRDBNet) with `blocks` RRDBs of `features` channels."""
    if scale not in (1, 2, 4, 8):
        raise ValueError("ESRGAN scale must be 1, 2, 4 or 8")
    gen = torch.Generator().manual_seed(seed)
    nf, gc = features, ESRGAN_GROWTH
    sd: dict[str, torch.Tensor] = {"model.0.weight": _conv(gen, nf, 3), "model.0.bias": torch.zeros(nf)}
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                in_ch = nf + (c - 1) * gc
                out_ch = gc if c < 5 else nf
                prefix = f"model.1.sub.{b}.RDB{r}.conv{c}.0"
                sd[f"{prefix}.weight"] = _conv(gen, out_ch, in_ch, gain=0.5 if c == 5 else 1.0)
                sd[f"{prefix}.bias"] = torch.zeros(out_ch)
    sd[f"model.1.sub.{blocks}.weight"] = _conv(gen, nf, nf, gain=0.5)
    sd[f"model.1.sub.{blocks}.bias"] = torch.zeros(nf)
    index = 3
    for _ in range(int(math.log2(scale))):
        sd[f"model.{index}.weight"] = _conv(gen, nf, nf, gain=0.7)
        sd[f"model.{index}.bias"] = torch.zeros(nf)
        index += 3
    hr = index - 1
    sd[f"model.{hr}.weight"] = _conv(gen, nf, nf, gain=0.7)
    sd[f"model.{hr}.bias"] = torch.zeros(nf)
    sd[f"model.{hr + 2}.weight"] = _conv(gen, 3, nf, gain=0.6)
    sd[f"model.{hr + 2}.bias"] = torch.full((3,), 0.5)
    return sd


def compact_state_dict(scale: int = 4, features: int = 8, convs: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN Compact (SRVGGNetCompact) network with `convs` body convolutions."""
    gen = torch.Generator().manual_seed(seed)
    nf = features
    sd: dict[str, torch.Tensor] = {"body.0.weight": _conv(gen, nf, 3), "body.0.bias": torch.zeros(nf),
                                   "body.1.weight": torch.full((nf,), 0.25)}
    for k in range(1, convs + 1):
        sd[f"body.{2 * k}.weight"] = _conv(gen, nf, nf, gain=0.7)
        sd[f"body.{2 * k}.bias"] = torch.zeros(nf)
        sd[f"body.{2 * k + 1}.weight"] = torch.full((nf,), 0.25)
    last = 2 * convs + 2
    sd[f"body.{last}.weight"] = _conv(gen, 3 * scale * scale, nf, gain=0.3)
    sd[f"body.{last}.bias"] = torch.zeros(3 * scale * scale)
    return sd


def write_tiny_esrgan(path: Path, scale: int = 4, features: int = 8, blocks: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in esrgan_state_dict(scale, features, blocks, seed).items()}, str(path))
    return path


def write_tiny_compact(path: Path, scale: int = 4, features: int = 8, convs: int = 2, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in compact_state_dict(scale, features, convs, seed).items()}, str(path))
    return path
