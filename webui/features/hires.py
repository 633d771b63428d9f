"""Hires fix: generate small, upscale, then refine at the target size with img2img.

The upscale either stays in latent space (AUTOMATIC1111's "Latent" modes: interpolate the
latents) or goes through pixels with any image upscaler (Lanczos, Nearest, or a model).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from .upscalers.catalog import BUILTIN

if TYPE_CHECKING:
    from .upscalers import Upscalers

# AUTOMATIC1111's names -> (torch interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def target_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> tuple[int, int]:
    """Second-pass size: by scale, or to resize_x/resize_y (one of them 0 keeps the aspect ratio).

    Rounded down to multiples of 8, the VAE's granularity.
    """
    if resize_x == 0 and resize_y == 0:
        w, h = width * scale, height * scale
    elif resize_y == 0:
        w, h = resize_x, resize_x * height / width
    elif resize_x == 0:
        w, h = resize_y * width / height, resize_y
    else:
        w, h = resize_x, resize_y
    return max(64, int(w) // 8 * 8), max(64, int(h) // 8 * 8)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize latents to (width, height) in pixels / 8."""
    interpolation, antialias = LATENT_MODES[mode]
    latent_size = (size[1] // 8, size[0] // 8)
    kwargs = {"antialias": antialias} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(latents, size=latent_size, mode=interpolation, **kwargs)


def model_upscaler_names(upscalers: "Upscalers | None") -> list[str]:
    """Model upscalers (models/ESRGAN and A1111's other folders) hires fix can use, by display name.

    Re-read on every call, so a file dropped into the folder is accepted without a restart.
    """
    if upscalers is None:
        return []
    return [name for name in upscalers.list_upscalers() if name not in BUILTIN]


def upscale_image(image: Image.Image, name: str, size: tuple[int, int],
                  builtin: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image]],
                  upscalers: "Upscalers | None", check: Callable[[], None] | None = None) -> Image.Image:
    """The hires "image" upscale: a built-in resize, or a model upscaler run (tiled) to exactly `size`.

    `check` runs before each tile, so Interrupt stops a long model upscale between tiles.
    """
    if name in builtin:
        return builtin[name](image, size)
    if upscalers is None:
        raise KeyError(f"unknown hires upscaler {name!r}")
    return upscalers.upscale(image, name, size=size, check=check)
