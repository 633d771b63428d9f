"""Where live previews are decoded, measured: on the poller's thread (as the page's handler did) or on the
job's worker thread (core/preview.render), side by side in one run.

    python -m webui.bench_previews [--size 512] [--steps 8] [--rounds 3] [--method TAESD]

A tiny SD 1.x checkpoint (random weights) samples at `--size`; previews come from a TAESD of the
published architecture (diffusers' AutoencoderTiny defaults, random weights) or the cheap colour fit.
A poller thread, kept across rounds as Gradio keeps its handler threads, looks every 0.25 s:
- "none": no poller (previews on, nobody watching);
- "handler": it decodes the newest latents itself at most once per refresh period (the old page loop);
- "worker": it only asks for the picture the worker decoded (the page loop now).
Rows: median wall seconds and process CPU seconds (all threads) per generate, previews shown, and the
CPU seconds each preview added over "none".
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

POLL_SECONDS = 0.25


def _poll(job: Any, mode: str, period: float) -> int:
    """The page's loop until the job ends; returns how many new previews it would have sent."""
    from .core.preview import picture, watched_image

    shown: Any = None
    shown_step, due, sent = -1, 0.0, 0
    while not job.wait(POLL_SECONDS):
        p = job.progress
        if mode == "worker":
            _, image = watched_image(p)
            if image is not None and image is not shown:
                shown, sent = image, sent + 1
        elif mode == "handler":
            latents = p.preview_latents
            if latents is not None and p.preview_step != shown_step and time.monotonic() >= due:
                shown_step, due = p.preview_step, time.monotonic() + period
                picture(p.previewer, latents)
                sent += 1
    return sent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="TAESD", choices=("TAESD", "Approx cheap"))
    args = parser.parse_args(argv)

    from diffusers import AutoencoderTiny

    from .app import AppOptions, build
    from .core.request import GenerationRequest
    from .model_manager.architecture import Architecture
    from .model_manager.tiny import write_single_file

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_single_file(data / "ckpts" / "tiny-sd1.safetensors", Architecture("sd1"), seed=7)
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(str(data / "models" / "VAE-approx" / "taesd"), safe_serialization=True)
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data, device="cpu",
                                 ckpt_dirs=[data / "ckpts"]))
        period = 0.5
        easel.settings.update({"live_previews_enable": True, "live_preview_method": args.method,
                               "live_preview_refresh_period": int(period * 1000)})
        request = GenerationRequest(prompt="a lighthouse at dusk", steps=args.steps, width=args.size,
                                    height=args.size, seed=1, sampler_name="Euler", checkpoint="tiny-sd1",
                                    save_images=False)
        poller = ThreadPoolExecutor(1, thread_name_prefix="poller")  # one handler thread, reused like Gradio's
        try:
            easel.txt2img(request)  # warm-up: loads the checkpoint and the tiny VAE
            rows: dict[str, list[tuple[float, float, int]]] = {"none": [], "handler": [], "worker": []}
            for _ in range(args.rounds):
                for mode in rows:
                    wall, cpu = time.perf_counter(), time.process_time()
                    job = easel.submit(request)
                    sent = poller.submit(_poll, job, mode, period).result() if mode != "none" else (job.wait(), 0)[1]
                    assert job.error is None, job.error
                    rows[mode].append((time.perf_counter() - wall, time.process_time() - cpu, sent))
        finally:
            poller.shutdown()
            easel.close()
    print(f"live previews ({args.method}), tiny SD 1.x {args.size}x{args.size}, {args.steps} Euler steps, "
          f"{torch.get_num_threads()} torch threads, {threading.active_count()} threads, median of {args.rounds}")
    base = statistics.median(v[1] for v in rows["none"])
    for mode, values in rows.items():
        wall, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        shown = statistics.median(v[2] for v in values)
        extra = f"   cpu per preview over none {(cpu - base) / shown:5.2f} s" if shown else ""
        print(f"decode on {mode:8s} wall {wall:6.2f} s   cpu {cpu:6.2f} s   previews {shown:.0f}{extra}")

if __name__ == "__main__":
    main()
