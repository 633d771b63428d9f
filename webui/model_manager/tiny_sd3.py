"""Tiny random-weight SD3 / SD 3.5 models as diffusers folders and in Stability's file layouts, for the tests.

Same structure as the real models at toy sizes: an SD3Transformer2DModel (3.5 Medium: dual
attention in block 0 and qk-norm; 3.5 Large: qk-norm), a 16-channel VAE with shift and scale,
CLIP-L (identity text projection, as SD3 uses CLIP-L's pooled output unprojected) and CLIP-G with
the real vocabulary, and a T5 encoder whose tokenizer is trained offline (tiny_flux.train_t5_tokenizer).
The T5 is wider than both CLIPs together, so the zero padding of the CLIP part is exercised.
StableDiffusion3Pipeline and Easel read the very same folder.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .tiny import TINY_TEXT_G, TINY_TEXT_L
from .tiny_flux import TINY_FLUX_VAE, TINY_T5, train_t5_tokenizer

TINY_SD3_TRANSFORMER = {"_class_name": "SD3Transformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 16,
                        "out_channels": 16, "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
                        "joint_attention_dim": 96, "caption_projection_dim": 16, "pooled_projection_dim": 64,
                        "pos_embed_max_size": 32}
VARIANTS = {"sd3": {}, "sd35-medium": {"qk_norm": "rms_norm", "dual_attention_layers": [0]},
            "sd35-large": {"qk_norm": "rms_norm"}}
TINY_SD3_T5 = dict(TINY_T5, d_model=96)
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


@torch.no_grad()
def write_sd3_folder(folder: Path, variant: str = "sd35-medium", seed: int = 0, t5: bool = True) -> Path:
    """A tiny `variant` in the stabilityai/stable-diffusion-3.5-medium folder layout; `t5=False`: no
    text_encoder_3 / tokenizer_3 (model_index.json lists them as null, as a pipeline saved without T5)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .loader import tokenizer_for

    folder.mkdir(parents=True, exist_ok=True)
    t5_tokenizer = train_t5_tokenizer(folder / "tokenizer_3") if t5 else None
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel.from_config(dict(TINY_SD3_TRANSFORMER, **VARIANTS[variant]))
    vae = AutoencoderKL.from_config(copy.deepcopy(TINY_FLUX_VAE))
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**{k: v for k, v in TINY_TEXT_L.items()
                                                           if not k.startswith("_")}))
    clip_l.text_projection.weight.copy_(torch.eye(clip_l.text_projection.weight.shape[0]))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**{k: v for k, v in TINY_TEXT_G.items()
                                                           if not k.startswith("_")}))
    modules: dict[str, torch.nn.Module] = {"transformer": transformer, "vae": vae, "text_encoder": clip_l,
                                           "text_encoder_2": clip_g}
    if t5_tokenizer is not None:
        modules["text_encoder_3"] = T5EncoderModel(T5Config(**dict(TINY_SD3_T5, vocab_size=len(t5_tokenizer))))
    _calibrate(transformer, vae)
    for name, module in modules.items():
        module.eval().save_pretrained(folder / name, safe_serialization=True)
    tokenizer_for("sd3", "text_encoder").save_pretrained(str(folder / "tokenizer"))
    tokenizer_for("sd3", "text_encoder_2").save_pretrained(str(folder / "tokenizer_2"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "text_encoder_3": ["transformers", "T5EncoderModel"] if t5 else [None, None],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "tokenizer_3": ["transformers", "T5TokenizerFast"] if t5 else [None, None],
             "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _calibrate(transformer: torch.nn.Module, vae: torch.nn.Module) -> None:
    """A trained model's scales: velocity ~ sqrt(2) per element, latents ~ unit variance after shift/scale."""
    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    x = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 20, config.joint_attention_dim, generator=generator)
    out = transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=context,
                      pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator),
                      return_dict=False)[0]
    factor = 2 ** 0.5 / float(out.std())
    transformer.proj_out.weight.mul_(factor)
    transformer.proj_out.bias.mul_(factor)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    latent = vae.encode(image).latent_dist.mode()
    shift = round(float(latent.mean()), 5)
    scale = round(float(1 / (latent - shift).std()), 5)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)


