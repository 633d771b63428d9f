"""Tiled VAE encode and decode whose GroupNorms see the whole image: Easel's own tiler.

Why not diffusers' `enable_tiling`: it runs the whole encoder or decoder on each tile alone and
blends the overlaps, so every GroupNorm normalises each tile with that tile's own mean and
variance. Tiles of one picture then come out with different brightness and contrast, which the
blending only smears: on a random-weight SD VAE at 1024 px it stays near 19 dB PSNR against the
untiled decode whatever the tile size or overlap (`python -m webui.bench_vae_tiling`).

How this one works (the idea of the Tiled VAE extension, written anew): the network runs one
layer at a time over the whole image, and each layer runs tile by tile.

- A convolution reads its tile plus a halo of one pixel (what a 3x3 kernel sees) from the full
  activation of the layer before, and keeps only the tile's own pixels. Every output pixel
  therefore sees exactly the inputs it sees untiled, so no blending is needed: tiles meet
  without seams. (The halo is re-read at every layer rather than padded once per tile for the
  network's whole receptive field, which would be hundreds of pixels.)
- Each GroupNorm's statistics are accumulated while the layer before writes its tiles: per
  sample and group, the sum and the sum of squares in fp32 per tile, added up in fp64 over the
  tiles; then every tile is normalised with the one shared mean and variance, as untiled.
- The mid block's attention is global, so it runs on the whole activation at the lowest
  resolution (1/8 of the side: 128x128 for a 1024 px picture), as untiled: exact, and small.

Tiled and untiled thus differ only by the order of floating-point sums. Memory: the device holds
one tile's input window and output at a time (plus the mid block's small whole latent); the full
activations between layers (two or three at once) wait in system memory when the device is a GPU
(`store`), which is what keeps device memory bounded at any picture size.

Supports diffusers' `AutoencoderKL` with GroupNorm (SD 1.x/2.x, SDXL, SD3 and Flux's 16-channel
VAE): `supported(vae)` says whether a VAE has that shape; callers fall back to diffusers' tiling
otherwise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Stats = tuple[torch.Tensor, torch.Tensor]  # per (sample, group): mean and variance, fp64
MIN_TILE = 8  # the smallest tile side at any layer, in that layer's pixels


class Tiler:
    """One tiled encode or decode: tile side in image pixels, the device computing, the one storing."""

    def __init__(self, tile: int, groups: int, device: torch.device, store: torch.device | None = None):
        self.tile, self.groups, self.device = tile, groups, device
        self.store = store or (torch.device("cpu") if device.type == "cuda" else device)
        self.factor = 1  # image pixels per pixel of the current layer
        self.windows = 0  # how many tile windows ran

    # ---- one layer over the image, tile by tile ----

    def layer(self, run: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], kind: str = "same",
              halo: int = 1) -> tuple[torch.Tensor, Stats | None]:
        """`run(*windows)` over all tiles of the output; kind "same" (stride 1), "up" (nearest x2 then a
        3x3 conv) or "down" (SD's pad-right-and-bottom then stride-2 3x3 conv). Returns the whole output
        (on `store`) and its group statistics."""
        height, width = inputs[0].shape[-2:]
        out_h, out_w = {"same": (height, width), "up": (2 * height, 2 * width),
                        "down": ((height - 2) // 2 + 1, (width - 2) // 2 + 1)}[kind]
        out_factor = {"same": self.factor, "up": self.factor / 2, "down": self.factor * 2}[kind]
        side = max(int(self.tile // out_factor), MIN_TILE)  # `tile` image pixels at the output's resolution
        out, sums = None, None
        for oy0 in range(0, out_h, side):
            oy1 = min(oy0 + side, out_h)
            iy0, iy1, cy = _window(kind, oy0, oy1, height, halo)
            for ox0 in range(0, out_w, side):
                ox1 = min(ox0 + side, out_w)
                ix0, ix1, cx = _window(kind, ox0, ox1, width, halo)
                windows = [x[..., iy0:iy1, ix0:ix1].to(self.device) for x in inputs]
                piece = run(*windows)[..., cy:cy + oy1 - oy0, cx:cx + ox1 - ox0]
                self.windows += 1
                sums = _add_sums(sums, piece, self.groups)
                if out is None:
                    out = torch.empty((*piece.shape[:2], out_h, out_w), dtype=piece.dtype, device=self.store)
                out[..., oy0:oy1, ox0:ox1] = piece.to(self.store)
        return out, _stats(sums)

    def whole(self, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, Stats | None]:
        """`run` on the whole activation at once (the mid block's global attention)."""
        out = run(x.to(self.device))
        return out.to(self.store), _stats(_add_sums(None, out, self.groups))

    # ---- the blocks of AutoencoderKL ----

    def resnet(self, block: torch.nn.Module, x: torch.Tensor, stats: Stats) -> tuple[torch.Tensor, Stats]:
        """ResnetBlock2D without time embedding: norm1, act, conv1, norm2, act, conv2, plus the shortcut."""
        act = block.nonlinearity
        hidden, hidden_stats = self.layer(lambda w: block.conv1(norm(w, block.norm1, stats, act)), [x])

        def second(xw: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
            shortcut = xw if block.conv_shortcut is None else block.conv_shortcut(xw)
            return (shortcut + block.conv2(norm(hw, block.norm2, hidden_stats, act))) / block.output_scale_factor

        return self.layer(second, [x, hidden])

    def mid(self, block: torch.nn.Module, x: torch.Tensor, stats: Stats) -> tuple[torch.Tensor, Stats]:
        x, stats = self.resnet(block.resnets[0], x, stats)
        for attention, resnet in zip(block.attentions, block.resnets[1:]):
            if attention is not None:
                x, stats = self.whole(attention, x)
            x, stats = self.resnet(resnet, x, stats)
        return x, stats


def _window(kind: str, o0: int, o1: int, size: int, halo: int) -> tuple[int, int, int]:
    """Input range [i0, i1) that output range [o0, o1) needs along one side, and where the output starts
    in what the window gives. At the image's edges the window stops and the layer's own zero padding
    applies, as untiled."""
    if kind == "same":
        i0 = max(o0 - halo, 0)
        return i0, min(o1 + halo, size), o0 - i0
    if kind == "up":  # nearest x2 then a 3x3 conv: upsampled pixels o0-1 .. o1 are needed
        i0 = max((o0 - 1) // 2, 0)
        return i0, min((o1 + 2) // 2, size), o0 - 2 * i0
    return 2 * o0, min(2 * o1 + 1, size), 0  # "down": output j reads inputs 2j .. 2j+2


def _add_sums(sums: torch.Tensor | None, piece: torch.Tensor, groups: int) -> torch.Tensor | None:
    """Per (sample, group): [sum, sum of squares, count] of `piece`, from one fused fp32 variance/mean
    per tile, added up over the tiles in fp64."""
    batch, channels = piece.shape[:2]
    if channels % groups:
        return None
    flat = piece.reshape(batch, groups, -1)
    var, mean = torch.var_mean(flat if flat.dtype == torch.float32 else flat.float(), -1, correction=0)
    count = flat.shape[-1]
    var, mean = var.double().cpu(), mean.double().cpu()
    new = torch.stack([mean * count, (var + mean.square()) * count, torch.full_like(mean, count)], -1)
    return new if sums is None else sums + new


def _stats(sums: torch.Tensor | None) -> Stats | None:
    if sums is None:
        return None
    mean = sums[..., 0] / sums[..., 2]
    return mean, (sums[..., 1] / sums[..., 2] - mean.square()).clamp_min(0)


def norm(x: torch.Tensor, group_norm: torch.nn.GroupNorm, stats: Stats | None,
         act: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`group_norm` (then `act`) on a tile with the whole image's statistics; fp32 inside, x's dtype out.
    The weights are read (and moved to x's device) directly, so offloaded modules work too."""
    if stats is None or group_norm.num_groups != stats[0].shape[1]:
        raise ValueError("VAE tiling: a GroupNorm without image statistics (an unsupported VAE layout)")
    groups = group_norm.num_groups
    mean, var = stats
    rstd = torch.rsqrt(var + group_norm.eps).repeat_interleave(x.shape[1] // groups, 1)  # per channel now
    mean = mean.repeat_interleave(x.shape[1] // groups, 1)
    scale = rstd * (group_norm.weight.detach().double().cpu() if group_norm.affine else 1)
    shift = (group_norm.bias.detach().double().cpu() if group_norm.affine else 0) - mean * scale
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    scale, shift = (t.to(x.device, compute)[:, :, None, None] for t in (scale, shift))
    out = torch.addcmul(shift, x.to(compute), scale).to(x.dtype)  # x * scale + shift, one pass
    return act(out) if act is not None else out


def supported(vae: torch.nn.Module) -> bool:
    """Whether `vae` has the AutoencoderKL layout this tiler walks (GroupNorm everywhere, resnets without
    resampling, SD's down/upsamplers)."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    encoder, decoder = getattr(vae, "encoder", None), getattr(vae, "decoder", None)
    if encoder is None or decoder is None or not isinstance(decoder.conv_norm_out, torch.nn.GroupNorm):
        return False
    resnets = [r for block in [*encoder.down_blocks, *decoder.up_blocks, encoder.mid_block, decoder.mid_block]
               for r in block.resnets]
    if not all(isinstance(r, ResnetBlock2D) and r.upsample is None and r.downsample is None
               and r.time_emb_proj is None and isinstance(r.norm1, torch.nn.GroupNorm) for r in resnets):
        return False
    downs = [d for b in encoder.down_blocks for d in (b.downsamplers or [])]
    ups = [u for b in decoder.up_blocks for u in (b.upsamplers or [])]
    return (all(isinstance(d, Downsample2D) and d.use_conv and d.padding == 0 and d.norm is None for d in downs)
            and all(isinstance(u, Upsample2D) and u.use_conv and u.interpolate and not u.use_conv_transpose
                    and u.norm is None for u in ups))


def _groups(vae: torch.nn.Module) -> int:
    return vae.decoder.conv_norm_out.num_groups


@torch.no_grad()
def decode(vae: torch.nn.Module, z: torch.Tensor, tile: int = 512, store: torch.device | None = None) -> torch.Tensor:
    """Pixels (N, 3, 8h, 8w) of unscaled latents `z`, tiles of `tile` image pixels, computed on z's device."""
    decoder = vae.decoder
    tiler = Tiler(tile, _groups(vae), z.device, store)
    tiler.factor = 2 ** sum(1 for b in decoder.up_blocks if b.upsamplers)
    post = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else (lambda t: t)
    x, stats = tiler.layer(lambda w: decoder.conv_in(post(w)), [z.to(tiler.store)])
    x, stats = tiler.mid(decoder.mid_block, x, stats)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            x, stats = tiler.resnet(resnet, x, stats)
        if block.upsamplers:
            x, stats = tiler.layer(block.upsamplers[0], [x], "up")
            tiler.factor //= 2
    x, _ = tiler.layer(lambda w: decoder.conv_out(norm(w, decoder.conv_norm_out, stats, decoder.conv_act)), [x])
    return x.to(z.device)


@torch.no_grad()
def encode(vae: torch.nn.Module, pixels: torch.Tensor, tile: int = 512,
           store: torch.device | None = None) -> torch.Tensor:
    """The encoder's moments (N, 2 * latent channels, h, w) of `pixels`, as `vae._encode` returns them
    (wrap in diffusers' DiagonalGaussianDistribution for the mean), computed on pixels' device."""
    encoder = vae.encoder
    tiler = Tiler(tile, _groups(vae), pixels.device, store)
    x, stats = tiler.layer(encoder.conv_in, [pixels.to(tiler.store)])
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            x, stats = tiler.resnet(resnet, x, stats)
        if block.downsamplers:
            x, stats = tiler.layer(block.downsamplers[0], [x], "down")
            tiler.factor *= 2
    x, stats = tiler.mid(encoder.mid_block, x, stats)
    quant = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else (lambda t: t)
    x, _ = tiler.layer(lambda w: quant(encoder.conv_out(norm(w, encoder.conv_norm_out, stats, encoder.conv_act))),
                       [x])
    return x.to(pixels.device)

