"""Tiny random-weight checkpoints with the real structure, for --demo-model and the tests.

They keep what loading and generation depend on: the VAE's downscale factor of 8, four
latent channels, the real CLIP vocabulary (49408 tokens), cross-attention, SDXL's two
text encoders and size conditioning. They are written in the same layouts model sites
publish (single-file original keys) or as diffusers folders, with a JSON sidecar that
gives their sizes, so the same loading code that reads a real file reads these.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .architecture import Architecture, ModelConfigs, configs_for
from .convert import StateDict, diffusers_to_checkpoint
from .loader import file_state_dict

_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 4,
         "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 32, "layer_norm_eps": 1e-05,
         "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "model_type": "clip_text_model"}
TINY_TEXT_L = dict(_TEXT, architectures=["CLIPTextModel"], hidden_act="quick_gelu")
TINY_TEXT_G = dict(_TEXT, architectures=["CLIPTextModelWithProjection"], hidden_act="gelu")

TINY_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [16, 16, 32, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 0.18215}

_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": [32, 64],
         "layers_per_block": 2, "norm_num_groups": 8, "in_channels": 4, "out_channels": 4, "sample_size": 8,
         "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
         "norm_eps": 1e-05, "center_input_sample": False}
TINY_UNET_SD = dict(_UNET, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, cross_attention_dim=32)
TINY_UNET_SDXL = dict(_UNET, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                      up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4],
                      transformer_layers_per_block=[1, 2], cross_attention_dim=64, use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 32)


def tiny_configs(arch: Architecture) -> ModelConfigs:
    """Configs of the tiny model for an architecture (as a sidecar would state them)."""
    components: dict[str, dict[str, Any]] = {"vae": copy.deepcopy(TINY_VAE)}
    if arch.family in ("sd1", "sd2"):
        unet = copy.deepcopy(TINY_UNET_SD)
        if arch.family == "sd2":
            unet["use_linear_projection"] = True
        components["text_encoder"] = copy.deepcopy(TINY_TEXT_L if arch.family == "sd1" else TINY_TEXT_G)
    elif arch.family == "sdxl":
        unet = copy.deepcopy(TINY_UNET_SDXL)
        components["text_encoder"] = copy.deepcopy(TINY_TEXT_L)
        components["text_encoder_2"] = copy.deepcopy(TINY_TEXT_G)
    else:  # refiner: only the OpenCLIP encoder; aesthetic score instead of target size
        unet = dict(copy.deepcopy(TINY_UNET_SDXL), cross_attention_dim=32,
                    projection_class_embeddings_input_dim=5 * 8 + 32)
        components["text_encoder_2"] = copy.deepcopy(TINY_TEXT_G)
    if arch.inpainting:
        unet["in_channels"] = 9
    components["unet"] = unet
    return configs_for(arch, components)


def build_tiny_components(arch: Architecture, seed: int = 0) -> tuple[ModelConfigs, dict[str, torch.nn.Module]]:
    """Random-weight modules (deterministic for a seed) for the tiny model."""
    configs = tiny_configs(arch)
    torch.manual_seed(seed)
    modules: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel.from_config(configs["unet"]),
        "vae": AutoencoderKL.from_config(configs["vae"]),
    }
    for name in arch.text_encoders:
        cfg = {k: v for k, v in configs[name].items() if not k.startswith("_")}
        cls = CLIPTextModelWithProjection if cfg["architectures"][0] == "CLIPTextModelWithProjection" else CLIPTextModel
        modules[name] = cls(CLIPTextConfig(**cfg))
    _calibrate(configs, modules)
    return configs, {name: m.eval() for name, m in modules.items()}


@torch.no_grad()
def _calibrate(configs: ModelConfigs, modules: dict[str, torch.nn.Module]) -> None:
    """Give the random model a trained model's scales: unit-variance noise predictions and latents.

    A trained UNet predicts noise of standard deviation ~1 and SD's VAE scaling factor makes
    latents ~unit variance; random weights give neither, which would make every sampler step
    (and img2img at low strength) behave unlike the real thing.
    """
    generator = torch.Generator().manual_seed(0)
    unet, vae = modules["unet"], modules["vae"]
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 8 * (6 if configs.architecture.family == "sdxl" else 5)
        ids = 6 if configs.architecture.family == "sdxl" else 5
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=generator),
                                       "time_ids": torch.full((2, ids), 64.0)}
    out = unet(x, torch.tensor([500, 500]), encoder_hidden_states=context, **kwargs).sample
    unet.conv_out.weight.mul_(1 / out.std())
    unet.conv_out.bias.mul_(1 / out.std())
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    latent = vae.encode(image).latent_dist.mode()
    configs["vae"]["scaling_factor"] = round(float(1 / latent.std()), 5)
    vae.register_to_config(scaling_factor=configs["vae"]["scaling_factor"])


def _state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, StateDict]:
    return {name: {k: v.detach().clone().contiguous() for k, v in file_state_dict(m).items()}
            for name, m in modules.items()}


def sidecar_json(configs: ModelConfigs, demo: bool = False) -> dict[str, Any]:
    arch = configs.architecture
    data: dict[str, Any] = {"architecture": arch.family, "prediction_type": arch.prediction_type,
                            "inpainting": arch.inpainting,
                            "components": {k: v for k, v in configs.components.items() if k != "scheduler"}}
    if demo:
        data["easel_demo"] = True
    return data


def write_single_file(path: Path, arch: Architecture, seed: int = 0, demo: bool = False,
                      dtype: torch.dtype = torch.float32) -> Path:
    """A `.safetensors` in the original single-file layout plus its `<name>.json` sidecar."""
    configs, modules = build_tiny_components(arch, seed)
    tensors = diffusers_to_checkpoint(_state_dicts(modules), configs)
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.with_suffix(".json").write_text(json.dumps(sidecar_json(configs, demo), indent=2))
    return path


def write_diffusers_folder(folder: Path, arch: Architecture, seed: int = 0) -> Path:
    """The same tiny model as a diffusers folder (model_index.json + one folder per component)."""
    configs, modules = build_tiny_components(arch, seed)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
                "sdxl": "StableDiffusionXLPipeline", "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}[arch.family]
    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": "0.42.1",
                             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for name in ("text_encoder", "text_encoder_2"):
        index[name] = ["transformers", type(modules[name]).__name__] if name in modules else [None, None]
    for name, module in modules.items():
        module.save_pretrained(folder / name, safe_serialization=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
