"""Weight storage on a full-size architecture (random weights): peak memory, load time, image, per row.

    python3 -m webui.bench --size full-sdxl --only weights      # fp16, fp8 and GGUF Q8_0 of SDXL, 64x64, 2 steps
    python3 -m webui.bench --size tiny --only weights --memory-modes   # ... and each memory mode's image

Each row runs in a fresh process (`python3 -m webui.bench_weights --child ...`), so its peak
resident set (Linux's VmHWM) is that row's alone and includes loading the file through Easel's
real loader and one generation through Easel's engine. The checkpoint is written once, per tensor
(`write_random_safetensors`, `write_random_gguf`: never the whole model in memory), in the
published single-file key layout, and deleted afterwards. Every row reads the same weights: each
tensor's values come from a generator seeded by its name, and the GGUF file is those fp16 values
quantized. PSNR compares each row's image with the fp16 row's.

On the CPU the compute type is fp32 (its fp16/bf16 kernels run tens of times slower here), so the
fp16 row stores the weights in fp16 and computes in fp32, the fp8 row stores them in fp8, and the
GGUF row keeps Q8_0 blocks (Linear, Conv2d and Embedding layers). The fp16 and fp8 rows keep the
VAE in its own dtype; the GGUF file holds it quantized, and the GGUF row keeps it so.

`--breakdown` adds, per row, the resident set at its stages (before loading, the load's peak, after
loading, the generation's peak: VmHWM restarted through /proc/self/clear_refs) and the bytes each
component holds per storage kind, to tell where a peak comes from.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench_memory import peak_rss_mib, status_mib

Rows = list[tuple[str, str]]
# glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; diffusers' layerwise
# casting then frees and re-allocates every stored weight twice per call (cast up, cast back), and the
# freed blocks stay in the heap. Measured on full SDXL fp8 (one UNet pass at 8x8 latents, same moment):
# 5.75 GB resident by default, 4.67 GB with the threshold fixed; whole rows by default: fp16 10797 MiB,
# fp8 8613 MiB (0.80x). Every row runs with it fixed (64 KiB); EASEL_BENCH_MALLOC_MMAP_THRESHOLD=""
# runs glibc's default.
MALLOC_FIXED = os.environ.get("EASEL_BENCH_MALLOC_MMAP_THRESHOLD", "65536")
# --weights of the benchmark -> (the app's --weights, the file written)
WEIGHTS = {"fp16": ("fp16", "safetensors"), "bf16": ("bf16", "safetensors"), "fp8": ("fp8", "safetensors"),
           "gguf-q8": ("auto", "gguf")}


# ---- random full-size checkpoints, written one tensor at a time -----------------------------------


def checkpoint_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of the family's single-file layout, with its published shape (no data: meta modules)."""
    from .model_manager.architecture import Architecture, configs_for
    from .model_manager.convert import diffusers_to_checkpoint
    from .model_manager.loader import _factory, file_state_dict

    arch = Architecture(family)
    configs = configs_for(arch)
    components = {}
    with torch.device("meta"):
        for name in arch.adapter.components():
            if name in configs.components:
                components[name] = file_state_dict(_factory(name, configs[name], family)())
    return {k: tuple(v.shape) for k, v in diffusers_to_checkpoint(components, configs).items()}


