"""Benchmark: numbers measured side by side in one run, printed as a table.

    python3 -m webui.bench                       # tiny model, CPU or GPU, ~1 minute
    python3 -m webui.bench --size full-sd1       # real-size SD 1.5 architecture, random weights (GPU)
    python3 -m webui.bench --size full-sdxl --memory low --weights fp8 --fast   # one configuration's rows
    python3 -m webui.bench --size full-sdxl --only weights   # fp16 / fp8 / GGUF Q8_0 storage, a process each
    python3 -m webui.bench --size full-flux      # the published Flux dev transformer: s/it, peak memory (CUDA)
    python3 -m webui.bench --size full-flux --memory low --weights fp8   # the "Flux fp8 in 12 GiB" check
    python3 -m webui.bench --only startup        # start-up next to a bare Gradio app only
    python3 -m webui.bench --only engine         # Easel vs bare diffusers (the engine's overhead) only
    python3 -m webui.bench --only sd3            # SD 3.5 (tiny) vs StableDiffusion3Pipeline on the same modules
    python3 -m webui.bench --only memory         # each memory mode, plain and fast: it/s, peak memory; fused QKV +
                                                 # channels_last vs plain side by side (bench_memory)
    python3 -m webui.bench --gpu-suite           # full-size SD 1.5 / SDXL (every mode, fast, batch 1 and 8 vs
                                                 # bare diffusers) and Flux fp8 low mode on CUDA; skips without one
    python3 -m webui.bench --family flux         # tiny Flux dev: Easel vs FluxPipeline on the same modules
    python3 -m webui.bench --family flux --size full --device cuda   # real Flux transformer: s/it, peak memory

Measures
- seconds per image through Easel's engine vs the same settings through a bare diffusers
  pipeline built from the very same modules (ratio; target <= 1.02 at 20 steps). Runs
  alternate between the two, and the median of each is compared;
- time from starting the server process to its page answering HTTP, next to a bare Gradio app
  measured the same way in the same run (ratio; goal <= 1.1), then to the real UI answering and
  to the selected checkpoint being loaded (`--only startup` measures just this);
- cold load time of a checkpoint and the time of a cached switch back to it;
- it/s with CFG on at batch 1 and batch 8, next to bare diffusers at both (same modules);
- peak resident memory of this process, and peak CUDA memory on a GPU.

`--memory high|medium|low` (Resident / Model offload / Block offload), `--weights
fp16|bf16|fp8|gguf-q8` (gguf-q8: the checkpoint is also written as GGUF Q8_0 and that file is
benchmarked) and `--fast` choose the configuration every row runs in; the bare diffusers
pipeline always gets the very modules Easel loaded, so the ratio is the engine's alone.
On the CPU, fp16/bf16 name the weights' storage (computing stays fp32; see bench_weights.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from .app import AppOptions, build
from .core.request import GenerationRequest
from .model_manager.architecture import Architecture
from .model_manager.memory import MemoryFlags
from .model_manager.tiny import write_single_file


def _write_full_size(path: Path, family: str) -> Path:
    """A random-weight checkpoint with the published architecture's sizes (fp16 on disk), written one
    tensor at a time (bench_weights.py): the whole model is never in memory."""
    from .bench_weights import checkpoint_shapes, write_random_safetensors

    return write_random_safetensors(path, checkpoint_shapes(family))


def _write_gguf_copy(source: Path, family: str, tiny: bool) -> Path:
    """The benchmark's checkpoint as GGUF Q8_0 (conv kernels too), beside it, with the sidecar it has."""
    target = source.with_name(source.stem + "-Q8_0.gguf")
    if tiny:
        from safetensors.torch import load_file

        from .model_manager.gguf import write_gguf_checkpoint

        write_gguf_checkpoint(target, load_file(str(source)), "Q8_0", family, convs=True)
        sidecar = source.with_suffix(".json")
        if sidecar.is_file():
            target.with_suffix(".json").write_text(sidecar.read_text())
    else:
        from .bench_weights import checkpoint_shapes, write_random_gguf

        write_random_gguf(target, checkpoint_shapes(family))
    return target


