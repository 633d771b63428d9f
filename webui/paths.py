"""Where things live on disk, and joins that cannot escape their root.

Folder names under models/ follow AUTOMATIC1111 so an existing models folder can be
pointed at as is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# AUTOMATIC1111's folder names, keyed by the kind of model they hold.
MODEL_FOLDERS: dict[str, str] = {
    "checkpoint": "Stable-diffusion",
    "vae": "VAE",
    "text_encoder": "text_encoder",  # separate text encoders (Flux's clip_l, t5xxl), as Forge names the folder
    "vae_approx": "VAE-approx",  # tiny autoencoders for live previews (TAESD, TAESDXL), as AUTOMATIC1111 names it
    "lora": "Lora",
    "embedding": "embeddings",
    "controlnet": "ControlNet",
    "esrgan": "ESRGAN",
    "annotator": "annotators",
    "ipadapter": "ipadapter",
    "clip_vision": "clip_vision",
    "realesrgan": "RealESRGAN",
    "swinir": "SwinIR",
    "dat": "DAT",
    "hat": "HAT",
    "scunet": "ScuNET",
    "gfpgan": "GFPGAN",
    "codeformer": "Codeformer",
    "photomaker": "photomaker",
    "instantid": "instantid",
    "insightface": "insightface",
    "adetailer": "adetailer",  # the detailer's ONNX detection models (hands, persons ...), ADetailer's folder name
}


class UnsafePathError(ValueError):
    """A user-supplied name tried to leave the folder it must stay in."""


def safe_join(root: Path, name: str) -> Path:
    """Join a user-supplied relative name onto root, refusing anything that escapes it."""
    if not name or "\x00" in name:
        raise UnsafePathError(f"invalid name {name!r}")
    candidate = Path(name)
    if candidate.is_absolute() or candidate.drive:
        raise UnsafePathError(f"absolute paths are not allowed: {name!r}")
    root_resolved = root.resolve()
    joined = (root_resolved / candidate).resolve()
    if joined != root_resolved and root_resolved not in joined.parents:
        raise UnsafePathError(f"{name!r} points outside {root}")
    return joined


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline (model_index.json) or one component (config.json beside its weights).

    Such a folder is one model: its files are parts of it, never models of their own.
    """
    if (path / "model_index.json").is_file():
        return True
    if not (path / "config.json").is_file():
        return False
    try:
        return any(p.suffix in (".safetensors", ".bin") and p.is_file() for p in path.iterdir())
    except OSError:
        return False


def walk_tree(root: Path | str, descend: Callable[[os.DirEntry], bool] = lambda entry: True,
              follow_symlinks: bool = True) -> Iterator[tuple[os.DirEntry, bool]]:
    """(entry, is_dir) for every file under root, and every folder `descend` refused to enter.

    One walk for the model library and the gallery scanner: hidden names (atomic writes' .tmp files,
    .git) are left out, folders that cannot be listed and entries that cannot be read are skipped,
    never fatal. `follow_symlinks`: whether a link to a folder counts as a folder (walked into).
    """
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=follow_symlinks)
                if is_dir and descend(entry):
                    stack.append(entry.path)
                    continue
            except OSError:
                continue
            yield entry, is_dir


def model_files(folders: list[Path], suffixes: tuple[str, ...], inside_model_folders: bool = False) -> list[Path]:
    """Files with these suffixes anywhere under the folders, sorted by name; hidden and partial files skipped.

    Model folders (`is_model_folder`) are not walked into, so a component's weights are not listed
    as a model; `inside_model_folders=True` lists them too (a diffusers VAE folder's weights are a VAE).
    """
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for root, dirs, files in os.walk(folder):
            here = Path(root)
            dirs[:] = [d for d in dirs if not d.startswith(".")
                       and (inside_model_folders or not is_model_folder(here / d))]
            found += [here / name for name in files if not name.startswith(".")
                      and Path(name).suffix.lower() in suffixes and (here / name).is_file()]
    return sorted(found, key=lambda p: p.stem.lower())


def _unique(folders: list[Path]) -> list[Path]:
    result: list[Path] = []
    for folder in folders:
        if folder.resolve() not in [f.resolve() for f in result]:
            result.append(folder)
    return result


@dataclass
class Paths:
    """Resolved roots for one running instance (set from command-line flags)."""

    models_dir: Path = PROJECT_ROOT / "models"
    outputs_dir: Path = PROJECT_ROOT / "outputs"
    data_dir: Path = PROJECT_ROOT
    extensions_dir: Path = PROJECT_ROOT / "extensions"
    ckpt_dirs: list[Path] = field(default_factory=list)
    lora_dirs: list[Path] = field(default_factory=list)
    embedding_dirs: list[Path] = field(default_factory=list)

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def model_dir(self, kind: str) -> Path:
        return self.models_dir / MODEL_FOLDERS[kind]

    def checkpoint_dirs(self) -> list[Path]:
        """The models/Stable-diffusion folder first, then every --ckpt-dir."""
        return _unique([self.model_dir("checkpoint"), *self.ckpt_dirs])

    def lora_folders(self) -> list[Path]:
        return _unique([self.model_dir("lora"), *self.lora_dirs])

    def embedding_folders(self) -> list[Path]:
        return _unique([self.model_dir("embedding"), *self.embedding_dirs])

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    def ensure(self) -> None:
        """Create the folders a user is told to drop files into."""
        for kind in MODEL_FOLDERS:
            self.model_dir(kind).mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