def random_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """fp16 values seeded by the name: 1-D weights (the norms') 1, biases 0, the rest torch's default init scale."""
    if len(shape) <= 1:
        return torch.full(shape, 1.0 if key.endswith(".weight") else 0.0, dtype=torch.float16)
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(shape, generator=generator, dtype=torch.float16).mul_((3 * fan_in) ** -0.5)


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """An fp16 .safetensors written tensor by tensor (the header first, then each tensor's bytes)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape in shapes.items():
            handle.write(random_tensor(key, shape).numpy().tobytes())
    return path


def write_random_gguf(path: Path, shapes: dict[str, tuple[int, ...]], quant: str = "Q8_0") -> Path:
    """The same fp16 values quantized, written with the gguf package one tensor at a time: every tensor of
    2 or more axes whose rows fit the block in `quant` (conv kernels flattened to rows, their shape in
    ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>` field, as gguf.write_gguf_checkpoint does), the rest F32."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import quantize, quant_shape_to_byte_shape

    qtype = GGMLQuantizationType[quant]
    block, type_size = GGML_QUANT_SIZES[qtype]
    writer = GGUFWriter(str(path), "sdxl")
    plan = {}
    for key, shape in shapes.items():
        rows = (shape[0], int(np.prod(shape[1:]))) if len(shape) >= 2 else shape
        quantized = len(shape) >= 2 and rows[-1] % block == 0  # OpenCLIP's in_proj_weight too
        if quantized and len(shape) > 2:
            writer.add_array("comfy.gguf.orig_shape." + key, list(shape))
        plan[key] = (rows, quantized)
        if quantized:
            byte_shape = quant_shape_to_byte_shape(rows, qtype)
            writer.add_tensor_info(key, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
        else:
            writer.add_tensor_info(key, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for key, shape in shapes.items():
        rows, quantized = plan[key]
        values = random_tensor(key, shape).float().numpy()
        writer.write_tensor_data(quantize(values.reshape(rows), qtype) if quantized else values)
    writer.close()
    return path


# ---- where a row's memory goes ----------------------------------------------------------------------


def storage_breakdown(model: Any) -> dict[str, dict[str, int]]:
    """Bytes held per component, per storage kind: a GGUF quantization ("Q8_0") or a dtype ("float32").
    Parameters and buffers, each storage counted once (tied weights, shared tables)."""
    out: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    parts = {"unet": model.unet, **model.text_encoders, "vae": model.vae}
    for component, module in parts.items():
        kinds = out.setdefault(component, {})
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_meta or tensor.untyped_storage().data_ptr() in seen:
                continue
            seen.add(tensor.untyped_storage().data_ptr())
            quant = getattr(tensor, "quant_type", None)
            kind = quant.name if quant is not None else str(tensor.dtype).removeprefix("torch.")
            kinds[kind] = kinds.get(kind, 0) + tensor.untyped_storage().nbytes()
    return out


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    return status_mib("VmRSS") or 0.0


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current resident set (Linux: "5" to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def breakdown_rows(label: str, row: dict) -> Rows:
    """A row's stages (RSS before loading, peaks of load and of generation) and its bytes per component."""
    stages = row.get("stages", {})
    rows: Rows = []
    if stages:
        rows.append((f"{label}: RSS MiB at start / load peak / after load / generation peak",
                     " / ".join(f"{stages[k]:.0f}" if k in stages else "?" for k in
                                ("start", "load_peak", "loaded", "generate_peak"))))
    for component, kinds in row.get("breakdown", {}).items():
        total = sum(kinds.values())
        shown = ", ".join(f"{kind} {size / 2**20:.0f}" for kind, size in sorted(kinds.items(), key=lambda x: -x[1]))
        rows.append((f"{label}: {component} MiB", f"{total / 2**20:.0f} ({shown})"))
    return rows


# ---- one row, in its own process ------------------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    """Load the checkpoint through Easel's loader, generate once, print one JSON line (then the memory modes)."""
    from .app import AppOptions, build
    from .core.request import GenerationRequest

    ckpt = Path(args.ckpt)
    data = Path(args.data)
    easel = build(AppOptions(models_dir=data / "models", outputs_dir=data / "out", data_dir=data, device=args.device,
                             ckpt_dirs=[ckpt.parent], weights=WEIGHTS[args.weights][0]))
    easel.settings.update({"live_previews_enable": False})
    request = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", steps=args.steps,
                   cfg_scale=7.0, width=args.side, height=args.side, seed=1, sampler_name="Euler",
                   scheduler="Uniform", checkpoint=ckpt.name, save_images=False)
    stages = {"start": rss_mib()}
    t0 = time.perf_counter()
    model = easel.models.get(ckpt.name)
    load = time.perf_counter() - t0
    stages.update(load_peak=peak_rss_mib(), loaded=rss_mib())
    peak = stages["load_peak"]
    split = reset_peak_rss()  # the generation's own peak from here (the row's peak is the larger of both)
    t0 = time.perf_counter()
    result = easel.txt2img(GenerationRequest(**request))
    seconds = time.perf_counter() - t0
    peak = max(peak, peak_rss_mib())
    if split:
        stages["generate_peak"] = peak_rss_mib()
    out = {"load_s": load, "image_s": seconds, "it_s": args.steps / max(result.timings["sample"], 1e-9),
           "peak_rss_mib": peak, "notes": model.notes, "weights": model.weight_storage, "stages": stages,
           "breakdown": storage_breakdown(model)}
    if model.device.device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    result.images[0].save(Path(args.image))
    if args.memory_modes:  # after the peak was read: each mode's image beside Resident's
        from .model_manager.memory import BLOCK_OFFLOAD, MODEL_OFFLOAD

        for mode in (MODEL_OFFLOAD, BLOCK_OFFLOAD):
            easel.settings.update({"memory_mode": mode})
            image = easel.txt2img(GenerationRequest(**request)).images[0]
            image.save(Path(args.image).with_name(f"{Path(args.image).stem}-{mode.replace(' ', '_')}.png"))
            out.setdefault("modes", []).append(mode)
    easel.close()
    print("ROW " + json.dumps(out), flush=True)
    return 0


def _run_row(ckpt: Path, weights: str, tmp: Path, device: str, side: int, steps: int, memory_modes: bool) -> dict:
    image = tmp / f"row-{weights}.png"
    command = [sys.executable, "-m", "webui.bench_weights", "--child", "--ckpt", str(ckpt), "--weights", weights,
               "--data", str(tmp / f"data-{weights}"), "--image", str(image), "--device", device,
               "--side", str(side), "--steps", str(steps)] + (["--memory-modes"] if memory_modes else [])
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if MALLOC_FIXED:  # see MALLOC_FIXED: the same allocator setting in every row
        env["MALLOC_MMAP_THRESHOLD_"] = MALLOC_FIXED
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("ROW ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"the {weights} row failed:\n{done.stderr[-3000:]}")
    row = json.loads(line[4:])
    row["image"] = image
    return row


def weight_rows(family: str, choices: tuple[str, ...] = ("fp16", "fp8", "gguf-q8"), device: str = "cpu",
                side: int = 64, steps: int = 2, memory_modes: bool = False, files_dir: Path | None = None,
                breakdown: bool = False) -> Rows:
    """One subprocess per storage choice on the same random weights; ratios and PSNR against fp16.

    `files_dir`: keep the written checkpoints there (and reuse them when present) instead of a
    temporary folder that is deleted afterwards. `breakdown`: also each row's RSS at its stages and
    the bytes each component holds per storage kind (where the peak comes from)."""
    from PIL import Image

    from .bench_memory import psnr

    choices = ("fp16", *[c for c in choices if c != "fp16"])
    rows: Rows = [("model", f"{family}, published configs, random weights; {side}x{side}, {steps} steps, CFG 7, "
                            f"batch 1, device {device}"),
                  ("glibc MALLOC_MMAP_THRESHOLD_ of each row", MALLOC_FIXED or "default (dynamic)")]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        keep = files_dir or tmp
        (keep / "st").mkdir(parents=True, exist_ok=True)
        (keep / "gg").mkdir(exist_ok=True)
        t0 = time.perf_counter()
        shapes = checkpoint_shapes(family)
        files = {"safetensors": keep / "st" / f"{family}-random.safetensors"}
        if "gguf-q8" in choices:
            files["gguf"] = keep / "gg" / f"{family}-random-Q8_0.gguf"
        for kind, path in files.items():
            if not path.is_file():  # written under another name first: an interrupted write is never reused
                part = path.with_name(path.name + ".part")
                (write_random_gguf if kind == "gguf" else write_random_safetensors)(part, shapes)
                part.rename(path)
        params = sum(int(np.prod(s)) for s in shapes.values())
        rows.append(("checkpoint: tensors / parameters / files written (s)",
                     f"{len(shapes)} / {params / 1e9:.3f} B / {time.perf_counter() - t0:.1f}"))
        for kind, path in files.items():
            rows.append((f"file size {kind} (MiB)", f"{path.stat().st_size / 2**20:.0f}"))
        results = {}
        for weights in choices:
            results[weights] = _run_row(files[WEIGHTS[weights][1]], weights, tmp, device, side, steps,
                                        memory_modes and weights == "fp16")
        base = results["fp16"]
        reference = np.asarray(Image.open(base["image"]).convert("RGB"))
        for weights, row in results.items():
            image = np.asarray(Image.open(row["image"]).convert("RGB"))
            rows.append((f"{weights}: peak RSS MiB (x fp16) / load s / s per image / it/s",
                         f"{row['peak_rss_mib']:.0f} ({row['peak_rss_mib'] / base['peak_rss_mib']:.3f}x) / "
                         f"{row['load_s']:.1f} / {row['image_s']:.1f} / {row['it_s']:.3f}"))
            if "peak_cuda_mib" in row:
                rows.append((f"{weights}: peak CUDA MiB", f"{row['peak_cuda_mib']:.0f}"))
            rows.append((f"{weights}: PSNR vs fp16 (dB) / image std", f"{psnr(reference, image):.1f} / "
                                                                      f"{image.std():.1f}"))
            rows.append((f"{weights}: load notes", "; ".join(row["notes"][-2:])))
            if breakdown:
                rows += breakdown_rows(weights, row)
            for mode in row.get("modes", []):
                other = np.asarray(Image.open(row["image"].with_name(
                    f"{row['image'].stem}-{mode.replace(' ', '_')}.png")).convert("RGB"))
                rows.append((f"{weights}: {mode} vs Resident PSNR (dB)", f"{psnr(image, other):.1f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench_weights")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ckpt")
    parser.add_argument("--data")
    parser.add_argument("--image")
    parser.add_argument("--weights", default="fp16", choices=tuple(WEIGHTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--memory-modes", action="store_true")
    parser.add_argument("--files", help="keep the written checkpoints in this folder (reused when present)")
    parser.add_argument("--rows", default="fp16,fp8,gguf-q8")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print each row's RSS per stage and its bytes per component and storage kind")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    from .bench import _print

    _print(weight_rows("sdxl", tuple(args.rows.split(",")), args.device, args.side, args.steps, args.memory_modes,
                       Path(args.files) if args.files else None, args.breakdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
