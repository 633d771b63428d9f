"""Between pixels and latents: VAE encode/decode with the half-precision NaN fallback."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel

log = logging.getLogger(__name__)


def to_pixels(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def to_image(pixels: torch.Tensor) -> Image.Image:
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _vae_dtype(model: "LoadedModel") -> torch.dtype:
    vae = model.vae
    dtype = torch.float32 if model.vae_upcast else next(vae.parameters()).dtype
    if dtype != next(vae.parameters()).dtype:
        vae.to(dtype)
    return dtype


def _upcast(model: "LoadedModel") -> None:
    log.warning("VAE produced NaNs in half precision; switching this model's VAE to fp32")
    model.vae_upcast = True
    model.vae.to(torch.float32)


def _scale(model: "LoadedModel") -> float:
    return model.configs["vae"].get("scaling_factor", 0.18215)


@torch.no_grad()
def decode(model: "LoadedModel", latents: torch.Tensor) -> list[Image.Image]:
    """One image at a time, so peak memory stays that of one decode."""
    images = []
    for latent in latents:
        dtype = _vae_dtype(model)
        pixels = model.vae.decode((latent[None] / _scale(model)).to(dtype)).sample.float()
        if torch.isnan(pixels).any() and dtype != torch.float32:
            _upcast(model)
            pixels = model.vae.decode((latent[None] / _scale(model)).float()).sample.float()
        images.append(to_image(pixels[0]))
    return images


@torch.no_grad()
def encode(model: "LoadedModel", images: list[Image.Image]) -> torch.Tensor:
    """Latents (the posterior mean, so the same image always encodes the same) of RGB images."""
    device = next(model.vae.parameters()).device
    out = []
    for image in images:
        dtype = _vae_dtype(model)
        pixels = to_pixels(image).to(device, dtype)
        latent = model.vae.encode(pixels).latent_dist.mode().float()
        if torch.isnan(latent).any() and dtype != torch.float32:
            _upcast(model)
            latent = model.vae.encode(pixels.float()).latent_dist.mode().float()
        out.append(latent * _scale(model))
    return torch.cat(out)
