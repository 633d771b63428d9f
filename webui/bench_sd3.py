"""Bench rows for SD3 / SD 3.5: Easel's engine vs diffusers' StableDiffusion3Pipeline built from the very same
loaded modules (transformer, VAE, CLIP-L, CLIP-G, T5, tokenizers), same prompt, negative prompt, CFG and steps.

    python3 -m webui.bench --only sd3          # a tiny SD 3.5 Medium folder (random weights), CPU or GPU

Runs alternate between the two and the medians are compared (target <= 1.02, as the engine row).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch


def _pipeline_seconds(model: Any, request: Any) -> float:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=model.unet, vae=model.vae, scheduler=FlowMatchEulerDiscreteScheduler.from_config(
            {k: v for k, v in model.scheduler_config.items() if k != "prediction_type"}),
        text_encoder=model.text_encoders["text_encoder"], tokenizer=model.tokenizers["text_encoder"],
        text_encoder_2=model.text_encoders["text_encoder_2"], tokenizer_2=model.tokenizers["text_encoder_2"],
        text_encoder_3=model.text_encoders.get("text_encoder_3"), tokenizer_3=model.tokenizers.get("text_encoder_3"))
    pipe.set_progress_bar_config(disable=True)
    _sync(model)
    start = time.perf_counter()
    pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
         guidance_scale=request.cfg_scale, width=request.width, height=request.height,
         generator=torch.Generator("cpu").manual_seed(1), max_sequence_length=77)  # Easel's default T5 length
    _sync(model)
    return time.perf_counter() - start


def _sync(model: Any) -> None:
    if model.device.device.type == "cuda":
        torch.cuda.synchronize()


def sd3_rows(data: Path, device: str = "auto", steps: int = 20, side: int = 64, rounds: int = 5) -> list[tuple[str, str]]:
    """Write a tiny SD 3.5 Medium folder under `data`, then time both paths alternately."""
    from .app import AppOptions, build
    from .core.request import GenerationRequest
    from .model_manager.tiny_sd3 import write_sd3_folder

    write_sd3_folder(data / "sd3-ckpts" / "tiny-sd35-medium", "sd35-medium", seed=1)
    easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data, device=device,
                             ckpt_dirs=[data / "sd3-ckpts"]))
    try:
        easel.settings.update({"live_previews_enable": False})
        request = GenerationRequest(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry",
                                    steps=steps, cfg_scale=5.0, width=side, height=side, seed=1, sampler_name="Euler",
                                    scheduler="Automatic", checkpoint="tiny-sd35-medium", save_images=False)
        model = easel.models.get("tiny-sd35-medium")
        easel.txt2img(request)  # warm-up both paths
        _pipeline_seconds(model, request)
        ours, theirs = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            easel.txt2img(request)
            ours.append(time.perf_counter() - t0)
            theirs.append(_pipeline_seconds(model, request))
    finally:
        easel.close()
    ratio = statistics.median(ours) / statistics.median(theirs)
    return [("device", easel.device.label),
            (f"SD 3.5 Medium (tiny): Easel s/image ({side}px, {steps} steps, CFG, median of {rounds})",
             f"{statistics.median(ours):.3f}"),
            ("SD 3.5 Medium (tiny): StableDiffusion3Pipeline s/image (same modules)", f"{statistics.median(theirs):.3f}"),
            ("SD 3.5 Medium (tiny): ratio Easel / diffusers (target <= 1.02)", f"{ratio:.3f}")]
