"""Tiny autoencoders for live previews (TAESD for SD 1.x/2.x, TAESDXL for SDXL).

They live in `models/VAE-approx/<name>/` as diffusers folders (config.json and
diffusion_pytorch_model.safetensors, the layout their authors publish and the starter list
downloads), are loaded offline with diffusers' AutoencoderTiny, and are kept in the model store
(kind "tiny_vae") like every other model. A missing or unreadable folder means None: previews
fall back to the cheap approximation, and the reason is logged once.
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


def tiny_vae_folder(models_dir: Path, name: str) -> Path | None:
    folder = models_dir / name
    if name and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
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
        if str(folder) not in _reported:
            _reported.add(str(folder))
            log.warning("live previews: cannot read the tiny autoencoder in %s (%s); using the approximation",
                        folder, exc)
        return None
