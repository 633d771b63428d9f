"""Tiny random-weight Flux.1 (dev or schnell) as a diffusers folder, for the tests and the demo.

Same structure as the real model at toy sizes: a FluxTransformer2DModel with double and single
blocks, 3-axis rotary ids and (dev) the guidance embedder; a 16-channel VAE with shift and
scale; CLIP-L (the real vocabulary) for the pooled vector and a T5 encoder for the sequence.
The T5 tokenizer is trained here, offline, with the `tokenizers` library (a small Unigram
model with T5's special tokens: pad 0, </s> 1, unk 2), saved as tokenizer.json that
`T5TokenizerFast` loads; so FluxPipeline and Easel read the very same folder.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from .tiny import TINY_TEXT_L, TINY_VAE

TINY_FLUX_TRANSFORMER = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
                         "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
                         "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 6, 6]}
TINY_FLUX_VAE = dict(TINY_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                     shift_factor=0.1159, scaling_factor=0.3611)
TINY_T5 = {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 37,
           "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
           "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False, "use_cache": False, "pad_token_id": 0,
           "eos_token_id": 1, "layer_norm_epsilon": 1e-6, "dense_act_fn": "gelu_new", "is_gated_act": True}
SCHEDULERS = {
    "flux-dev": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                 "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                 "max_image_seq_len": 4096},
    "flux-schnell": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                     "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                     "max_image_seq_len": 4096},
}
_CORPUS = ("a photo of a cat sitting on a red chair", "a watercolour painting of mountains at sunset",
           "portrait of an old man, detailed, dramatic light", "a bowl of fruit on a wooden table",
           "city street at night with neon signs and rain", "a small house in a green forest")


def train_t5_tokenizer(folder: Path, vocab_size: int = 200) -> Any:
    """A small T5-style (Unigram, Metaspace) tokenizer trained on a few lines, saved for T5TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer)
    tokenizer.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                  special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


@torch.no_grad()
def write_flux_folder(folder: Path, variant: str = "dev", seed: int = 0, fill: bool = False,
                      kontext: bool = False) -> Path:
    """A tiny Flux.1 `variant` ("dev" / "schnell") in the black-forest-labs/FLUX.1-dev folder layout;
    `fill`: the Fill variant (latents + masked-image latents + 8x8 mask as input, 384 wide); `kontext`:
    FLUX.1 Kontext dev's folder (dev's weights, FluxKontextPipeline's index)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .loader import tokenizer_for

    family = f"flux-{variant}"
    folder.mkdir(parents=True, exist_ok=True)
    t5_tokenizer = train_t5_tokenizer(folder / "tokenizer_2")
    torch.manual_seed(seed)
    extra = {"in_channels": 384, "out_channels": 64} if fill else {}
    transformer = FluxTransformer2DModel.from_config(dict(TINY_FLUX_TRANSFORMER, guidance_embeds=variant == "dev",
                                                          **extra))
    vae = AutoencoderKL.from_config(copy.deepcopy(TINY_FLUX_VAE))
    clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TINY_TEXT_L.items() if not k.startswith("_")}))
    t5 = T5EncoderModel(T5Config(**dict(TINY_T5, vocab_size=len(t5_tokenizer))))
    _calibrate(transformer, vae)
    for name, module in (("transformer", transformer), ("vae", vae), ("text_encoder", clip),
                         ("text_encoder_2", t5)):
        module.eval().save_pretrained(folder / name, safe_serialization=True)
    tokenizer_for(family, "text_encoder").save_pretrained(str(folder / "tokenizer"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS[family], indent=2))
    pipeline = "FluxFillPipeline" if fill else "FluxKontextPipeline" if kontext else "FluxPipeline"
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             **({} if fill else {"image_encoder": [None, None], "feature_extractor": [None, None]})}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _calibrate(transformer: torch.nn.Module, vae: torch.nn.Module) -> None:
    """A trained model's scales: velocity ~ sqrt(2) per element, latents ~ unit variance after shift/scale."""
    generator = torch.Generator().manual_seed(0)
    from ..families.flux import image_ids, pack

    x = torch.randn(1, transformer.config.in_channels // 4, 8, 8, generator=generator)
    context = torch.randn(1, 16, transformer.config.joint_attention_dim, generator=generator)
    kwargs = {"guidance": torch.tensor([3.5])} if transformer.config.guidance_embeds else {}
    out = transformer(hidden_states=pack(x), timestep=torch.tensor([0.5]), encoder_hidden_states=context,
                      pooled_projections=torch.randn(1, transformer.config.pooled_projection_dim, generator=generator),
                      txt_ids=torch.zeros(16, 3), img_ids=image_ids(8, 8, x.device, x.dtype), return_dict=False,
                      **kwargs)[0]
    factor = 2 ** 0.5 / float(out.std())
    transformer.proj_out.weight.mul_(factor)
    transformer.proj_out.bias.mul_(factor)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    latent = vae.encode(image).latent_dist.mode()
    shift = round(float(latent.mean()), 5)
    scale = round(float(1 / (latent - shift).std()), 5)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)


