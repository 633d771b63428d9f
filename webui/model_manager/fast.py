"""Fast mode: the denoiser's cheap speed-ups, applied at placement and undone when switched off.

- Attention: diffusers' default processor on torch 2 is `AttnProcessor2_0`, which calls
  `scaled_dot_product_attention` (PyTorch picks flash / memory-efficient / math by itself). We
  check it is in place on every attention layer and log which processors run, rather than
  installing processors of our own.
- channels_last memory format for the UNet's convolutions (faster cuDNN kernels on GPUs).
- `torch.compile` of the UNet (nn.Module.compile, in place, so hooks and LoRA patches keep
  working on the same module): on CUDA by default ("max-autotune-no-cudagraphs": the offload
  hooks and in-place LoRA patches move weights, which CUDA graphs would freeze), never on other
  devices unless the setting `fast_compile` says Always.
Token merging (ToMe) is not part of fast mode: it changes the image, so it is its own feature with
AUTOMATIC1111's settings (features/token_merging, written from the paper; tomesd patches classes by name).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .loader import LoadedModel

log = logging.getLogger(__name__)
COMPILE_CHOICES = ("Automatic", "Always", "Never")
COMPILE_MODE_CUDA = "max-autotune-no-cudagraphs"


def attention_processors(unet: torch.nn.Module) -> dict[str, int]:
    """How many attention layers use each processor class (e.g. {"AttnProcessor2_0": 16})."""
    counts: dict[str, int] = {}
    for processor in getattr(unet, "attn_processors", {}).values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def should_compile(device: torch.device, setting: str) -> bool:
    return setting == "Always" or (setting == "Automatic" and device.type == "cuda")


def apply_fast(model: "LoadedModel", on: bool, compile_setting: str = "Automatic") -> bool:
    """Switch fast mode on or off for the model's denoiser; True when anything changed."""
    if model.fast == on:
        return False
    unet = model.unet
    if on:
        unet.to(memory_format=torch.channels_last)
        notes = ["channels_last"]
        if should_compile(model.device.device, compile_setting):
            mode = COMPILE_MODE_CUDA if model.device.device.type == "cuda" else "default"
            unet.compile(mode=mode)
            notes.append(f"torch.compile ({mode}; the first steps of each new size compile)")
        else:
            notes.append(f"no torch.compile ({model.device.device.type}; setting fast_compile: {compile_setting})")
        processors = attention_processors(unet)
        log.info("fast mode for %s: attention %s, %s", model.info.name,
                 ", ".join(f"{n} x{c}" for n, c in processors.items()) or "none", ", ".join(notes))
        if any(name != "AttnProcessor2_0" for name in processors):
            log.warning("fast mode: some attention layers do not use SDPA (AttnProcessor2_0): %s", processors)
    else:
        unet.to(memory_format=torch.contiguous_format)
        unet._compiled_call_impl = None  # what nn.Module.compile set: calls go to forward again
        log.info("fast mode off for %s", model.info.name)
    model.fast = on
    return True