MEMORY_FLAG = {"high": "Resident", "medium": "Model offload", "low": "Block offload"}


def _batch_rows(easel, model, request: dict, batch: int) -> list[tuple[str, str]]:
    """it/s with CFG on at `batch` images per step: Easel next to bare diffusers on the same modules."""
    settings = dict(request, batch_size=batch)
    result = easel.txt2img(GenerationRequest(**settings))
    ours = request["steps"] / max(result.timings["sample"], 1e-9)
    theirs = request["steps"] / _bare_diffusers_seconds(model, GenerationRequest(**settings), latents_only=True)
    return [(f"batch {batch}: it/s Easel / bare diffusers (ratio, CFG {request['cfg_scale']:g})",
             f"{ours:.3f} / {theirs:.3f} ({ours / theirs:.3f})")]


def _peak_rows(easel) -> list[tuple[str, str]]:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = [("peak RSS of this process (MiB)", f"{peak_kb / 1024:.0f}")]
    if torch.cuda.is_available() and easel.device.device.type == "cuda":
        rows.append(("peak CUDA memory (MiB)", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"))
    return rows


def _bare_diffusers_seconds(model, request: GenerationRequest, latents_only: bool = False) -> float:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    config = dict(model.scheduler_config, timestep_spacing="linspace")
    scheduler = EulerDiscreteScheduler.from_config(config)
    if model.architecture.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoders["text_encoder"],
                                         text_encoder_2=model.text_encoders["text_encoder_2"],
                                         tokenizer=model.tokenizers["text_encoder"],
                                         tokenizer_2=model.tokenizers["text_encoder_2"], unet=model.unet,
                                         scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders["text_encoder"],
                                       tokenizer=model.tokenizers["text_encoder"], unet=model.unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    _sync(model)
    start = time.perf_counter()
    pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
         guidance_scale=request.cfg_scale, width=request.width, height=request.height,
         num_images_per_prompt=request.batch_size, output_type="latent" if latents_only else "pil",
         generator=torch.Generator("cpu").manual_seed(1))
    _sync(model)
    return time.perf_counter() - start


def _sync(model) -> None:
    if model.device.device.type == "cuda":
        torch.cuda.synchronize()


# the smallest Gradio page served the way Easel serves its own (FastAPI + uvicorn), for a fair start-up ratio
BARE_GRADIO = """
import sys
import gradio as gr
import uvicorn
from fastapi import FastAPI
with gr.Blocks() as demo:
    gr.Textbox(label="Prompt")
app = gr.mount_gradio_app(FastAPI(), demo, path="/")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str]) -> subprocess.Popen:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def _poll(start: float, check, limit: float = 180) -> float:
    """Seconds from `start` until `check()` is true (nan after `limit` s); HTTP errors count as not yet."""
    while time.perf_counter() - start < limit:
        try:
            if check():
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("nan")


def _bare_gradio_seconds() -> float:
    """Process start until the bare Gradio app's page answers 200."""
    port = _free_port()
    start = time.perf_counter()
    proc = _start([sys.executable, "-c", BARE_GRADIO, str(port)])
    try:
        return _poll(start, lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200)
    finally:
        _stop(proc)


def _easel_startup_seconds(data: Path, ckpt_dir: Path, device: str) -> tuple[float, float, float]:
    """Process start until (Easel's page answers 200, the real UI answers, the selected checkpoint is loaded).

    The page that answers first is the starting page (webui/starting_page.py), which turns into the
    UI by itself; `/easel/v1/startup` says when the UI and the engine are ready."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = _start([sys.executable, "-m", "webui.cli", "--port", str(port), "--device", device,
                   "--models-dir", str(data / "srv-models"), "--data-dir", str(data / "srv-data"),
                   "--outputs-dir", str(data / "srv-out"), "--ckpt-dir", str(ckpt_dir)])
    try:
        page = _poll(start, lambda: httpx.get(url + "/", timeout=1).status_code == 200)
        ui = _poll(start, lambda: httpx.get(url + "/easel/v1/startup", timeout=1).json()["ui"])
        engine = _poll(start, lambda: httpx.get(url + "/easel/v1/startup", timeout=1).json()["engine"])
        return page, ui, engine
    finally:
        _stop(proc)


def _startup_rows(data: Path, ckpt_dir: Path, device: str, runs: int = 3) -> list[tuple[str, str]]:
    """Easel's start-up next to a bare Gradio app's, alternating `runs` runs each (goal: ratio <= 1.1)."""
    ours, bare = [], []
    for _ in range(runs):
        bare.append(_bare_gradio_seconds())
        ours.append(_easel_startup_seconds(data, ckpt_dir, device))
    page, ui, engine = (statistics.median(run[i] for run in ours) for i in range(3))
    bare_s = statistics.median(bare)
    return [(f"bare Gradio app: process start -> page answers (s, median of {runs})", f"{bare_s:.2f}"),
            ("Easel: process start -> page answers (s)", f"{page:.2f}"),
            ("ratio Easel / bare Gradio (goal <= 1.1)", f"{page / bare_s:.2f}"),
            ("Easel: -> the real UI answers (s, ratio)", f"{ui:.2f} ({ui / bare_s:.2f}x)"),
            ("Easel: -> the checkpoint is loaded (s)", f"{engine:.2f}")]


def _lora_rows(easel, model, data: Path, request: dict) -> list[tuple[str, str]]:
    """LoRA apply cost (first / cached) and Composite vs Merge per-step cost, side by side."""
    from .features.lora import LoraPatcher, LoraSpec
    from .features.lora_writer import write_lora

    folder = easel.paths.model_dir("lora")
    for i in range(3):
        write_lora(folder / f"bench{i}.safetensors", model, rank=16, seed=i, alpha=8.0)
    loras = [easel.loras.load(f"bench{i}") for i in range(3)]
    patcher = LoraPatcher.of(model)
    rows = []
    for count in (1, 3):
        patcher.set([])
        _sync(model)
        first = patcher.set([LoraSpec(lora) for lora in loras[:count]]).seconds
        t0 = time.perf_counter()
        patcher.set([LoraSpec(lora) for lora in loras[:count]])
        again = time.perf_counter() - t0
        rows.append((f"apply {count} LoRA(s): first / same set again (s)", f"{first:.4f} / {again:.6f}"))
    patcher.set([])
    per_step = {}
    tags = " <lora:bench0:1> <lora:bench1:1>"
    for mode in ("Merge", "Composite"):
        easel.txt2img(GenerationRequest(**dict(request, prompt=request["prompt"] + tags, steps=2,
                                               lora_composition=mode)))
        result = easel.txt2img(GenerationRequest(**dict(request, prompt=request["prompt"] + tags,
                                                        lora_composition=mode)))
        per_step[mode] = result.timings["sample"] / request["steps"]
    rows.append(("2 LoRAs, s/step Merge / Composite (ratio)",
                 f"{per_step['Merge']:.4f} / {per_step['Composite']:.4f} ({per_step['Composite'] / per_step['Merge']:.2f}x)"))
    return rows


def _sampler_rows(easel, request: dict) -> list[tuple[str, str]]:
    """Seconds per step of every sampler, relative to Euler, measured in this run."""
    from .core import samplers

    per_step = {}
    for name in samplers.sampler_names():
        settings = dict(request, sampler_name=name, scheduler="Automatic", steps=8)
        easel.txt2img(GenerationRequest(**dict(settings, steps=2)))  # warm-up (scheduler imports)
        result = easel.txt2img(GenerationRequest(**settings))
        per_step[name] = result.timings["sample"] / 8
    base = per_step["Euler"]
    return [(f"sampler {name}: s/step (x Euler)", f"{value:.4f} ({value / base:.2f}x)")
            for name, value in per_step.items()]


def _sde_noise_rows(easel, request: dict) -> list[tuple[str, str]]:
    """The Brownian tree's cost per step against today's per-step draws: whole SDE runs, and the noise alone."""
    from .core import samplers
    from .core.brownian import BrownianNoise
    from .core.schedules import SCHEDULES, DiscreteSchedule
    from .core.seeds import ImageRNG

    per_step = {}
    for mode in samplers.SDE_NOISE_CHOICES:
        settings = dict(request, sampler_name="DPM++ 2M SDE", scheduler="Automatic", steps=8,
                        override_settings={"sde_noise": mode})
        easel.txt2img(GenerationRequest(**dict(settings, steps=2)))  # warm-up
        per_step[mode] = statistics.median(easel.txt2img(GenerationRequest(**settings)).timings["sample"] / 8
                                           for _ in range(3))
    tree, plain = per_step[samplers.SDE_NOISE_BROWNIAN], per_step[samplers.SDE_NOISE_PER_STEP]
    shape = (4, request["height"] // 8, request["width"] // 8)
    device = easel.device.device
    sd = DiscreteSchedule.from_config({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                       "beta_schedule": "scaled_linear"})
    schedule = [float(s) for s in SCHEDULES["Exponential"][1](sd, 20)]
    rng = ImageRNG(shape, [1], device)
    rng.first()
    t0 = time.perf_counter()
    noise = BrownianNoise.for_rng(rng, schedule)
    for a, b in zip(schedule[:-2], schedule[1:-1]):
        noise.between(a, b)
    _sync_device(device)
    tree_noise = (time.perf_counter() - t0) / (len(schedule) - 2)
    t0 = time.perf_counter()
    for _ in schedule[:-2]:
        rng.next()
    _sync_device(device)
    draw_noise = (time.perf_counter() - t0) / (len(schedule) - 2)
    return [("DPM++ 2M SDE s/step: Brownian tree / per-step noise (ratio)",
             f"{tree:.4f} / {plain:.4f} ({tree / plain:.2f}x)"),
            (f"SDE noise alone, ms/step for one {shape[1] * 8}px image: Brownian tree / per-step draw",
             f"{tree_noise * 1000:.1f} / {draw_noise * 1000:.2f}")]


def _sync_device(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _control_rows(easel, model, request: dict) -> list[tuple[str, str]]:
    """One ControlNet unit: Easel vs diffusers' ControlNet pipeline (same modules); IP-Adapter overhead."""
    import numpy as np
    from PIL import Image

    from .features.controlnet.models import write_controlnet
    from .features.ip_adapter import write_test_adapter, write_test_encoder

    write_controlnet(easel.paths.model_dir("controlnet") / "bench_cn.safetensors", model.unet, seed=3)
    side = request["width"]
    hint = np.zeros((side, side, 3), np.uint8)
    hint[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
    unit = {"module": "none", "model": "bench_cn", "image": Image.fromarray(hint), "resize_mode": "Just Resize"}
    controlled = dict(request, alwayson_scripts={"controlnet": {"args": [unit]}})
    easel.txt2img(GenerationRequest(**dict(controlled, steps=2)))  # warm-up, loads the ControlNet
    ours = statistics.median(easel.txt2img(GenerationRequest(**controlled)).timings["sample"] for _ in range(3))
    plain = statistics.median(easel.txt2img(GenerationRequest(**request)).timings["sample"] for _ in range(3))
    theirs = statistics.median(_bare_controlnet_seconds(model, easel.controlnets.load("bench_cn", model),
                                                        Image.fromarray(hint), GenerationRequest(**request))
                               for _ in range(3))
    rows = [("1 ControlNet: Easel sampling s / diffusers pipeline s (ratio)",
             f"{ours:.3f} / {theirs:.3f} ({ours / theirs:.3f})"),
            ("1 ControlNet: cost vs no unit", f"{ours / plain:.2f}x")]
    width = 1280 if model.architecture.is_sdxl else 1024
    write_test_adapter(easel.paths.model_dir("ipadapter") / "bench_ip.safetensors", model.unet, width, seed=4)
    write_test_encoder(easel.paths.model_dir("clip_vision") / "bench_vit.safetensors", projection_dim=width)
    ip = dict(request, alwayson_scripts={"controlnet": {"args": [
        {"module": "ip-adapter_clip_h", "model": "bench_ip", "image": Image.fromarray(hint)}]}})
    easel.txt2img(GenerationRequest(**dict(ip, steps=2)))
    with_ip = statistics.median(easel.txt2img(GenerationRequest(**ip)).timings["sample"] for _ in range(3))
    rows.append(("1 IP-Adapter: cost vs no unit", f"{with_ip / plain:.2f}x"))
    return rows


def _bare_controlnet_seconds(model, controlnet, hint, request: GenerationRequest) -> float:
    from diffusers import (EulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                           StableDiffusionXLControlNetPipeline)

    scheduler = EulerDiscreteScheduler.from_config(dict(model.scheduler_config, timestep_spacing="linspace"))
    parts = dict(vae=model.vae, text_encoder=model.text_encoders["text_encoder"], unet=model.unet,
                 tokenizer=model.tokenizers["text_encoder"], scheduler=scheduler, controlnet=controlnet)
    if model.architecture.is_sdxl:
        pipe = StableDiffusionXLControlNetPipeline(text_encoder_2=model.text_encoders["text_encoder_2"],
                                                   tokenizer_2=model.tokenizers["text_encoder_2"], **parts)
    else:
        pipe = StableDiffusionControlNetPipeline(safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    pipe(request.prompt, image=hint, negative_prompt=request.negative_prompt, num_inference_steps=2,
         guidance_scale=request.cfg_scale, width=request.width, height=request.height)  # warm-up
    _sync(model)
    start = time.perf_counter()
    # latents out, no VAE decode, as Easel's "sample" timing (prompt encoding, a few ms, stays in)
    pipe(request.prompt, image=hint, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
         guidance_scale=request.cfg_scale, width=request.width, height=request.height, output_type="latent",
         generator=torch.Generator("cpu").manual_seed(1))
    _sync(model)
    return time.perf_counter() - start


def gpu_suite_rows(tmp: Path, steps: int, batch: int, device: str = "cuda", models=None, need_cuda: bool = True,
                   flux: tuple[dict | None, int] = (None, 1024), write=None) -> list[tuple[str, str]]:
    """`--gpu-suite`: bench_memory.gpu_suite with this module's batch rows (Easel vs bare diffusers) and the
    Flux check in low mode with fp8. The tests run it on the CPU with tiny `models`, `flux` config and `write`."""
    from .bench_flux import full_rows
    from .bench_memory import GPU_SUITE_MODELS, gpu_suite

    def build_easel(ckpts: Path, data: Path):
        return build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                device=device, ckpt_dirs=[ckpts]))

    def batch_rows(easel, model, request: dict) -> list[tuple[str, str]]:
        return _batch_rows(easel, model, request, 1) + _batch_rows(easel, model, request, batch)

    def flux_rows() -> list[tuple[str, str]]:  # the "Flux dev fp8, low mode, within 12 GiB" target
        return full_rows(device, steps=2, memory="low", weights="fp8", config=flux[0], side=flux[1])

    return gpu_suite(build_easel, write or _write_full_size, tmp, steps=steps, batch_rows=batch_rows,
                     flux_rows=flux_rows, models=models or GPU_SUITE_MODELS, need_cuda=need_cuda)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "full-sd1", "full-sdxl", "full-flux", "full"),
                        help="full-*: the published architecture with random weights (full: with --family flux)")
    parser.add_argument("--memory", choices=tuple(MEMORY_FLAG),
                        help="memory mode of every row: high = Resident, medium = Model offload, low = Block offload")
    parser.add_argument("--weights", choices=("fp16", "bf16", "fp8", "gguf-q8"),
                        help="weight storage of every row (gguf-q8: the checkpoint written as GGUF Q8_0); "
                             "with --only weights, the rows to set beside fp16 (default: fp8 and gguf-q8)")
    parser.add_argument("--fast", action="store_true", help="fast mode on (model_manager/fast.py)")
    parser.add_argument("--gpu-weights", type=float, default=0, metavar="MB",
                        help="GPU weights budget of every row (block offload keeps the blocks that fit)")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch of the it/s rows (default 8)")
    parser.add_argument("--family", choices=("flux",), help="the rows of one family only (bench_flux.py)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; --only weights: 2)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default 512, 1024 for SDXL)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("startup", "engine", "memory", "sd3", "tome", "weights"),
                        help="measure only this part (start-up: ~1 minute; engine: Easel vs bare diffusers and loads)")
    parser.add_argument("--startup-runs", type=int, default=3, help="start-ups of each app, alternating")
    parser.add_argument("--gpu-suite", action="store_true",
                        help="the GPU table: full-size SD 1.5 at 512 and SDXL at 1024, every memory mode and fast "
                             "mode (prints that it skipped without CUDA)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.family == "flux" or args.size == "full-flux":
        args.steps = args.steps or 20
        from .bench_flux import full_rows, tiny_rows

        _print(full_rows(args.device, memory=args.memory, weights=args.weights, fast=args.fast,
                         gpu_weights_mb=args.gpu_weights) if args.size in ("full", "full-flux")
               else tiny_rows(args.device, args.steps, args.rounds))
        return 0
    if args.only == "weights":  # fp16 / fp8 / GGUF Q8_0 storage of a full-size model, one process per row
        from .bench_weights import weight_rows

        family = "sd1" if args.size == "full-sd1" else "sdxl"
        device = "cpu" if args.device == "auto" and not torch.cuda.is_available() else args.device
        device = "cuda" if device == "auto" else device
        choices = (args.weights,) if args.weights else ("fp8", "gguf-q8")
        _print(weight_rows(family, choices, device, args.resolution or 64, args.steps or 2, memory_modes=True))
        return 0
    args.steps = args.steps or 20
    if args.gpu_suite:
        with tempfile.TemporaryDirectory() as tmp:
            _print(gpu_suite_rows(Path(tmp), args.steps, args.batch))
        return 0
    if args.only == "tome":  # token merging at ratio 0, 0.3, 0.5 side by side (bench_tome.py)
        from .bench_tome import main as tome_main

        _print(tome_main(args.size, args.device, args.steps, args.resolution, args.rounds))
        return 0
    if args.only == "sd3":  # Easel vs StableDiffusion3Pipeline on the same modules (bench_sd3.py)
        from .bench_sd3 import sd3_rows

        with tempfile.TemporaryDirectory() as tmp:
            _print(sd3_rows(Path(tmp), args.device, args.steps, args.resolution or 64, args.rounds))
        return 0
    if args.only == "startup":
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            (data / "ckpts").mkdir()
            write_single_file(data / "ckpts" / "a.safetensors", Architecture("sd1"), seed=1)
            _print(_startup_rows(data, data / "ckpts", args.device, args.startup_runs))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        ckpts = data / "ckpts"
        ckpts.mkdir()
        family = "sdxl" if args.size == "full-sdxl" else "sd1"
        t0 = time.perf_counter()
        if args.size == "tiny":
            write_single_file(ckpts / "a.safetensors", Architecture("sd1"), seed=1)
            write_single_file(ckpts / "b.safetensors", Architecture("sd1"), seed=2)
        else:
            _write_full_size(ckpts / "a.safetensors", family)
        names = ["a.safetensors", "b.safetensors"]
        if args.weights == "gguf-q8":  # the GGUF copies are what the rows load
            names = [_write_gguf_copy(ckpts / "a.safetensors", family, args.size == "tiny").name]
            if args.size == "tiny":
                names.append(_write_gguf_copy(ckpts / "b.safetensors", family, True).name)
        if len(names) == 1:  # full size: the same file under a second name for the cached switch
            source = ckpts / names[0]
            names.append("b" + source.suffix)
            os.link(source, ckpts / names[1])
            (ckpts / names[1]).touch()
            if source.with_suffix(".json").is_file():
                os.link(source.with_suffix(".json"), (ckpts / names[1]).with_suffix(".json"))
        prepare = time.perf_counter() - t0
        weights = "auto" if args.weights in (None, "gguf-q8") else args.weights
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                 device=args.device, ckpt_dirs=[ckpts], weights=weights, fast=args.fast,
                                 memory=MemoryFlags(gpu_weights_mb=args.gpu_weights)))
        easel.settings.update({"sd_checkpoints_limit": 2, "live_previews_enable": False})
        if args.memory:
            easel.settings.update({"memory_mode": MEMORY_FLAG[args.memory]})
        rows: list[tuple[str, str]] = [("device", easel.device.label), ("model", args.size),
                                       ("configuration", f"memory {args.memory or 'automatic'}, weights "
                                                         f"{args.weights or 'auto'}, fast {'on' if args.fast else 'off'}"
                                                         + (f", GPU weights {args.gpu_weights:g} MB"
                                                            if args.gpu_weights else "")),
                                       ("prepare checkpoints (s)", f"{prepare:.2f}")]
        side = args.resolution or (1024 if family == "sdxl" else 512)
        request = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry",
                       steps=args.steps, cfg_scale=7.0, width=side, height=side, seed=1, sampler_name="Euler",
                       scheduler="Uniform", checkpoint=names[0], save_images=False)
        if args.only == "memory":  # one checkpoint, every memory mode plain and fast, side by side
            from .bench_memory import fast_parts_rows, memory_rows

            rows += memory_rows(easel, dict(request, width=side, height=side), rounds=args.rounds)
            rows += fast_parts_rows(easel, dict(request, width=side, height=side), rounds=args.rounds)
            easel.close()
            _print(rows)
            return 0
        t0 = time.perf_counter()
        model = easel.models.get(names[0])
        cold = time.perf_counter() - t0
        easel.models.get(names[1])
        t0 = time.perf_counter()
        model = easel.models.get(names[0])
        cached = time.perf_counter() - t0
        rows += [("cold load of a checkpoint (s)", f"{cold:.3f}"), ("cached switch back (s)", f"{cached:.4f}"),
                 ("load notes", "; ".join(model.notes[-2:]) or "-")]

        easel.txt2img(GenerationRequest(**dict(request, steps=2)))  # warm-up both paths
        _bare_diffusers_seconds(model, GenerationRequest(**dict(request, steps=2)))
        ours, theirs, parts = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            result = easel.txt2img(GenerationRequest(**request))
            ours.append(time.perf_counter() - t0)
            parts.append(result.timings)
            theirs.append(_bare_diffusers_seconds(model, GenerationRequest(**request)))
        t0 = time.perf_counter()
        easel.txt2img(GenerationRequest(**dict(request, save_images=True)))
        with_save = time.perf_counter() - t0
        ratio = statistics.median(ours) / statistics.median(theirs)
        rows += [(f"Easel s/image ({side}px, {args.steps} steps, median of {args.rounds})",
                  f"{statistics.median(ours):.3f}"),
                 ("batch 1: it/s Easel (CFG on, sampling only)",
                  f"{args.steps / statistics.median(p['sample'] for p in parts):.3f}"),
                 ("  of which model+prompts / sampling / decode", " / ".join(
                     f"{statistics.median(p[k] for p in parts):.3f}" for k in ("load", "sample", "decode"))),
                 ("bare diffusers s/image (same modules)", f"{statistics.median(theirs):.3f}"),
                 ("ratio Easel / diffusers (target <= 1.02)", f"{ratio:.3f}"),
                 ("Easel s/image including PNG save", f"{with_save:.3f}")]
        rows += _batch_rows(easel, model, dict(request, save_images=False), args.batch)
        if args.only == "engine":
            rows += _peak_rows(easel)
            easel.close()
            _print(rows)
            return 0
        rows += _lora_rows(easel, model, data, request)
        rows += _control_rows(easel, model, request)
        rows += _sampler_rows(easel, request)
        rows += _sde_noise_rows(easel, request)
        easel.close()
        if importlib.util.find_spec("gradio") is not None:
            rows += _startup_rows(data, ckpts, args.device, args.startup_runs)
        rows += _peak_rows(easel)

    _print(rows)
    return 0


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
