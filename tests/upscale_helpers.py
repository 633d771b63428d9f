"""Shared helpers for the upscaler and Extras tests: images and tiny model folders."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from webui.features.upscalers import UPSCALER_KINDS, Upscalers
from webui.features.upscalers.tiny import write_tiny_compact, write_tiny_esrgan


def smooth_image(width: int = 64, height: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A picture-like test image: random colours blurred into soft shapes (no flat areas, no pure noise)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, height // 8), max(2, width // 8), 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, (height, width, 3))
    array = np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def model_folders(models: Path) -> dict[str, list[Path]]:
    return {kind: [models / folder] for kind, folder in
            zip(UPSCALER_KINDS, ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET"))}


def tiny_models(models: Path) -> Path:
    """models/ESRGAN/4x-Tiny.safetensors (ESRGAN RRDBNet 4x) and 2x-TinyCompact (Real-ESRGAN Compact 2x)."""
    write_tiny_esrgan(models / "ESRGAN" / "4x-Tiny.safetensors", scale=4, seed=1)
    write_tiny_compact(models / "ESRGAN" / "2x-TinyCompact.safetensors", scale=2, seed=2)
    return models


def make_upscalers(models: Path, allow_pickle: bool = False, settings=None) -> Upscalers:
    return Upscalers(lambda: model_folders(models), torch.device("cpu"), torch.float32, allow_pickle=allow_pickle,
                     settings=settings)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose data is tiny (a 'decompression bomb' shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")
