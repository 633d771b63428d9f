"""Benchmark rows for memory modes and fast mode, side by side in one run (used by webui.bench).

    python3 -m webui.bench --only memory        # each memory mode, plain and fast: it/s and peak memory
    python3 -m webui.bench --gpu-suite          # the GPU table (full-size SD 1.5 at 512, SDXL at 1024)

Peak memory: on CUDA `torch.cuda.max_memory_allocated` (reset before each row); on the CPU the
process's peak resident set (Linux's VmHWM, reset through /proc/self/clear_refs before each row;
where that cannot be reset, the peak since start). Python's tracemalloc is not used: it does not
see torch's tensor allocations.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from .core.request import GenerationRequest
from .model_manager.memory import BLOCK_OFFLOAD, MODEL_OFFLOAD, RESIDENT

MODES = (RESIDENT, MODEL_OFFLOAD, BLOCK_OFFLOAD)
Rows = list[tuple[str, str]]


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM (the peak RSS) to the current RSS
        return True
    except OSError:
        return False


def status_mib(field: str) -> float | None:
    """A memory field of this process's /proc/self/status (VmRSS, VmHWM, ...) in MiB; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    peak = status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def psnr(a, b) -> float:
    import numpy as np

    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def measure_mode(easel, request: dict, mode: str, fast: bool, rounds: int) -> tuple[float, float, str, object]:
    """(it/s, peak MiB, what the peak is, the image) for one mode: a warm-up job, then the median of `rounds` jobs."""
    easel.settings.update({"memory_mode": mode, "fast_mode": fast})
    easel.txt2img(GenerationRequest(**dict(request, steps=2)))  # placement (and compilation) happen here
    cuda = easel.device.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resettable = _reset_peak_rss()
    rates = []
    for _ in range(rounds):
        result = easel.txt2img(GenerationRequest(**request))
        rates.append(request["steps"] / max(result.timings["sample"], 1e-9))
    if cuda:
        peak, what = torch.cuda.max_memory_allocated() / 2 ** 20, "peak CUDA MiB"
    else:
        peak, what = peak_rss_mib(), "peak RSS MiB" + ("" if resettable else " since start")
    return statistics.median(rates), peak, what, result.images[0]


def memory_rows(easel, request: dict, rounds: int = 3, modes=MODES, fast_modes=(False, True)) -> Rows:
    """Every memory mode, plain and fast, in this run: it/s (CFG on, batch 1), peak memory, and the
    image's PSNR against the first row's (inf: identical)."""
    rows: Rows = []
    first = None
    for mode in modes:
        for fast in fast_modes:
            rate, peak, what, image = measure_mode(easel, request, mode, fast, rounds)
            first = first if first is not None else image
            rows.append((f"{mode}{', fast' if fast else ''}: it/s / {what} / PSNR dB",
                         f"{rate:.2f} / {peak:.0f} / {psnr(first, image):.1f}"))
    easel.settings.update({"memory_mode": "Automatic", "fast_mode": False})
    return rows


GPU_SUITE_MODELS = (("sd1", 512), ("sdxl", 1024))


def gpu_suite(build_easel, write_full_size, tmp: Path, steps: int = 20, rounds: int = 2, batch_rows=None,
              flux_rows=None, models=GPU_SUITE_MODELS, need_cuda: bool = True) -> Rows:
    """Full-size SD 1.5 at 512 and SDXL at 1024 (random weights): each memory mode plain, and resident fast;
    then, in the default (Automatic) mode, it/s at batch 1 and 8 next to bare diffusers on the same modules
    (`batch_rows(easel, model, request)`), block offload within a 2 GiB GPU-weights budget, and the Flux
    check's low-mode fp8 rows (`flux_rows()`).

    Fast rows only where compiling pays (resident); offload hooks break the compiled graph at
    every move. Skipped, with a line saying so, without CUDA (`need_cuda` False: the tests run the same
    table on the CPU with tiny `models`).
    """
    if need_cuda and not torch.cuda.is_available():
        return [("gpu-suite", "skipped: no CUDA device on this machine")]
    rows: Rows = [("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")]
    for family, side in models:
        folder = tmp / f"gpu-{family}"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_full_size(folder / f"{family}.safetensors", family)
        easel = build_easel(folder, tmp / f"data-{family}")
        try:
            request = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", steps=steps,
                           cfg_scale=7.0, width=side, height=side, seed=1, sampler_name="Euler", scheduler="Uniform",
                           checkpoint=f"{family}.safetensors", save_images=False)
            model = easel.models.get(request["checkpoint"])
            rows.append((f"{family} {side}px: prepare + load (s)", f"{time.perf_counter() - t0:.1f}"))
            rows += [(f"{family} {side}px {k}", v) for k, v in
                     memory_rows(easel, request, rounds, MODES, (False,))
                     + memory_rows(easel, request, rounds, (RESIDENT,), (True,))]
            if batch_rows is not None:  # the default mode against bare diffusers (target >= 1.0x its it/s)
                rows += [(f"{family} {side}px Automatic {k}", v) for k, v in batch_rows(easel, model, request)]
            easel.settings.update({"gpu_weights_mb": 2048})
            rows += [(f"{family} {side}px GPU weights 2048 MB {k}", v)
                     for k, v in memory_rows(easel, request, rounds, (BLOCK_OFFLOAD,), (False,))]
            easel.settings.update({"gpu_weights_mb": 0})
        finally:
            easel.close()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if flux_rows is not None:
        rows += flux_rows()
    return rows


