"""VAE tiling quality: diffusers' tiled decode and encode against the untiled ones, as PSNR.

    python -m webui.bench_vae_tiling [--size 1024] [--overlap 0.25 0.5] [--tile 512 768] [--narrow 4]

The VAE is SD 1.x's full architecture (Easel's offline config) with random weights from a
fixed seed: the numbers say how well the tiles blend, not how good a picture is. The latents
are the encoding of a synthetic picture (gradients and shapes), so the decode sees something
with structure rather than white noise. Decode: tiled vs untiled picture from the same latents.
Encode: the untiled decode of tiled latents vs of untiled latents. Each row prints its seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

CONFIG = Path(__file__).parent / "model_manager" / "configs" / "sd1" / "vae.json"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """On [-1, 1] pixels mapped to 0..255, as the saved images would be."""
    a8, b8 = (((t.clamp(-1, 1) + 1) * 127.5).round() for t in (a, b))
    mse = float(torch.mean((a8 - b8) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def synthetic(size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: smooth gradients, rings and a checkered square."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sqrt(x ** 2 + y ** 2)
    red, green = x, torch.sin(8 * r)
    blue = torch.where((x.abs() < 0.4) & (y.abs() < 0.4), torch.sign(torch.sin(20 * x) * torch.sin(20 * y)), y)
    return torch.stack([red, green, blue])[None].clamp(-1, 1)


def vae_model(seed: int = 0, narrow: int = 1):
    """SD 1.x's VAE with random weights; `narrow` divides every block's channels (same tiles, same GroupNorm
    groups, same mid-block attention: a CPU can measure 1024x1024 in minutes instead of an hour)."""
    from diffusers import AutoencoderKL

    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    config["block_out_channels"] = [c // narrow for c in config["block_out_channels"]]
    torch.manual_seed(seed)
    return AutoencoderKL(**config).eval()


@torch.no_grad()
def measure(size: int, tiles: list[int], overlaps: list[float], narrow: int = 1) -> list[tuple[str, float, float]]:
    vae = vae_model(narrow=narrow)
    image = synthetic(size)
    started = time.perf_counter()
    latents = vae.encode(image).latent_dist.mode()
    reference = vae.decode(latents).sample
    rows = [("untiled encode + decode", float("inf"), time.perf_counter() - started)]
    vae.use_tiling = True
    for tile in tiles:
        for overlap in overlaps:
            vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // 8
            vae.tile_overlap_factor = overlap
            started = time.perf_counter()
            decoded = vae.decode(latents).sample
            rows.append((f"tiled decode, tile {tile} px, overlap {overlap}", psnr(decoded, reference),
                         time.perf_counter() - started))
            started = time.perf_counter()
            encoded = vae.encode(image).latent_dist.mode()
            seconds = time.perf_counter() - started
            vae.use_tiling = False
            rows.append((f"tiled encode, tile {tile} px, overlap {overlap}",
                         psnr(vae.decode(encoded).sample, reference), seconds))
            vae.use_tiling = True
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, nargs="+", default=[512])
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.25])
    parser.add_argument("--narrow", type=int, default=1, help="divide the VAE's channels by this (1: full SD VAE)")
    args = parser.parse_args(argv)
    width = "full width" if args.narrow == 1 else f"channels / {args.narrow}"
    print(f"SD 1.x VAE ({width}, random weights, seed 0), {args.size}x{args.size}, {torch.get_num_threads()} threads")
    for name, value, seconds in measure(args.size, args.tile, args.overlap, args.narrow):
        print(f"{name:45s} PSNR {value:6.2f} dB  {seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
