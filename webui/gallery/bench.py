"""Gallery benchmark: `python -m webui.gallery.bench [--rows 100000] [--files 2000] [--keep DIR]`.

1. Builds an index of `--rows` synthetic rows from real AUTOMATIC1111 infotext strings (prompts,
   models, samplers, sizes and dates varied), then times a text search with two filters (target
   <= 50 ms) and the first grid page (target <= 300 ms: the page query with its count, plus 48
   cached thumbnails looked up).
2. Writes `--files` real 512x512 PNGs with infotext and times indexing them from disk with the
   scanner, extrapolated to 10,000 files (target <= 60 s).
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from ..core.images import encode_image
from ..core.infotext import parse_infotext
from .index import GalleryIndex, Query
from .scanner import ScanProgress, record_from_info, scan_folder
from .thumbnails import Thumbnails

# infotexts as AUTOMATIC1111 / Forge / Easel write them (from public images' PNG info)
REAL_INFOTEXTS = [
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, outdoors, cherry blossoms, "
    "<lora:add_detail:0.6>\nNegative prompt: (worst quality, low quality:1.4), easynegative, bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 2389412744, Size: 512x768, "
    "Model hash: 7f96a1a9ca, Model: anythingV5, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
    "Hires steps: 14, Hires upscaler: R-ESRGAN 4x+ Anime6B, Lora hashes: \"add_detail: 7c6bad76eb54\", "
    "Version: v1.10.1",
    "a photograph of an astronaut riding a horse on mars, highly detailed, 8k, cinematic lighting\n"
    "Negative prompt: blurry, deformed, watermark\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, "
    "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.6.0",
    "portrait of an old fisherman, weathered face, rim light, shallow depth of field, 85mm photo\n"
    "Negative prompt: cartoon, painting, illustration, (worst quality, low quality, normal quality:2)\n"
    "Steps: 30, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 5, Seed: 1105617320, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
    "Version: f2.0.1v1.10.1-previous-313-g8a042934",
    "isometric fantasy castle on a floating island, waterfalls, volumetric clouds, concept art, trending on "
    "artstation\nSteps: 25, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 6, Seed: 777, "
    "Size: 1024x1024, Model hash: e6bb9ea85b, Model: juggernautXL_v9, RNG: CPU, Version: Easel 0.1.0",
    "cyberpunk street market at night, neon signs, rain, reflections, crowded, anime style\n"
    "Negative prompt: lowres, text, error, cropped, jpeg artifacts\nSteps: 24, Sampler: UniPC, CFG scale: 8, "
    "Seed: 3071914553, Size: 768x512, Model hash: 4199bcdd14, Model: revAnimated_v122, ENSD: 31337, "
    "Version: v1.7.0",
    "still life, ceramic bowl with lemons on a linen cloth, soft window light, oil painting\n"
    "Steps: 40, Sampler: DDIM, CFG scale: 9, Seed: 123456, Size: 640x512, Model hash: cc6cb27103, "
    "Model: v2-1_768-ema-pruned, Eta DDIM: 0.3, Version: v1.9.4",
]
WORDS = ("red blue green golden silver misty sunny snowy ancient futuristic tiny giant cozy dark bright calm "
         "stormy dragon cat fox owl robot knight witch forest desert ocean mountain city village garden "
         "library kitchen temple bridge lighthouse harbor meadow canyon glacier volcano").split()


def synthetic_records(count: int, seed: int = 0):
    rng = random.Random(seed)
    bases = [parse_infotext(text) for text in REAL_INFOTEXTS]
    now = time.time()
    for i in range(count):
        base = bases[i % len(bases)]
        extra = " ".join(rng.sample(WORDS, 4))
        params = dict(base.params)
        params["Seed"] = str(rng.randrange(2**32))
        width, height = (int(v) for v in params["Size"].split("x"))
        info = type(base)(f"{extra}, {base.prompt}", base.negative_prompt, params)
        record = record_from_info(f"/bench/outputs/{i // 1000:03}/{i:06}-{params['Seed']}.png", info,
                                  "automatic1111", (width, height), None, "/bench/outputs")
        record.created = record.mtime = now - rng.random() * 365 * 86400
        record.size = 400_000 + i
        yield record


def timed(call, repeat: int = 15) -> tuple[float, float]:
    """(median ms, worst ms) over `repeat` runs after one warm-up."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def bench_queries(folder: Path, rows: int) -> None:
    index = GalleryIndex(folder / "gallery.sqlite")
    start = time.perf_counter()
    batch = []
    for record in synthetic_records(rows):
        batch.append(record)
        if len(batch) == 5000:
            index.upsert(batch)
            batch = []
    index.upsert(batch)
    print(f"built {index.count():,} rows from {len(REAL_INFOTEXTS)} real infotexts in "
          f"{time.perf_counter() - start:.1f}s ({(folder / 'gallery.sqlite').stat().st_size / 1e6:.0f} MB)")
    cases = {
        "text search 'castle' + model + sampler": Query(text="castle", model="juggernautXL_v9",
                                                        sampler="DPM++ 2M SDE"),
        "text search 'fox ca' (prefix) + sampler + size": Query(text="fox ca", sampler="DPM++ 2M",
                                                                 size="512x768"),
        "text search 'portrait' + model + favourites": Query(text="portrait", model="sd_xl_base_1.0",
                                                             favourite=True),
        "text search 'red dragon' + date + board-less model": Query(text="red dragon", model="anythingV5",
                                                                    since=time.time() - 30 * 86400),
        "first grid page (no filter, newest, with total)": Query(),
        "page 100 of the grid": Query(offset=48 * 100),
    }
    for label, query in cases.items():
        median, worst = timed(lambda q=query: index.search(q))
        total = index.search(query)[1]
        print(f"  {label:55s} {median:7.1f} ms median, {worst:7.1f} ms worst  ({total:,} match)")
    index.close()


