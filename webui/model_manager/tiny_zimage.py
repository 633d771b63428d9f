"""Tiny random-weight Z-Image (Turbo or base) as a diffusers folder, and in the layouts people download.

Same structure as the real model at toy sizes: a ZImageTransformer2DModel with noise and context
refiners and the main single-stream layers; Flux's 16-channel VAE with shift and scale; a Qwen3
text encoder. The Qwen tokenizer is trained here, offline, with the `tokenizers` library (a small
byte-level BPE with Qwen's special tokens and a chat template that renders one user message as
Qwen3's does), saved as tokenizer.json that `AutoTokenizer` loads; so ZImagePipeline and Easel read
the very same folder.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .tiny import TINY_VAE

TINY_ZIMAGE_TRANSFORMER = {"_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
                           "in_channels": 16, "dim": 64, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2,
                           "n_kv_heads": 2, "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 32, "rope_theta": 256.0,
                           "t_scale": 1000.0, "axes_dims": [8, 12, 12], "axes_lens": [1024, 64, 64]}
TINY_ZIMAGE_VAE = dict(TINY_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                       shift_factor=0.1159, scaling_factor=0.3611)
TINY_QWEN3 = {"architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "hidden_act": "silu", "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
              "tie_word_embeddings": True}
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": False}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen3's template, reduced to what it renders for plain messages (a think block only when thinking is off)
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")
_CORPUS = ("a photo of a cat sitting on a red chair", "a watercolour painting of mountains at sunset",
           "portrait of an old man, detailed, dramatic light", "a bowl of fruit on a wooden table",
           "city street at night with neon signs and rain", "a small house in a green forest",
           "user assistant system")


def train_qwen_tokenizer(folder: Path, vocab_size: int = 320) -> Any:
    """A small Qwen-style (byte-level BPE) tokenizer trained on a few lines, saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer)
    fast = Qwen2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, model_max_length=131072)
    fast.chat_template = QWEN3_CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


@torch.no_grad()
def write_zimage_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny Z-Image in the Tongyi-MAI/Z-Image-Turbo folder layout."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_qwen_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel.from_config(copy.deepcopy(TINY_ZIMAGE_TRANSFORMER))
    vae = AutoencoderKL.from_config(copy.deepcopy(TINY_ZIMAGE_VAE))
    qwen = Qwen3Model(Qwen3Config(**{k: v for k, v in TINY_QWEN3.items()}, vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id))
    _calibrate(transformer, vae)
    for name, module in (("transformer", transformer), ("vae", vae), ("text_encoder", qwen)):
        module.eval().save_pretrained(folder / name, safe_serialization=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    index = {"_class_name": "ZImagePipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "Qwen3Model"],
             "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "ZImageTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _calibrate(transformer: torch.nn.Module, vae: torch.nn.Module) -> None:
    """A trained model's scales: the final layer is zero-initialised, so give it weights whose output is
    ~sqrt(2) per element (a velocity); latents ~ unit variance after the VAE's shift and scale."""
    generator = torch.Generator().manual_seed(0)
    for name, param in transformer.named_parameters():
        if name.startswith("all_final_layer") or "adaLN_modulation" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    x = [torch.randn(16, 1, 8, 8, generator=generator)]
    caption = [torch.randn(7, transformer.config.cap_feat_dim, generator=generator)]
    out = transformer(x, torch.tensor([0.5]), caption, return_dict=False)[0][0]
    layer = transformer.all_final_layer["2-1"].linear
    factor = 2 ** 0.5 / float(out.std())
    layer.weight.mul_(factor)
    layer.bias.mul_(factor)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    latent = vae.encode(image).latent_dist.mode()
    shift = round(float(latent.mean()), 5)
    scale = round(float(1 / (latent - shift).std()), 5)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)


def _folder_state(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from .loader import _component_weights

    return {name: _component_weights(folder / name, False) for name in ("transformer", "vae", "text_encoder")}


def _folder_configs(folder: Path, family: str) -> Any:
    from .architecture import Architecture, configs_for

    components = {name: json.loads((folder / name / "config.json").read_text())
                  for name in ("transformer", "vae", "text_encoder")}
    return configs_for(Architecture(family), components)


def _sidecar(path: Path, configs: Any, family: str) -> None:
    sidecar = {"architecture": family, "components": {k: v for k, v in configs.components.items() if k != "scheduler"}}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))


def write_zimage_single_files(folder: Path, models_dir: Path, name: str, family: str = "zimage-turbo",
                              all_in_one: bool = False, prefix: str = "") -> Path:
    """The tiny folder's weights as people download them: the published transformer layout in
    models/Stable-diffusion (a sidecar gives its tiny sizes), Flux's `ae.safetensors` in models/VAE,
    `qwen_3_4b.safetensors` (the causal LM's `model.*` names) and the Qwen tokenizer folder in
    models/text_encoder; or (`all_in_one`) one file with everything under ComfyUI's prefixes."""
    from safetensors.torch import save_file

    from ..families.zimage import to_original
    from .convert import vae_to_original

    configs, state = _folder_configs(folder, family), _folder_state(folder)
    adapter = configs.architecture.adapter
    checkpoint = models_dir / "Stable-diffusion" / f"{name}.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if all_in_one:
        tensors = adapter.join_single_file(state, configs)
    else:
        tensors = to_original(state["transformer"], prefix)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(checkpoint))
    _sidecar(checkpoint, configs, family)
    if not all_in_one:
        (models_dir / "VAE").mkdir(parents=True, exist_ok=True)
        save_file(vae_to_original(state["vae"], configs["vae"]), str(models_dir / "VAE" / "ae.safetensors"))
        encoders = models_dir / "text_encoder"
        encoders.mkdir(parents=True, exist_ok=True)
        save_file({"model." + k: v for k, v in state["text_encoder"].items()}, str(encoders / "qwen_3_4b.safetensors"))
        shutil.copytree(folder / "tokenizer", encoders / "qwen_tokenizer", dirs_exist_ok=True)
    return checkpoint


def write_zimage_gguf(folder: Path, models_dir: Path, name: str, quant: str = "Q8_0",
                      family: str = "zimage-turbo") -> Path:
    """The tiny folder's transformer in the published layout as a transformer-only GGUF."""
    from ..families.zimage import to_original
    from .gguf import write_gguf_checkpoint

    configs = _folder_configs(folder, family)
    path = models_dir / "Stable-diffusion" / f"{name}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf_checkpoint(path, to_original(_folder_state(folder)["transformer"]), quant, "lumina2")
    _sidecar(path, configs, family)
    return path