def _folder_state(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from .loader import _component_weights

    return {name: _component_weights(folder / name, False)
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2")}


def _folder_configs(folder: Path, family: str) -> Any:
    from .architecture import Architecture, configs_for

    components = {name: json.loads((folder / name / "config.json").read_text())
                  for name in ("transformer", "vae", "text_encoder", "text_encoder_2")}
    return configs_for(Architecture(family), components)


def write_flux_gguf(folder: Path, models_dir: Path, name: str, quant: str = "Q8_0") -> Path:
    """The tiny folder's transformer in BFL's layout as a transformer-only GGUF (as city96 publishes Flux)."""
    from .gguf import write_gguf_checkpoint

    configs = _folder_configs(folder, "flux-dev")
    state = _folder_state(folder)["transformer"]
    from ..families.flux_layout import from_diffusers

    path = models_dir / "Stable-diffusion" / f"{name}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf_checkpoint(path, from_diffusers(state, configs["transformer"]), quant, "flux")
    sidecar = {"architecture": "flux-dev", "components": {k: v for k, v in configs.components.items()
                                                          if k != "scheduler"}}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return path


def write_flux_single_files(folder: Path, models_dir: Path, name: str, all_in_one: bool = False) -> Path:
    """The tiny folder's weights in the layouts people download: BFL's transformer file in
    models/Stable-diffusion (with a sidecar giving its tiny sizes), `ae.safetensors` in models/VAE,
    `clip_l` / `t5xxl_fp16` and the T5 tokenizer folder in models/text_encoder; or (`all_in_one`) one
    file with everything under ComfyUI's prefixes."""
    import shutil

    from safetensors.torch import save_file

    from .convert import vae_to_original

    family = "flux-dev" if json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds") \
        else "flux-schnell"
    configs, state = _folder_configs(folder, family), _folder_state(folder)
    adapter = configs.architecture.adapter
    checkpoint = models_dir / "Stable-diffusion" / f"{name}.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    parts = state if all_in_one else {"transformer": state["transformer"]}
    tensors = {k: v.contiguous() for k, v in adapter.join_single_file(parts, configs).items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("encoder.embed_tokens.weight")}  # tied to shared
    save_file(tensors, str(checkpoint))
    sidecar = {"architecture": family, "components": {k: v for k, v in configs.components.items() if k != "scheduler"}}
    checkpoint.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    if not all_in_one:
        (models_dir / "VAE").mkdir(parents=True, exist_ok=True)
        save_file(vae_to_original(state["vae"], configs["vae"]), str(models_dir / "VAE" / "ae.safetensors"))
        encoders = models_dir / "text_encoder"
        encoders.mkdir(parents=True, exist_ok=True)
        save_file(state["text_encoder"], str(encoders / "clip_l.safetensors"))
        save_file({k: v for k, v in state["text_encoder_2"].items() if k != "encoder.embed_tokens.weight"},
                  str(encoders / "t5xxl_fp16.safetensors"))
        shutil.copytree(folder / "tokenizer_2", encoders / "t5_tokenizer", dirs_exist_ok=True)
    return checkpoint
