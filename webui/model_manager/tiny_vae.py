"""Tiny autoencoders for live previews, one per latent space: TAESD (SD 1.x/2.x), TAESDXL (SDXL),
TAESD3 (SD 3/3.5, 16 channels) and TAEF1 (Flux.1, and Z-Image, which uses Flux's VAE).

They live in `models/VAE-approx/<name>/` as diffusers folders (config.json and
diffusion_pytorch_model.safetensors, the layout their author publishes on the hub and the starter list
downloads), are loaded offline with diffusers' AutoencoderTiny, and are kept in the model store
(kind "tiny_vae") like every other model. A missing or unreadable folder means None: previews
fall back to the cheap approximation, and the reason is logged once per folder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .store import ModelStore

log = logging.getLogger(__name__)
KIND = "tiny_vae"
_reported: set[str] = set()


def _once(key: str, message: str, *args: Any) -> None:
    if key not in _reported:
        _reported.add(key)
        log.warning(message, *args)


def tiny_vae_folder(models_dir: Path, name: str) -> Path | None:
    """`models_dir/name` when it holds a diffusers AutoencoderTiny folder; None (logged once) when not."""
    if not name:
        return None
    folder = models_dir / name
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    _once(str(folder), "live previews: no tiny autoencoder in %s (config.json and a .safetensors file); using the "
                       "cheap approximation. Models tab > Download > Starter models offers %r.", folder, name)
    return None


def load_tiny_vae(folder: Path, store: ModelStore, device: torch.device, dtype: torch.dtype) -> Any | None:
    """The AutoencoderTiny in `folder` on `device`, from the store; None (logged once) if it cannot be read."""
    def load():
        from diffusers import AutoencoderTiny

        model = AutoencoderTiny.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        return model.to(device, dtype).eval().requires_grad_(False)

    try:
        return store.get(KIND, (str(folder), str(device), str(dtype)), load, scoped=False)
    except Exception as exc:  # a broken preview model must never fail a generation
        _once(str(folder), "live previews: cannot read the tiny autoencoder in %s (%s); using the cheap approximation",
              folder, exc)
        return None
