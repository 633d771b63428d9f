"""Fast mode: the denoiser's cheap speed-ups, applied at placement and undone when switched off.

The denoiser is `model.unet` for every family: the UNet (SD 1.x/2.x/SDXL) or the transformer
(Flux, SD 3.5, Z-Image). Fast mode gives it:
- channels_last memory format, only where it has convolutions (the UNet; SD 3's patch
  embedding): faster cuDNN kernels on GPUs; Flux and Z-Image have none, so nothing changes.
- Fused QKV projections through diffusers' `fuse_qkv_projections()` where the class has it
  (UNet, SD 3, Flux; not Z-Image or SD 3.5, nor fp8/NF4/GGUF storage): `fused_qkv.py`, which also keeps the
  fused copy true to LoRA patches.
- `torch.compile` of the denoiser, per pass (`fast_run`): on CUDA by default, elsewhere when the
  setting `fast_compile` says Always. Compiled callables are kept per (compile mode, attention)
  and every (width, height, batch) seen is recorded on the model, so the first pass at a new
  size shows "Compiling the denoiser (first image at this size)…" as the job's progress text.
  The mode is "max-autotune-no-cudagraphs"; with the setting `fast_cuda_graphs` on a CUDA device
  it is "reduce-overhead" (CUDA graphs, static shapes) but only for passes with no offload hooks,
  no fp8/GGUF storage and no weight patches applied; CUDA graphs are unmeasured (no GPU here).
The attention kernel (A1111's setting `cross_attention_optimization`, `attention_backends.py`)
applies to every pass, fast mode or not. Token merging (ToMe) is not part of fast mode: it changes
the image, so it is its own feature with AUTOMATIC1111's settings (features/token_merging, written
from the paper; tomesd patches classes by name).
"""
from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .attention_backends import AUTOMATIC, attention_for_run, plan_attention
from .fused_qkv import can_fuse, fuse, refresh_fused, unfuse

if TYPE_CHECKING:
    from .loader import LoadedModel

log = logging.getLogger(__name__)
COMPILE_CHOICES = ("Automatic", "Always", "Never")
COMPILE_MODE_CUDA = "max-autotune-no-cudagraphs"
COMPILE_MODE_GRAPHS = "reduce-overhead"
COMPILING = "Compiling the denoiser (first image at this size)…"
# torch.compile's backend: inductor (generated kernels); "eager"/"aot_eager" only trace, to find a
# compile problem quickly (the tests use it: inductor takes minutes for even the tiny UNet on 2 CPU cores)
BACKEND_ENV = "EASEL_COMPILE_BACKEND"


def attention_processors(unet: torch.nn.Module) -> dict[str, int]:
    """How many attention layers use each processor class (e.g. {"AttnProcessor2_0": 16})."""
    counts: dict[str, int] = {}
    for processor in getattr(unet, "attn_processors", {}).values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def has_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def should_compile(device: torch.device, setting: str) -> bool:
    return setting == "Always" or (setting == "Automatic" and device.type == "cuda")


def apply_fast(model: "LoadedModel", on: bool, compile_setting: str = "Automatic") -> bool:
    """Switch fast mode on or off for the model's denoiser; True when anything changed."""
    if model.fast == on:
        return False
    denoiser = model.unet
    device = model.device.device
    if on:
        notes = []
        if has_convolutions(denoiser):
            denoiser.to(memory_format=torch.channels_last)
            notes.append("channels_last")
        why_not = can_fuse(denoiser)
        if why_not is None:
            notes.append(f"fused QKV ({fuse(denoiser)} projections)")
        else:
            notes.append(f"no fused QKV ({why_not})")
        if should_compile(device, compile_setting):
            notes.append("torch.compile (the first image of each size compiles)")
        else:
            notes.append(f"no torch.compile ({device.type}; setting fast_compile: {compile_setting})")
        processors = attention_processors(denoiser)
        log.info("fast mode for %s: attention %s, %s", model.info.name,
                 ", ".join(f"{n} x{c}" for n, c in processors.items()) or "dispatcher", ", ".join(notes))
    else:
        if has_convolutions(denoiser):
            denoiser.to(memory_format=torch.contiguous_format)
        unfuse(denoiser)
        denoiser._compiled_call_impl = None  # calls go to forward again
        model.patches.pop("fast_compiled", None)
        model.patches.pop("fast_compiled_shapes", None)
        log.info("fast mode off for %s", model.info.name)
    model.fast = on
    return True