def bench_files(folder: Path, files: int) -> None:
    images = folder / "pngs"
    images.mkdir()
    start = time.perf_counter()
    bases = REAL_INFOTEXTS
    gradient = Image.linear_gradient("L").resize((512, 512)).convert("RGB")
    for i in range(files):
        text = bases[i % len(bases)].replace("Seed: ", f"Seed: {i}", 1)
        (images / f"{i:05}-{i}.png").write_bytes(encode_image(gradient, "png", text))
    written = time.perf_counter() - start
    index = GalleryIndex(folder / "files.sqlite")
    progress = ScanProgress(state="scanning")
    start = time.perf_counter()
    scan_folder(images, index.known(str(images)), progress, index.upsert, index.forget)
    took = time.perf_counter() - start
    assert index.count() == files, (index.count(), files)
    print(f"indexed {files:,} real 512x512 PNGs ({written:.1f}s to write) in {took:.2f}s = "
          f"{took / files * 1000:.2f} ms/file -> 10,000 files: {took / files * 10000:.1f} s (extrapolated)"
          if files < 10000 else f"indexed {files:,} real PNGs in {took:.1f}s")
    start = time.perf_counter()
    scan_folder(images, index.known(str(images)), ScanProgress(), index.upsert, index.forget)
    print(f"  rescan with nothing changed: {time.perf_counter() - start:.2f}s")
    thumbs = Thumbnails(folder / "thumbs")
    rows, _ = index.search(Query(limit=48))
    start = time.perf_counter()
    for row in rows:
        thumbs.get(row["path"])
    cold = (time.perf_counter() - start) * 1000
    median, _ = timed(lambda: [thumbs.get(r["path"]) for r in index.search(Query(limit=48))[0]], repeat=5)
    print(f"  first grid page with 48 thumbnails: {cold:.0f} ms the first time (thumbnails made), "
          f"{median:.1f} ms cached")
    index.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        folder_context = None
        folder = args.keep
    else:
        folder_context = tempfile.TemporaryDirectory(prefix="easel-gallery-bench-")
        folder = Path(folder_context.name)
    try:
        bench_queries(folder, args.rows)
        if args.files:
            bench_files(folder, args.files)
    finally:
        if folder_context is not None:
            folder_context.cleanup()


if __name__ == "__main__":
    main()
