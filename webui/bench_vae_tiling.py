"""VAE tiling quality and cost: diffusers' tiling and Easel's shared-statistics tiler against untiled.

    python -m webui.bench_vae_tiling [--size 1024] [--tile 512] [--overlap 0.25] [--narrow 4]
                                     [--family sd1|flux-dev] [--conv-out-scale 0.1] [--only decode]

The VAE is the family's full architecture (Easel's offline config) with random weights from a
fixed seed (`--narrow` divides its channels: same tiles, GroupNorm groups and attention, minutes
instead of an hour on a CPU): the numbers say how well tiles join, not how good a picture is. The
latents are the untiled encoding of a synthetic picture (gradients, rings, a checkered square).
A random VAE's decode is mostly saturated noise; `--conv-out-scale` shrinks the decoder's last
conv so the pixels sit inside [-1, 1] (the row says how many are clipped).

Decode: tiled vs untiled pixels from the same latents. Encode: the untiled decode of tiled
latents vs of untiled latents. Every row runs alone in a child process, which reports its
seconds and its peak RSS above what it held before the row started (VmHWM minus VmRSS): on a
CPU the tiler keeps whole activations in system memory, so this is the CPU figure; `largest
window` is the biggest tensor a layer received, which bounds device memory on a GPU, where the
tiler keeps the whole activations in system memory instead.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = Path(__file__).parent / "model_manager" / "configs"
WAYS = ("untiled", "diffusers", "shared")


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


def vae_model(seed: int = 0, narrow: int = 1, family: str = "sd1", conv_out_scale: float = 1.0):
    """The family's VAE with random weights; `narrow` divides every block's channels."""
    from diffusers import AutoencoderKL

    config = json.loads((CONFIGS / family / "vae.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["block_out_channels"] = [c // narrow for c in config["block_out_channels"]]
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(conv_out_scale)
        vae.decoder.conv_out.bias.mul_(conv_out_scale)
    return vae


def _rss_mib(field: str) -> float:
    from .bench_memory import status_mib

    value = status_mib(field)
    return float("nan") if value is None else value


@torch.no_grad()
def run_row(args: argparse.Namespace) -> dict:
    """In a child: one decode or encode, one way; input and output through files."""
    from .core import vae_tiling

    vae = vae_model(narrow=args.narrow, family=args.family, conv_out_scale=args.conv_out_scale)
    source = torch.load(args.input)
    largest = [0]

    def note(_module, inputs):
        largest[0] = max(largest[0], inputs[0].numel() * inputs[0].element_size())

    hooks = [m.register_forward_pre_hook(note) for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    if args.way == "diffusers":
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = args.tile, args.tile // 8
        vae.tile_overlap_factor = args.overlap
    before = _rss_mib("VmRSS")
    started = time.perf_counter()
    if args.op == "decode":
        out = vae_tiling.decode(vae, source, args.tile) if args.way == "shared" else vae.decode(source).sample
    elif args.way == "shared":
        out = vae_tiling.encode(vae, source, args.tile)[:, :vae.config.latent_channels]
    else:
        out = vae.encode(source).latent_dist.mode()
    seconds = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    torch.save(out, args.output)
    return {"seconds": seconds, "peak_mib": _rss_mib("VmHWM") - before, "largest_mib": largest[0] / 2 ** 20}


def _child(args: argparse.Namespace, op: str, way: str, source: torch.Tensor, folder: Path) -> tuple[torch.Tensor, dict]:
    inp, out = folder / f"{op}-{way}-in.pt", folder / f"{op}-{way}-out.pt"
    torch.save(source, inp)
    command = [sys.executable, "-m", "webui.bench_vae_tiling", "--row", op, way, str(inp), str(out),
               "--narrow", str(args.narrow), "--family", args.family, "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--conv-out-scale", str(args.conv_out_scale)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return torch.load(out), json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> list[tuple[str, float, dict]]:
    """Rows of (name, PSNR against untiled, the child's figures)."""
    vae = vae_model(narrow=args.narrow, family=args.family, conv_out_scale=args.conv_out_scale)
    image = synthetic(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        latents, figures = _child(args, "encode", "untiled", image, folder)
        rows.append(("encode untiled", float("inf"), figures))
        reference, figures = _child(args, "decode", "untiled", latents, folder)
        clipped = float((reference.abs() >= 1).float().mean())
        rows.append((f"decode untiled ({clipped:.0%} of pixels clipped)", float("inf"), figures))
        for way in WAYS[1:]:
            decoded, figures = _child(args, "decode", way, latents, folder)
            rows.append((f"decode {way}", psnr(decoded, reference), figures))
        for way in WAYS[1:] if args.only != "decode" else ():
            encoded, figures = _child(args, "encode", way, image, folder)
            with torch.no_grad():
                rows.append((f"encode {way}", psnr(vae.decode(encoded).sample, reference), figures))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=512, help="tile side in image pixels (both tilers)")
    parser.add_argument("--overlap", type=float, default=0.25, help="diffusers' tile_overlap_factor")
    parser.add_argument("--narrow", type=int, default=1, help="divide the VAE's channels by this (1: full VAE)")
    parser.add_argument("--family", default="sd1", help="a folder of webui/model_manager/configs (sd1, flux-dev...)")
    parser.add_argument("--conv-out-scale", type=float, default=1.0, help="scale the decoder's last conv (0.1: "
                        "pixels inside [-1, 1] rather than saturated noise)")
    parser.add_argument("--only", choices=("decode",), help="skip the tiled encode rows (a full-width VAE on a CPU)")
    parser.add_argument("--row", nargs=4, metavar=("OP", "WAY", "IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        args.op, args.way, args.input, args.output = args.row
        print(json.dumps(run_row(args)))
        return
    width = "full width" if args.narrow == 1 else f"channels / {args.narrow}"
    print(f"{args.family} VAE ({width}, random weights, seed 0, conv_out x{args.conv_out_scale}), "
          f"{args.size}x{args.size}, tile {args.tile} px, diffusers overlap {args.overlap}, "
          f"{torch.get_num_threads()} threads")
    rows = measure(args)
    base = {op: next(f for name, _, f in rows if name.startswith(f"{op} untiled")) for op in ("decode", "encode")}
    for name, value, f in rows:
        b = base[name.split()[0]]
        print(f"{name:38s} PSNR {value:6.2f} dB  {f['seconds']:6.1f} s ({f['seconds'] / b['seconds']:4.2f}x)  "
              f"peak +{f['peak_mib']:7.0f} MiB ({f['peak_mib'] / b['peak_mib']:4.2f}x)  "
              f"largest window {f['largest_mib']:6.1f} MiB ({f['largest_mib'] / b['largest_mib']:4.2f}x)", flush=True)


if __name__ == "__main__":
    main()
