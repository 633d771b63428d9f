"""Which attention kernel the denoiser runs: AUTOMATIC1111's `cross_attention_optimization`.

A1111's names where they exist (its setting's choices and its flags `--xformers`,
`--opt-sdp-attention`, `--opt-sdp-no-mem-attention`, `--opt-split-attention`), mapped onto
what diffusers and PyTorch offer, applied only while a pass samples (`attention_for_run`):
- sdp / Automatic: PyTorch's `scaled_dot_product_attention` picks flash, memory-efficient or
  math by itself (diffusers' default processors call it).
- sdp-no-mem: the same call limited to flash and math kernels (`torch.nn.attention.sdpa_kernel`),
  A1111's deterministic variant.
- None: the math kernel only: the textbook computation (A1111's "no optimization").
- xformers, SageAttention: only when the package imports (diffusers' `is_xformers_available`,
  `is_sageattention_available`) and the device is CUDA. Transformers whose processors go through
  diffusers' attention dispatcher (Flux, Z-Image) get the dispatcher's backend
  (`attention_backend(...)`); UNet and SD 3 processors are swapped for diffusers' xFormers
  processors for the pass. SageAttention has no processor for those: SDP runs instead.
`--opt-split-attention` (Doggettx's sliced attention) maps to sdp: PyTorch's memory-efficient
kernel is the same idea, in one kernel. So do A1111's other memory-saving choices (InvokeAI, sub-quadratic,
V1; their flags, and their names in the setting: settings.ATTENTION_ALIASES). A choice that cannot run falls back to sdp with one
warning per model naming what ran instead; it never fails a job. The xFormers/Sage paths need a
CUDA device with the packages installed and are unmeasured here.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
SDP = "sdp - scaled dot product"
SDP_NO_MEM = "sdp-no-mem - scaled dot product without memory efficient attention"
XFORMERS = "xformers"
SAGE = "SageAttention"
NONE = "None"
CHOICES = (AUTOMATIC, SDP, SDP_NO_MEM, XFORMERS, SAGE, NONE)
# A1111's command-line flags -> the choice "Automatic" stands for when given
FLAGS = {"xformers": XFORMERS, "opt_sdp_attention": SDP, "opt_sdp_no_mem_attention": SDP_NO_MEM,
         "opt_split_attention": SDP, "opt_split_attention_invokeai": SDP, "opt_split_attention_v1": SDP,
         "opt_sub_quad_attention": SDP}

# diffusers' SDPA processors -> its xFormers processor of the same layout
_XFORMERS_PROCESSORS = {"AttnProcessor2_0": "XFormersAttnProcessor", "FusedAttnProcessor2_0": "XFormersAttnProcessor",
                        "JointAttnProcessor2_0": "XFormersJointAttnProcessor",
                        "FusedJointAttnProcessor2_0": "XFormersJointAttnProcessor"}


@dataclass(frozen=True)
class AttentionPlan:
    """What runs: `used` (one of CHOICES) and, when it differs from the wish, why."""

    wanted: str
    used: str
    why: str = ""


def flag_choice(flags: dict[str, bool]) -> str:
    """The choice A1111's flags name (the first given, in FLAGS order); Automatic when none."""
    return next((choice for flag, choice in FLAGS.items() if flags.get(flag)), AUTOMATIC)


def uses_dispatcher(denoiser: torch.nn.Module) -> bool:
    """Whether the denoiser's processors go through diffusers' attention dispatcher (Flux, Z-Image)."""
    processors = getattr(denoiser, "attn_processors", None)
    if processors is None:
        processors = {n: m.processor for n, m in denoiser.named_modules() if hasattr(m, "processor")}
    return any(hasattr(p, "_attention_backend") for p in processors.values())


def _installed(choice: str) -> bool:
    from diffusers.utils import is_sageattention_available, is_xformers_available

    return is_xformers_available() if choice == XFORMERS else is_sageattention_available()


def plan_attention(wanted: str, denoiser: torch.nn.Module, device: torch.device,
                   flag: str = AUTOMATIC) -> AttentionPlan:
    """Resolve the setting (and, under Automatic, the flag) to what can run on this denoiser and device."""
    choice = flag if wanted == AUTOMATIC else wanted
    if choice not in CHOICES:
        return AttentionPlan(wanted, SDP, f"unknown choice {choice!r}")
    if choice in (XFORMERS, SAGE):
        if not _installed(choice):
            return AttentionPlan(choice, SDP, f"{choice} is not installed")
        if device.type != "cuda":
            return AttentionPlan(choice, SDP, f"{choice} needs a CUDA device (this is {device.type})")
        if choice == SAGE and not uses_dispatcher(denoiser):
            return AttentionPlan(choice, SDP, f"{type(denoiser).__name__}'s attention has no SageAttention processor")
    return AttentionPlan(choice, SDP if choice == AUTOMATIC else choice)


def _sdpa_backends(used: str) -> list | None:
    from torch.nn.attention import SDPBackend

    if used == SDP_NO_MEM:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    if used == NONE:
        return [SDPBackend.MATH]
    return None  # sdp: PyTorch chooses


@contextmanager
def _xformers_processors(denoiser: torch.nn.Module) -> Iterator[None]:
    """Swap diffusers' SDPA processors for its xFormers ones for the pass; features' own processors stay."""
    from diffusers.models import attention_processor

    before = dict(denoiser.attn_processors)
    swapped = {name: getattr(attention_processor, _XFORMERS_PROCESSORS[type(p).__name__])()
               if type(p).__name__ in _XFORMERS_PROCESSORS else p for name, p in before.items()}
    denoiser.set_attn_processor(swapped)
    try:
        yield
    finally:
        denoiser.set_attn_processor(before)


@contextmanager
def attention_for_run(plan: AttentionPlan, denoiser: torch.nn.Module) -> Iterator[None]:
    """Run the body (one sampling pass) with the plan's attention."""
    if plan.used in (XFORMERS, SAGE):
        if uses_dispatcher(denoiser):
            from diffusers.models.attention_dispatch import attention_backend

            with attention_backend("xformers" if plan.used == XFORMERS else "sage"):
                yield
        else:
            with _xformers_processors(denoiser):
                yield
        return
    backends = _sdpa_backends(plan.used)
    if backends is None:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends):
        yield