def folder_variant(folder: Path) -> str:
    from ..families.sd3 import variant_of_config

    return variant_of_config(json.loads((folder / "transformer" / "config.json").read_text())) or "sd3"


def folder_state(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from .loader import _component_weights

    return {name: _component_weights(folder / name, False) for name in COMPONENTS if (folder / name).is_dir()}


def folder_configs(folder: Path) -> Any:
    from .architecture import Architecture, configs_for

    components = {name: json.loads((folder / name / "config.json").read_text())
                  for name in COMPONENTS if (folder / name / "config.json").is_file()}
    return configs_for(Architecture(folder_variant(folder)), components)


def _sidecar(path: Path, configs: Any, family: str | None = None) -> None:
    sidecar = {"components": {k: v for k, v in configs.components.items() if k != "scheduler"}}
    if family:
        sidecar["architecture"] = family
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))


def write_sd3_single_files(folder: Path, models_dir: Path, name: str, with_text_encoders: bool = False,
                           separate_t5: bool = True) -> Path:
    """The tiny folder's weights as Stability publishes them: transformer + VAE in one file in
    models/Stable-diffusion (a sidecar gives its tiny sizes); with `with_text_encoders` the
    `text_encoders.clip_l/clip_g/t5xxl.transformer.*` tensors inside too (sd3_medium_incl_clips_t5xxlfp8),
    else `clip_l`, `clip_g` (and with `separate_t5` `t5xxl_fp16` plus its tokenizer) in models/text_encoder."""
    from safetensors.torch import save_file

    configs, state = folder_configs(folder), folder_state(folder)
    adapter = configs.architecture.adapter
    checkpoint = models_dir / "Stable-diffusion" / f"{name}.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    parts = state if with_text_encoders else {k: state[k] for k in ("transformer", "vae")}
    tensors = {k: v.contiguous() for k, v in adapter.join_single_file(parts, configs).items()
               if not k.endswith("encoder.embed_tokens.weight")}  # T5's tied embeddings are saved once
    save_file(tensors, str(checkpoint))
    _sidecar(checkpoint, configs)
    encoders = models_dir / "text_encoder"
    if with_text_encoders:
        if "text_encoder_3" in state:
            encoders.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder / "tokenizer_3", encoders / "t5_tokenizer", dirs_exist_ok=True)
        return checkpoint
    encoders.mkdir(parents=True, exist_ok=True)
    clip_l = {k: v for k, v in state["text_encoder"].items() if k != "text_projection.weight"}  # as ComfyUI's
    save_file(clip_l, str(encoders / "clip_l.safetensors"))
    save_file(state["text_encoder_2"], str(encoders / "clip_g.safetensors"))
    if separate_t5 and "text_encoder_3" in state:
        save_file({k: v for k, v in state["text_encoder_3"].items() if k != "encoder.embed_tokens.weight"},
                  str(encoders / "t5xxl_fp16.safetensors"))
        shutil.copytree(folder / "tokenizer_3", encoders / "t5_tokenizer", dirs_exist_ok=True)
    return checkpoint


def write_sd3_gguf(folder: Path, models_dir: Path, name: str, quant: str = "Q8_0") -> Path:
    """The tiny folder's transformer in Stability's bare layout as a transformer-only GGUF (as city96 publishes
    SD 3.5); its VAE and text encoders come from models/VAE and models/text_encoder."""
    from safetensors.torch import save_file

    from ..families.sd3_layout import from_diffusers
    from .convert import vae_to_original
    from .gguf import write_gguf_checkpoint

    configs, state = folder_configs(folder), folder_state(folder)
    path = models_dir / "Stable-diffusion" / f"{name}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf_checkpoint(path, from_diffusers(state["transformer"], configs["transformer"]), quant, "sd3")
    _sidecar(path, configs)
    (models_dir / "VAE").mkdir(parents=True, exist_ok=True)
    save_file(vae_to_original(state["vae"], configs["vae"]), str(models_dir / "VAE" / "sd35_vae.safetensors"))
    return path
