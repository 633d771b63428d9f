"""SDXL base and refiner: a larger UNet, OpenCLIP bigG (plus CLIP-L on the base), size conditioning."""
from __future__ import annotations

from typing import Any

import torch

from .base import Family, LatentFormat, LayerChoice

SDXL_LATENT = LatentFormat(channels=4, tiny_vae="taesdxl",
                         preview_rgb=((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250),
                                                    (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088)))
SDXL_AYS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
REFINER_AESTHETIC = (6.0, 2.5)  # positive / negative aesthetic score the refiner was trained with


def _has(index: dict[str, Any], name: str) -> bool:
    return bool(index.get(name) and index[name][0])


class SDXL(Family):
    name = "sdxl"
    single_file_text_encoders = (("text_encoder", "conditioner.embedders.0.transformer.", "hf"),
                                 ("text_encoder_2", "conditioner.embedders.1.model.", "openclip"))
    label = "SDXL"
    text_encoders = ("text_encoder", "text_encoder_2")
    pooled_encoder = "text_encoder_2"
    openclip_encoders = ("text_encoder_2",)
    latent = SDXL_LATENT
    base_size = 1024
    ays_sigmas = SDXL_AYS
    marker_keys = ("conditioner.embedders.1.model.ln_final.weight",)
    context_width = 2048
    sdxl_like = True
    # a UNet-only file (ComfyUI's diffusion_models, a UNet GGUF) takes its two CLIPs and VAE from these
    companion_files = {"text_encoder": ("text_encoder", ("clip_l.safetensors", "clip_l*.safetensors")),
                       "text_encoder_2": ("text_encoder", ("clip_g.safetensors", "clip_g*.safetensors")),
                       "vae": ("vae", ("sdxl_vae.safetensors", "sdxl*vae*.safetensors", "*sdxl*vae*.safetensors"))}

    def layer_choice(self, clip_skip: int = 1) -> LayerChoice:
        return LayerChoice(max(1, int(clip_skip)) + 1, False)  # penultimate layer, no final norm

    def matches_folder(self, index, components) -> bool:
        return _has(index, "text_encoder_2") and _has(index, "text_encoder") and not _has(index, "transformer")

    ui_defaults = {**Family.ui_defaults, "width": 1024, "height": 1024}

    def extra_conditioning(self, width: int, height: int, guidance: float = 0.0):
        """Original size, crop top-left, target size: all the generated size, uncropped."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        return ids, ids

    def denoiser_kwargs(self, pooled, extra) -> dict[str, Any]:
        if pooled is None or extra is None:
            return {}
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": extra}}


class SDXLRefiner(SDXL):
    name = "sdxl-refiner"
    single_file_text_encoders = (("text_encoder_2", "conditioner.embedders.0.model.", "openclip"),)
    label = "SDXL refiner"
    text_encoders = ("text_encoder_2",)
    marker_keys = ("conditioner.embedders.0.model.ln_final.weight",)
    companion_files = {}  # its UNet's 1280-wide context is told from no other family's: full checkpoints only
    context_width = 1280

    def matches_folder(self, index, components) -> bool:
        return _has(index, "text_encoder_2") and not _has(index, "text_encoder")

    def extra_conditioning(self, width: int, height: int, guidance: float = 0.0):
        """Original size, crop, and an aesthetic score in place of the target size."""
        positive, negative = REFINER_AESTHETIC
        return (torch.tensor([[height, width, 0, 0, positive]], dtype=torch.float32),
                torch.tensor([[height, width, 0, 0, negative]], dtype=torch.float32))


FAMILIES = (SDXL(), SDXLRefiner())
