"""Which upscalers exist, under the names AUTOMATIC1111 shows for them.

The list is "None", "Lanczos", "Nearest", then every model file in the model folders,
sorted by name (A1111's order). A file is named by its stem, except the six Real-ESRGAN
releases A1111 knows by a display name ("R-ESRGAN 4x+" for RealESRGAN_x4plus.pth ...).
.safetensors files are always listed; pickle files (.pth/.pt/.ckpt) only when the user
started Easel with --allow-pickle, since opening one can run code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...paths import model_files

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
BUILTIN = (NONE, LANCZOS, NEAREST)

# Kinds (keys of paths.MODEL_FOLDERS) whose folders hold upscaler models, in A1111's folder names.
UPSCALER_KINDS = ("esrgan", "realesrgan", "swinir", "dat", "hat", "scunet")
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")

# Real-ESRGAN's published file names -> the names A1111 lists them under.
REALESRGAN_NAMES = {
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "realesrgan_x4plus": "R-ESRGAN 4x+",
    "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
    "realesrgan_x2plus": "R-ESRGAN 2x+",
}


@dataclass(frozen=True)
class UpscalerEntry:
    """One model upscaler: its display name, its file and the folder kind it was found in."""

    name: str
    path: Path
    kind: str

    @property
    def is_pickle(self) -> bool:
        return self.path.suffix.lower() in PICKLE_SUFFIXES


def display_name(path: Path, kind: str) -> str:
    if kind == "realesrgan":
        return REALESRGAN_NAMES.get(path.stem.lower(), path.stem)
    return path.stem


def scan(folders: dict[str, list[Path]], allow_pickle: bool) -> tuple[list[UpscalerEntry], list[Path]]:
    """Model upscalers found in `folders` (kind -> folders), plus pickle files skipped for safety.

    When two files would get the same name, the later one is shown as "name (folder/file)"
    so every file stays reachable and no name is ambiguous.
    """
    suffixes = SAFE_SUFFIXES + (PICKLE_SUFFIXES if allow_pickle else ())
    entries: list[UpscalerEntry] = []
    skipped: list[Path] = []
    taken = {n.lower() for n in BUILTIN}
    for kind, kind_folders in folders.items():
        for path in model_files(kind_folders, SAFE_SUFFIXES + PICKLE_SUFFIXES):
            if path.suffix.lower() not in suffixes:
                skipped.append(path)
                continue
            name = display_name(path, kind)
            if name.lower() in taken:
                name = f"{name} ({path.parent.name}/{path.name})"
            taken.add(name.lower())
            entries.append(UpscalerEntry(name, path, kind))
    entries.sort(key=lambda e: e.name.lower())
    return entries, skipped
