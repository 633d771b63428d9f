"""Live previews without the VAE: a fixed linear map from latent channels to RGB.

Decoding every few steps with the VAE would slow sampling down; the four latent
channels of SD's autoencoder are close enough to a linear mix of colours that a 4x3
matrix gives a recognisable thumbnail. The coefficients are the community's published
least-squares fits for the SD 1.x/2.x and SDXL latent spaces.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_SD_COEFFS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_COEFFS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                (-0.3730, -0.2499, -0.2088))


def latent_preview(latents: torch.Tensor, sdxl: bool = False, index: int = 0, upscale: int = 4) -> Image.Image:
    """RGB thumbnail of one latent of a batch; upscaled so a 64x64 latent shows at 256x256."""
    latent = latents[index].detach().float().cpu()
    coeffs = torch.tensor(_SDXL_COEFFS if sdxl else _SD_COEFFS)
    rgb = torch.einsum("chw,cr->hwr", latent, coeffs)
    array = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.BILINEAR)
    return image
