"""The Flux rows of `python3 -m webui.bench --family flux`.

- tiny (default): a tiny Flux.1 dev folder (random weights) through Easel's engine vs diffusers'
  FluxPipeline built from the very same modules, same steps and size (median seconds, ratio);
- `--size full --device cuda`: the published transformer architecture with random weights, one
  denoiser step at 1024x1024 (4096 image tokens, 512 text tokens) through Easel's Flux adapter, in
  bf16 and with fp8 storage (diffusers' layerwise casting): s/it and peak device memory. No files
  are written (a 24 GB checkpoint would be); GGUF Q8 is not in this check (quantizing 12B weights on
  the fly takes longer than the check itself).
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


def full_rows(device: str, steps: int = 3) -> list[tuple[str, str]]:
    """The published transformer with random weights on `device`: s/it at 1024x1024, bf16 and fp8 storage."""
    if device in ("auto", "cuda") and not torch.cuda.is_available():
        return [("Flux full-size check", "skipped: no CUDA device")]
    from diffusers import FluxTransformer2DModel

    from . import families
    from .model_manager.architecture import Architecture, configs_for

    dev = torch.device("cuda" if device == "auto" else device)
    adapter = families.get("flux-dev")
    config = configs_for(Architecture("flux-dev"))["transformer"]
    rows: list[tuple[str, str]] = []
    for storage in ("bf16", "fp8_e4m3fn"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.device(dev):
            transformer = FluxTransformer2DModel.from_config(config).to(torch.bfloat16).eval().requires_grad_(False)
        if storage != "bf16":
            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        generator = torch.Generator(dev).manual_seed(0)
        x = torch.randn(1, 16, 128, 128, device=dev, dtype=torch.bfloat16, generator=generator)
        context = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16, generator=generator)
        kwargs = {"pooled_projections": torch.randn(1, 768, device=dev, dtype=torch.bfloat16, generator=generator),
                  "guidance": torch.full((1,), 3.5, device=dev)}
        times = []
        with torch.no_grad():
            for step in range(steps + 1):  # the first is a warm-up
                _sync(dev)
                start = time.perf_counter()
                adapter.call_denoiser(transformer, x, torch.full((1,), 500.0, device=dev), context, kwargs)
                _sync(dev)
                if step:
                    times.append(time.perf_counter() - start)
        rows += [(f"Flux dev full-size {storage}: s/it at 1024x1024", f"{statistics.median(times):.3f}"),
                 (f"Flux dev full-size {storage}: peak device memory (MiB)",
                  f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f}")]
        del transformer
    return rows
