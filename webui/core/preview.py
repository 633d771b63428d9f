"""Live previews without the VAE: a fixed linear map from latent channels to RGB.

Decoding every few steps with the VAE would slow sampling down; the four latent
channels of SD's autoencoder are close enough to a linear mix of colours that a 4x3
matrix gives a recognisable thumbnail. The coefficients are the community's published
least-squares fits, one per latent space; each family adapter carries its own
(`LatentFormat.preview_rgb`), and the job records the one of the model it samples.
"""
from __future__ import annotations

from typing import Sequence

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
