"""The Flux rows of `python3 -m webui.bench --family flux`.

- tiny (default): a tiny Flux.1 dev folder (random weights) through Easel's engine vs diffusers'
  FluxPipeline built from the very same modules, same steps and size (median seconds, ratio);
- `--size full --device cuda`: the published transformer architecture with random weights, one
  denoiser step at 1024x1024 (4096 image tokens, 512 text tokens) through Easel's Flux adapter, in
  bf16 and with fp8 storage (diffusers' layerwise casting): s/it and peak device memory. `--memory
  medium|low` places it with the app's own Offloader (model offload; block offload, with
  `--gpu-weights MB` keeping the blocks that fit), `--weights bf16|fp8` picks one storage, `--fast`
  fuses QKV (and compiles when resident). "Flux dev fp8 in low mode within 12 GiB" is
  `--size full-flux --memory low --weights fp8`: the transformer's part of it (the text encoders run
  before it, streamed too in low mode). No files are written (a 24 GB checkpoint would be); GGUF Q8
  is not in this check (quantizing 12B weights on the fly takes longer than the check itself).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiny_rows(device: str, steps: int, rounds: int) -> list[tuple[str, str]]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from .app import AppOptions, build
    from .core.request import GenerationRequest
    from .model_manager.tiny_flux import write_flux_folder

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_flux_folder(data / "ckpts" / "tiny-flux-dev", "dev", seed=1)
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                 device=device, ckpt_dirs=[data / "ckpts"]))
        easel.settings.update({"live_previews_enable": False})
        request = dict(prompt="a lighthouse at dusk", steps=steps, width=256, height=256, seed=1,
                       sampler_name="Euler", cfg_scale=1.0, distilled_cfg_scale=3.5, checkpoint="tiny-flux-dev",
                       save_images=False)
        model = easel.models.get("tiny-flux-dev")
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
                            vae=model.vae, text_encoder=model.text_encoders["text_encoder"],
                            tokenizer=model.tokenizers["text_encoder"],
                            text_encoder_2=model.text_encoders["text_encoder_2"],
                            tokenizer_2=model.tokenizers["text_encoder_2"], transformer=model.unet)
        pipe.set_progress_bar_config(disable=True)
        dev = model.device.device

        def theirs() -> float:
            _sync(dev)
            start = time.perf_counter()
            pipe(request["prompt"], height=256, width=256, num_inference_steps=steps, guidance_scale=3.5,
                 generator=torch.Generator("cpu").manual_seed(1))
            _sync(dev)
            return time.perf_counter() - start

        def ours() -> float:
            start = time.perf_counter()
            easel.txt2img(GenerationRequest(**request))
            return time.perf_counter() - start

        ours(), theirs()  # warm-up
        mine, other = [], []
        for _ in range(rounds):
            mine.append(ours())
            other.append(theirs())
        easel.close()
    ratio = statistics.median(mine) / statistics.median(other)
    return [("Flux tiny: Easel s/image (256px, %d steps, median of %d)" % (steps, rounds),
             f"{statistics.median(mine):.3f}"),
            ("Flux tiny: FluxPipeline s/image (same modules)", f"{statistics.median(other):.3f}"),
            ("Flux ratio Easel / FluxPipeline (target <= 1.02)", f"{ratio:.3f}")]


FLUX_STORAGES = {None: ("bf16", "fp8_e4m3fn"), "bf16": ("bf16",), "fp16": ("bf16",), "fp8": ("fp8_e4m3fn",)}
MEMORY_MODES = {None: "Resident", "high": "Resident", "medium": "Model offload", "low": "Block offload"}


def full_rows(device: str, steps: int = 3, memory: str | None = None, weights: str | None = None,
              fast: bool = False, config: dict | None = None, side: int = 1024,
              gpu_weights_mb: float = 0) -> list[tuple[str, str]]:
    """The published transformer (or `config`) with random weights on `device`: s/it at `side` px and peak
    memory, per weight storage (bf16 and fp8 unless `weights` names one), placed for the memory mode
    (`memory` high/medium/low, as webui.bench's flag; low with `gpu_weights_mb` keeps the blocks that fit)
    by the same Offloader the app uses; `fast`: fused QKV projections (and torch.compile on CUDA)."""
    if device in ("auto", "cuda") and not torch.cuda.is_available():
        return [("Flux full-size check", "skipped: no CUDA device")]
    if weights == "gguf-q8":
        return [("Flux full-size check", "skipped: GGUF Q8 is not in this check (quantizing 12B random weights "
                                         "takes longer than the check)")]
    from diffusers import FluxTransformer2DModel

    from . import families
    from .model_manager.architecture import Architecture, configs_for

    dev = torch.device("cuda" if device == "auto" else device)
    adapter = families.get("flux-dev")
    config = config or configs_for(Architecture("flux-dev"))["transformer"]
    mode = MEMORY_MODES[memory]
    label = "full-size" if side == 1024 else f"{side}px"
    rows: list[tuple[str, str]] = [("Flux configuration", f"memory {mode}, fast {'on' if fast else 'off'}"
                                                         + (f", GPU weights {gpu_weights_mb:g} MB" if gpu_weights_mb
                                                            else ""))]
    for storage in FLUX_STORAGES[weights]:
        transformer = _flux_transformer(FluxTransformer2DModel, config, dev, storage)
        offloader = _place(transformer, dev, mode, gpu_weights_mb)
        if fast:
            rows.append((f"Flux dev {label} {storage}: fast mode", _make_fast(transformer, dev, mode)))
        times, peak, what = _time_steps(adapter, transformer, dev, config, side, steps)
        rows += [(f"Flux dev {label} {storage}: s/it at {side}x{side}", f"{statistics.median(times):.3f}"),
                 (f"Flux dev {label} {storage}: {what}", f"{peak:.0f}")]
        if offloader is not None and offloader.resident_blocks:
            rows.append((f"Flux dev {label} {storage}: blocks resident / streamed",
                         f"{len(offloader.resident_blocks)} / {len(offloader.streamed_blocks)}"))
        if offloader is not None:
            offloader.remove()
        del transformer, offloader
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _make_fast(transformer: torch.nn.Module, dev: torch.device, mode: str) -> str:
    """Fast mode's parts as the app applies them (model_manager/fast.py): fused QKV where diffusers can fuse
    (not fp8-stored weights), torch.compile on CUDA when resident (offload hooks would break the graph)."""
    from .model_manager.fused_qkv import can_fuse, fuse

    why_not = can_fuse(transformer)
    done = [f"fused QKV ({fuse(transformer)} projections)" if why_not is None else f"no fused QKV ({why_not})"]
    if dev.type == "cuda" and mode == "Resident":
        transformer.compile()  # in place: the first (warm-up) step compiles
        done.append("torch.compile")
    return ", ".join(done)


def _flux_transformer(cls, config: dict, dev: torch.device, storage: str) -> torch.nn.Module:
    """Random weights built on the device (fast even at 12B parameters), stored as `storage`."""
    with torch.device(dev):
        transformer = cls.from_config(config).to(torch.bfloat16).eval().requires_grad_(False)
    if storage != "bf16":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return transformer


def _place(transformer: torch.nn.Module, dev: torch.device, mode: str, gpu_weights_mb: float):
    """The app's Offloader on the transformer alone (None when resident): offload modes start in system memory."""
    if mode == "Resident":
        return None
    from .model_manager.memory import HEADROOM, Offloader

    transformer.to("cpu")
    offloader = Offloader(dev)
    resident = int(gpu_weights_mb * 2 ** 20 * HEADROOM) if mode == "Block offload" else 0
    offloader.apply(mode, {"unet": transformer}, resident_bytes=resident)
    return offloader


def _time_steps(adapter, transformer, dev: torch.device, config: dict, side: int, steps: int):
    """(seconds of each step after a warm-up, peak memory in MiB, what the peak is) of one denoiser call a step."""
    from .bench_memory import _reset_peak_rss, peak_rss_mib

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        _reset_peak_rss()
    generator = torch.Generator(dev).manual_seed(0)
    latent = side // 8
    x = torch.randn(1, config["in_channels"] // 4, latent, latent, device=dev, dtype=torch.bfloat16,
                    generator=generator)
    context = torch.randn(1, 512, config["joint_attention_dim"], device=dev, dtype=torch.bfloat16,
                          generator=generator)
    kwargs = {"pooled_projections": torch.randn(1, config["pooled_projection_dim"], device=dev,
                                                dtype=torch.bfloat16, generator=generator),
              "guidance": torch.full((1,), 3.5, device=dev)}
    times = []
    with torch.no_grad():
        for step in range(steps + 1):  # the first is a warm-up (and compiles in fast mode)
            _sync(dev)
            start = time.perf_counter()
            adapter.call_denoiser(transformer, x, torch.full((1,), 500.0, device=dev), context, kwargs)
            _sync(dev)
            if step:
                times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        return times, torch.cuda.max_memory_allocated(dev) / 2 ** 20, "peak device memory (MiB)"
    return times, peak_rss_mib(), "peak RSS (MiB)"