def fused_copy_mib(family: str, bytes_per_weight: int = 2) -> tuple[float, float]:
    """(MiB the fused QKV copy adds, MiB of the whole denoiser) for a full-size family, in fp16, built
    on the meta device (no memory, no time): fast mode's memory cost, measured from the real layout."""
    from diffusers import UNet2DConditionModel

    from .model_manager.architecture import Architecture, configs_for
    from .model_manager.fused_qkv import fuse, fused_layers

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs_for(Architecture(family))["unet"])
    whole = sum(p.numel() for p in unet.parameters())
    fuse(unet)
    fused = sum(p.numel() for module, name in fused_layers(unet) for p in getattr(module, name).parameters())
    return fused * bytes_per_weight / 2 ** 20, whole * bytes_per_weight / 2 ** 20


def fast_parts_rows(easel, request: dict, rounds: int = 5) -> Rows:
    """Fast mode without torch.compile (fused QKV + channels_last) against plain, alternating job by job
    on one checkpoint so both see the same machine load; the ratio is fast / plain it/s. With
    fast_compile Automatic this is what fast mode is on a CPU."""
    from .features.lora_writer import write_lora
    from .model_manager.fused_qkv import fused_layers, refresh_fused

    easel.settings.update({"memory_mode": RESIDENT, "fast_compile": "Automatic"})
    rates: dict[bool, list[float]] = {False: [], True: []}
    images: dict[bool, object] = {}
    for fast in (False, True):  # warm-up: placement, fusing
        easel.settings.update({"fast_mode": fast})
        easel.txt2img(GenerationRequest(**dict(request, steps=2)))
    for _ in range(rounds):
        for fast in (False, True):
            easel.settings.update({"fast_mode": fast})
            result = easel.txt2img(GenerationRequest(**request))
            rates[fast].append(request["steps"] / max(result.timings["sample"], 1e-9))
            images[fast] = result.images[0]
    model = easel.models.get(request["checkpoint"])
    fused_bytes = sum(p.numel() * p.element_size() for m, n in fused_layers(model.unet)
                      for p in getattr(m, n).parameters())
    plain, fast = statistics.median(rates[False]), statistics.median(rates[True])
    rows: Rows = [("fused QKV + channels_last vs plain (CPU, no compile): it/s plain / fast / ratio / PSNR dB",
                   f"{plain:.2f} / {fast:.2f} / {fast / plain:.3f} / {psnr(images[False], images[True]):.1f}"),
                  ("fused QKV copy of this checkpoint (MiB)", f"{fused_bytes / 2 ** 20:.2f}")]
    # a LoRA change in fast mode: the patch, then the copy of the patched q/k/v rows into the fused layers
    write_lora(easel.paths.model_dir("lora") / "bench_qkv.safetensors", model, seed=1, alpha=4.0, text_encoder=False,
               match=("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_k", "attn2.to_v"))
    lora = dict(request, prompt=request["prompt"] + " <lora:bench_qkv:1>")
    for fast in (False, True):
        easel.settings.update({"fast_mode": fast})
        images[fast] = easel.txt2img(GenerationRequest(**lora)).images[0]
    started = time.perf_counter()
    layers, _ = model.unet.__dict__["_easel_fused_versions"]
    model.unet.__dict__["_easel_fused_versions"] = (layers, {})  # every fused projection stale, as after a patch
    copied = refresh_fused(model.unet)
    rows += [("LoRA image fast vs plain (PSNR dB)", f"{psnr(images[False], images[True]):.1f}"),
             (f"re-copying {copied} fused projections after a patch (ms)",
              f"{(time.perf_counter() - started) * 1e3:.2f}")]
    for family in ("sd1", "sdxl"):
        extra, whole = fused_copy_mib(family)
        rows.append((f"fused QKV copy, full {family} UNet fp16 (MiB / % of the UNet)",
                     f"{extra:.0f} / {100 * extra / whole:.1f}"))
    easel.settings.update({"memory_mode": "Automatic", "fast_mode": False})
    return rows
