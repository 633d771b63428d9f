"""Preview images beside model files, found the way AUTOMATIC1111 looks for them."""
from __future__ import annotations

from pathlib import Path

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.jpeg", ".jpeg", ".preview.webp",
                    ".webp")


def find_preview(model_path: Path) -> Path | None:
    """`name.preview.png`, `name.png` (and jpg/webp) beside `name.safetensors`, or inside a diffusers folder."""
    base = model_path.with_suffix("") if model_path.is_file() else model_path
    for suffix in PREVIEW_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    if model_path.is_dir():
        for name in ("preview.png", "preview.jpg", "preview.webp"):
            if (model_path / name).is_file():
                return model_path / name
    return None
