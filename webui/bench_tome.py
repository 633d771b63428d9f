"""Benchmark rows for token merging: it/s at ratio 0, 0.3 and 0.5 side by side in one run (used by webui.bench).

    python3 -m webui.bench --only tome                    # tiny-width SD 1.x UNet at 512x512 (attention dominates)
    python3 -m webui.bench --only tome --size full-sd1 --steps 4 --rounds 2   # the published SD 1.5 config

The tiny checkpoint's UNet is narrow (32 channels) but at 512x512 its highest-resolution blocks see
4096 tokens, so self-attention (quadratic in tokens) is most of a step, as it is for SD 1.5 at that
size. Rounds alternate between the ratios, and each row reports the median sampling it/s (CFG on,
batch 1), its speed-up over ratio 0, and the image's PSNR against ratio 0's.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from .bench_memory import psnr
from .core.request import GenerationRequest

RATIOS = (0.0, 0.3, 0.5)
Rows = list[tuple[str, str]]


def tome_rows(easel, request: dict, rounds: int = 3, ratios: tuple[float, ...] = RATIOS) -> Rows:
    """Sampling it/s per ratio (median of `rounds`, ratios alternating), speed-up and PSNR against the first."""
    def run(ratio: float, steps: int):
        return easel.txt2img(GenerationRequest(**dict(request, steps=steps,
                                                      override_settings={**request.get("override_settings", {}),
                                                                         "token_merging_ratio": ratio})))

    for ratio in ratios:
        run(ratio, 1)  # warm-up: loading, placement, first-call costs
        print(f"warmed up ratio {ratio:g}", file=sys.stderr, flush=True)  # long runs (full-size on a CPU)
    rates: dict[float, list[float]] = {ratio: [] for ratio in ratios}
    images = {}
    for _ in range(rounds):
        for ratio in ratios:
            result = run(ratio, request["steps"])
            rates[ratio].append(request["steps"] / max(result.timings["sample"], 1e-9))
            images[ratio] = result.images[0]
    base = statistics.median(rates[ratios[0]])
    rows: Rows = []
    for ratio in ratios:
        rate = statistics.median(rates[ratio])
        rows.append((f"token merging ratio {ratio:g}: it/s, x ratio {ratios[0]:g}, PSNR dB",
                     f"{rate:.3f}, x{rate / base:.2f}, {psnr(images[ratio], images[ratios[0]]):.1f}"))
    return rows


def main(size: str, device: str, steps: int, resolution: int | None, rounds: int) -> Rows:
    """Build an app over one checkpoint (tiny SD 1.x, or the published SD 1.5 config with random weights)."""
    import tempfile

    from .app import AppOptions, build
    from .model_manager.architecture import Architecture
    from .model_manager.tiny import write_single_file

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "ckpts").mkdir()
        if size == "tiny":
            write_single_file(data / "ckpts" / "a.safetensors", Architecture("sd1"), seed=1)
        else:
            from .bench import _write_full_size

            _write_full_size(data / "ckpts" / "a.safetensors", "sdxl" if size == "full-sdxl" else "sd1")
        easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data,
                                 device=device, ckpt_dirs=[data / "ckpts"]))
        easel.settings.update({"live_previews_enable": False})
        side = resolution or (1024 if size == "full-sdxl" else 512)
        request = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", steps=steps,
                       cfg_scale=7.0, width=side, height=side, seed=1, sampler_name="Euler", scheduler="Uniform",
                       checkpoint="a.safetensors", save_images=False)
        if size == "full-sdxl":  # SDXL's highest-resolution blocks have no attention: merge one level down
            request["override_settings"] = {"token_merging_downsample": 2}
        try:
            rows: Rows = [("device", easel.device.label), ("model", size), ("image", f"{side}x{side}, {steps} steps")]
            return rows + tome_rows(easel, request, rounds)
        finally:
            easel.close()
