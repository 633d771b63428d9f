"""Live previews: a fixed linear map from latent channels to RGB, or a tiny autoencoder.

Decoding every few steps with the VAE would slow sampling down; the four latent
channels of SD's autoencoder are close enough to a linear mix of colours that a 4x3
matrix gives a recognisable thumbnail. The coefficients are the community's published
least-squares fits, one per latent space; each family adapter carries its own
(`LatentFormat.preview_rgb`), and the job records the one of the model it samples.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image


def latent_preview(latents: torch.Tensor, rgb: Sequence[Sequence[float]] | None = None, index: int = 0,
                   upscale: int = 4) -> Image.Image:
    """RGB thumbnail of one latent of a batch; upscaled so a 64x64 latent shows at 256x256.

    `rgb` maps each latent channel to a colour (channels x 3); without a matching one, the
    channels' mean is shown in grey.
    """
    latent = latents[index].detach().float().cpu()
    channels = latent.shape[0]
    if rgb and len(rgb) == channels:
        coeffs = torch.tensor(rgb, dtype=torch.float32)
    else:
        coeffs = torch.full((channels, 3), 1.0 / max(1, channels))
    colours = torch.einsum("chw,cr->hwr", latent, coeffs)
    array = ((colours + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.BILINEAR)
    return image


@dataclass(frozen=True)
class ApproxPreview:
    """AUTOMATIC1111's "Approx cheap": the family's latent -> RGB matrix."""

    rgb: Sequence[Sequence[float]] | None = None

    def __call__(self, latents: torch.Tensor, index: int = 0, upscale: int = 4) -> Image.Image:
        return latent_preview(latents, self.rgb, index, upscale)


@dataclass(frozen=True)
class TinyVaePreview:
    """AUTOMATIC1111's "TAESD": a tiny autoencoder (diffusers' AutoencoderTiny) decodes the latent.

    It takes the latents as the sampler holds them (TAESD's scaling factor is 1) and returns
    the picture at full size, close to what the real VAE will make, for a few milliseconds.
    Previews are decoded by whoever polls, on their thread; the lock keeps two pollers from
    running the module at once.
    """

    decoder: Any  # AutoencoderTiny
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, index: int = 0) -> Image.Image:
        param = next(self.decoder.parameters())
        with self.lock:
            pixels = self.decoder.decode(latents[index:index + 1].detach().to(param.device, param.dtype)).sample
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
