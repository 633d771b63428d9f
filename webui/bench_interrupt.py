"""Benchmark: how long Interrupt takes to stop a job, with and without the in-step checks.

    python3 -m webui.bench_interrupt                      # tiny SD 1.x at 1024², CPU: ~1 minute
    python3 -m webui.bench_interrupt --family sdxl --resolution 1536

Interrupt is pressed half-way through a step (the step time is measured first), and the
time until the job has ended is reported, for the UNet with the block checks of
`core/step_interrupt.py` and with them taken off (the old behaviour: the step runs to its end).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from .app import AppOptions, build
from .core.request import GenerationRequest
from .core.step_interrupt import install_interrupt_checks, remove_interrupt_checks
from .model_manager.architecture import Architecture
from .model_manager.tiny import write_single_file


def _wait_step(job, step: int) -> float:
    while job.progress.step < step and not job.done:
        time.sleep(0.001)
    return time.perf_counter()


def _latency(easel, request: GenerationRequest) -> tuple[float, float]:
    """(seconds of one step, seconds from Interrupt half-way through the next step to the job's end)."""
    job = easel.submit(request)
    first = _wait_step(job, 1)
    step_seconds = _wait_step(job, 2) - first
    time.sleep(step_seconds / 2)  # half-way through step 3
    pressed = time.perf_counter()
    job.interrupt()
    job.wait()
    return step_seconds, time.perf_counter() - pressed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench_interrupt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "ckpts").mkdir()
        write_single_file(data / "ckpts" / "m.safetensors", Architecture(args.family), seed=1)
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                 device=args.device, ckpt_dirs=[data / "ckpts"]))
        easel.settings.update({"live_previews_enable": False})
        side = args.resolution
        request = GenerationRequest(prompt="a lighthouse", steps=3, width=side, height=side, seed=1,
                                    sampler_name="Euler", checkpoint="m.safetensors", save_images=False)
        easel.txt2img(GenerationRequest(**{**request.__dict__, "steps": 1}))  # load + warm-up
        unet = easel.models.get("m.safetensors").unet
        long = GenerationRequest(**{**request.__dict__, "steps": 50})
        with_checks = [_latency(easel, long) for _ in range(args.rounds)]
        remove_interrupt_checks(unet)
        without = [_latency(easel, long) for _ in range(args.rounds)]
        install_interrupt_checks(unet, lambda: easel.queue.current, lambda: easel.queue.worker)
        easel.close()
    rows = [("model / size / device", f"tiny {args.family} / {side}² / {easel.device.label}"),
            ("one step (s, median)", f"{statistics.median(s for s, _ in with_checks + without):.3f}"),
            (f"interrupt -> job ended, between steps only (s, median of {args.rounds})",
             f"{statistics.median(t for _, t in without):.3f}"),
            (f"interrupt -> job ended, with in-step checks (s, median of {args.rounds})",
             f"{statistics.median(t for _, t in with_checks):.3f}")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