def _weights_patched(model: "LoadedModel") -> bool:
    """Whether a weight patch (LoRA and the like) is applied now, or the weights are stored cast (fp8, nf4,
    GGUF, or --weights fp16/bf16 where the device computes in another type). `--weights fp16` on a GPU
    computing in fp16 stores nothing cast: that is the plain case CUDA graphs are for."""
    from .loader import HALF_STORAGE

    patcher = model.patches.get("lora_patcher")
    storage = model.weight_storage
    stored_cast = storage not in ("Automatic", *HALF_STORAGE) or (
        storage in HALF_STORAGE and HALF_STORAGE[storage] != model.device.dtype)
    return bool(getattr(patcher, "signature", ())) or stored_cast or any(
        hasattr(p, "quant_type") for p in model.unet.parameters())


def compile_mode(model: "LoadedModel", cuda_graphs: bool) -> str:
    """The torch.compile mode for this pass (CUDA graphs only where nothing moves or patches weights)."""
    device = model.device.device
    if device.type != "cuda":
        return "default"
    if cuda_graphs and model.memory_mode == "Resident" and not _weights_patched(model):  # offload hooks move weights
        return COMPILE_MODE_GRAPHS
    return COMPILE_MODE_CUDA


def compiled_shapes(model: "LoadedModel") -> set[tuple]:
    """(mode, attention, width, height, batch) of every pass the compiled denoiser ran at."""
    return model.patches.setdefault("fast_compiled_shapes", set())


def _compile(model: "LoadedModel", mode: str, attention: str) -> None:
    """Point the denoiser's calls at the compiled callable for (mode, attention), compiling lazily."""
    denoiser = model.unet
    compiled: dict[tuple[str, str], Any] = model.patches.setdefault("fast_compiled", {})
    key = (mode, attention)
    if key not in compiled:
        dynamic = False if mode == COMPILE_MODE_GRAPHS else None  # CUDA graphs: one graph per static shape
        backend = os.environ.get(BACKEND_ENV) or "inductor"
        options = {"mode": mode} if backend == "inductor" else {}  # modes belong to inductor
        compiled[key] = torch.compile(denoiser._call_impl, backend=backend, dynamic=dynamic, **options)
    denoiser._compiled_call_impl = compiled[key]


def _warn_once(model: "LoadedModel", message: str) -> None:
    said = model.patches.setdefault("attention_warnings", set())
    if message not in said:
        said.add(message)
        log.warning(message)


@contextmanager
def fast_run(model: "LoadedModel", size: tuple[int, int], batch: int, options: dict[str, Any], job: Any = None,
             attention_flag: str = AUTOMATIC) -> Iterator[None]:
    """One sampling pass with the attention setting and, in fast mode, fresh fused weights and compile."""
    wanted = str(options.get("cross_attention_optimization") or AUTOMATIC)
    plan = plan_attention(wanted, model.unet, model.device.device, attention_flag)
    if plan.why:
        _warn_once(model, f"cross_attention_optimization: {plan.wanted} is not available for {model.info.name} "
                          f"({plan.why}); using {plan.used} instead")
    previous_text = job.progress.text if job is not None else None
    with ExitStack() as scope:
        if model.fast:
            refresh_fused(model.unet)  # after the pass's weight patches were applied
            if should_compile(model.device.device, str(options.get("fast_compile") or "Automatic")):
                mode = compile_mode(model, bool(options.get("fast_cuda_graphs")))
                _compile(model, mode, plan.used)
                shape = (mode, plan.used, *size, batch)
                if shape not in compiled_shapes(model):
                    compiled_shapes(model).add(shape)
                    log.info("fast mode: compiling %s's denoiser for %dx%d, batch %d (%s)",
                             model.info.name, *size, batch, mode)
                    if job is not None:
                        job.report(text=COMPILING)
                        scope.callback(job.report, text=previous_text)
            else:
                model.unet._compiled_call_impl = None
        scope.enter_context(attention_for_run(plan, model.unet))
        yield
