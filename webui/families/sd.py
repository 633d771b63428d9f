"""Stable Diffusion 1.x and 2.x: one UNet, one CLIP text encoder, 4-channel latents."""
from __future__ import annotations

from typing import Any

from .base import Family, LatentFormat, LayerChoice

SD_LATENT = LatentFormat(channels=4, tiny_vae="taesd",
                         preview_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173),
                                                  (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)))
# NVIDIA's published Align Your Steps sigmas for SD 1.x/2.x
SD_AYS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


def _is_openclip(config: dict[str, Any]) -> bool:
    """OpenCLIP ViT-H (SD 2.x) is 1024 wide and uses gelu; OpenAI's ViT-L (SD 1.x) uses quick_gelu."""
    return config.get("hidden_size") == 1024 or config.get("hidden_act") == "gelu"


def _single_encoder(index: dict[str, Any]) -> bool:
    has = lambda name: bool(index.get(name) and index[name][0])  # noqa: E731
    return has("text_encoder") and not has("text_encoder_2") and not has("transformer")  # a UNet, not a DiT


class SD1(Family):
    name = "sd1"
    single_file_text_encoders = (("text_encoder", "cond_stage_model.transformer.", "hf"),)
    label = "SD 1.x"
    latent = SD_LATENT
    base_size = 512
    ays_sigmas = SD_AYS
    marker_keys = ("cond_stage_model.transformer.text_model.final_layer_norm.weight",
                   "cond_stage_model.transformer.final_layer_norm.weight")
    context_width = 768
    # a UNet-only file (ComfyUI's diffusion_models, a UNet GGUF) takes its CLIP-L and VAE from these
    companion_files = {"text_encoder": ("text_encoder", ("clip_l.safetensors", "clip_l*.safetensors")),
                       "vae": ("vae", ("vae-ft-mse-840000-ema-pruned.safetensors", "*sd15*vae*.safetensors",
                                       "*sd1*vae*.safetensors", "vae-ft-*.safetensors"))}

    def matches_folder(self, index, components) -> bool:
        return _single_encoder(index) and not _is_openclip(components.get("text_encoder", {}))


class SD2(Family):
    name = "sd2"
    ui_defaults = {**Family.ui_defaults, "width": 768, "height": 768}  # most SD 2.x checkpoints are 768-v
    single_file_text_encoders = (("text_encoder", "cond_stage_model.model.", "openclip"),)
    label = "SD 2.x"
    latent = SD_LATENT
    base_size = 512
    ays_sigmas = SD_AYS
    openclip_encoders = ("text_encoder",)
    marker_keys = ("cond_stage_model.model.ln_final.weight",)
    context_width = 1024
    prediction_uncertain = True

    def default_size(self, prediction_type: str = "epsilon") -> int:
        return 768 if prediction_type == "v_prediction" else 512

    def layer_choice(self, clip_skip: int = 1) -> LayerChoice:
        # the file keeps all 24 layers; SD 2.x was trained on the penultimate one (plus the final norm)
        return LayerChoice(max(1, int(clip_skip)) + 1, True)

    def matches_folder(self, index, components) -> bool:
        return _single_encoder(index) and _is_openclip(components.get("text_encoder", {}))


FAMILIES = (SD1(), SD2())
