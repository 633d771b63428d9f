"""Benchmark row for Z-Image: Easel's engine vs diffusers' ZImagePipeline built from the very same modules.

    python3 -m webui.bench_zimage                          # tiny Z-Image Turbo folder, CPU or GPU
    python3 -m webui.bench_zimage --steps 8 --side 512 --cfg 4 --rounds 5

Runs alternate between the two; the medians are compared (target <= 1.02), in wall time and in the
process's CPU time (all threads; the fair measure where other work shares the CPU). Same seed, prompt, steps,
size and guidance (Easel's CFG scale s is the pipeline's guidance_scale s - 1), so the two also give
the same image (printed as PSNR).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _pipeline(model):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    config = {k: v for k, v in model.scheduler_config.items() if k != "prediction_type"}  # Easel's own key
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    pipe = ZImagePipeline(scheduler=scheduler, vae=model.vae, text_encoder=model.text_encoders["text_encoder"],
                          tokenizer=model.tokenizers["text_encoder"], transformer=model.unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(model) -> None:
    if model.device.device.type == "cuda":
        torch.cuda.synchronize()


def zimage_rows(easel, checkpoint: str, steps: int, side: int, cfg: float, rounds: int) -> list[tuple[str, str]]:
    """(label, value) rows: Easel s/image, the pipeline's on the same modules, their ratio and PSNR."""
    from .core.request import GenerationRequest
    from .core.seeds import ImageRNG

    model = easel.models.get(checkpoint)
    pipe = _pipeline(model)
    negative = "blurry" if cfg != 1 else ""
    request = dict(prompt="a photograph of a lighthouse at dusk", negative_prompt=negative, steps=steps,
                   cfg_scale=cfg, width=side, height=side, seed=1, sampler_name="Euler", scheduler="Automatic",
                   checkpoint=checkpoint, save_images=False)
    latent = side // model.vae_scale_factor
    noise = ImageRNG((model.architecture.adapter.latent.channels, latent, latent), [1], torch.device("cpu"),
                     source=easel.settings.get("randn_source")).first()

    def theirs() -> tuple[float, float, object]:
        _sync(model)
        start, cpu = time.perf_counter(), time.process_time()
        image = pipe(request["prompt"], negative_prompt=negative or None, height=side, width=side,
                     num_inference_steps=steps, guidance_scale=cfg - 1, latents=noise.to(model.device.device)).images[0]
        _sync(model)
        return time.perf_counter() - start, time.process_time() - cpu, image

    easel.txt2img(GenerationRequest(**dict(request, steps=2)))  # warm-up both paths
    theirs()
    ours_s, theirs_s, ours_cpu, theirs_cpu = [], [], [], []
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        result = easel.txt2img(GenerationRequest(**request))
        ours_s.append(time.perf_counter() - start)
        ours_cpu.append(time.process_time() - cpu)
        seconds, cpu_seconds, image = theirs()
        theirs_s.append(seconds)
        theirs_cpu.append(cpu_seconds)
    a, b = (np.asarray(x, dtype=np.float64) for x in (result.images[0], image))
    psnr = 10 * np.log10(255 ** 2 / max(float(((a - b) ** 2).mean()), 1e-12))
    ratio = statistics.median(ours_s) / statistics.median(theirs_s)
    return [(f"Z-Image: Easel s/image ({side}px, {steps} steps, CFG {cfg:g}, median of {rounds})",
             f"{statistics.median(ours_s):.3f}"),
            ("Z-Image: ZImagePipeline s/image (same modules)", f"{statistics.median(theirs_s):.3f}"),
            ("Z-Image: ratio Easel / ZImagePipeline (target <= 1.02)", f"{ratio:.3f}"),
            # process CPU time (every thread): the fair comparison on a CPU shared with other work
            ("Z-Image: CPU s/image Easel / ZImagePipeline (ratio)", f"{statistics.median(ours_cpu):.3f} / "
             f"{statistics.median(theirs_cpu):.3f} ({statistics.median(ours_cpu) / statistics.median(theirs_cpu):.3f})"),
            ("Z-Image: PSNR Easel vs ZImagePipeline (dB)", f"{psnr:.1f}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench_zimage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--cfg", type=float, default=1.0, help="CFG scale (1: Turbo, no negative pass)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .app import AppOptions, build
    from .model_manager.tiny_zimage import write_zimage_folder

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_zimage_folder(data / "ckpts" / "tiny-zimage-turbo", seed=1)
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                 device=args.device, ckpt_dirs=[data / "ckpts"]))
        easel.settings.update({"live_previews_enable": False})
        try:
            rows = [("device", easel.device.label)]
            rows += zimage_rows(easel, "tiny-zimage-turbo", args.steps, args.side, args.cfg, args.rounds)
        finally:
            easel.close()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
