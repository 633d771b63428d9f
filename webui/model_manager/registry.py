"""The list of checkpoints on disk: single files and diffusers folders.

Names follow AUTOMATIC1111: a checkpoint's `name` is its path relative to the folder it
was found in (`sub/model.safetensors`), its `title` adds the short hash once known
(`sub/model.safetensors [0123456789]`), and lookups accept the name, title, file stem
or hash, so infotext and API clients written for AUTOMATIC1111 find the same model.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .hashing import HashCache, autov2
from .safe_unpickle import PICKLE_SUFFIXES

CHECKPOINT_SUFFIXES = (".safetensors", ".gguf") + PICKLE_SUFFIXES


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    format: str  # "safetensors" | "pickle" | "diffusers" | "gguf"
    size: int
    mtime: float

    @property
    def model_name(self) -> str:
        """The stem AUTOMATIC1111 writes as `Model:` in infotext."""
        base = self.name.rsplit("/", 1)[-1]
        for suffix in CHECKPOINT_SUFFIXES:
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base

    @property
    def hash_source(self) -> Path:
        """The file whose sha256 identifies the model (the UNet weights for diffusers folders)."""
        if self.format != "diffusers":
            return self.path
        for candidate in sorted((self.path / "unet").glob("*.safetensors")):
            return candidate
        return self.path / "model_index.json"


class ModelNotFoundError(LookupError):
    user_facing = True

    def __init__(self, query: str, available: list[str]):
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        hint = f"available: {shown}" if available else "no checkpoints are installed"
        super().__init__(f"checkpoint {query!r} not found ({hint})")
        self.query = query
        self.available = available


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def scan_folder(root: Path) -> list[CheckpointInfo]:
    """Every checkpoint under root, sorted by name; hidden files and partial downloads skipped."""
    found: list[CheckpointInfo] = []
    if not root.is_dir():
        return found
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir():
                if _is_diffusers_folder(entry):
                    stat = (entry / "model_index.json").stat()
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    found.append(CheckpointInfo(rel, entry, "diffusers", size, stat.st_mtime))
                else:
                    stack.append(entry)
            elif entry.suffix.lower() in CHECKPOINT_SUFFIXES and entry.is_file():
                if entry.stem.lower().endswith(".vae"):  # model.vae.safetensors: that checkpoint's VAE
                    continue
                stat = entry.stat()
                fmt = {".safetensors": "safetensors", ".gguf": "gguf"}.get(entry.suffix.lower(), "pickle")
                found.append(CheckpointInfo(rel, entry, fmt, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda c: c.name.lower())


class CheckpointRegistry:
    """Scans the checkpoint folders on demand and answers lookups by any of A1111's names."""

    def __init__(self, folders: list[Path], hashes: HashCache):
        self.folders = folders
        self.hashes = hashes
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []

    def refresh(self) -> list[CheckpointInfo]:
        items: list[CheckpointInfo] = []
        seen: set[str] = set()
        for folder in self.folders:
            for info in scan_folder(folder):
                if info.name in seen:  # the same name in a later folder: keep the first, like A1111
                    continue
                seen.add(info.name)
                items.append(info)
        with self._lock:
            self._items = items
        return list(items)

    def all(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def short_hash(self, info: CheckpointInfo) -> str | None:
        sha = self.hashes.cached(info.hash_source)
        return autov2(sha) if sha else None

    def title(self, info: CheckpointInfo) -> str:
        short = self.short_hash(info)
        return f"{info.name} [{short}]" if short else info.name

    def find(self, query: str) -> CheckpointInfo:
        items = self.all()
        query = query.strip()
        bare = query.split(" [", 1)[0] if query.endswith("]") else query
        for info in items:
            if query in (info.name, self.title(info)) or bare == info.name:
                return info
        for info in items:
            if bare in (info.model_name, info.path.name) or bare.replace("\\", "/") == info.name:
                return info
        if len(bare) >= 8 and all(c in "0123456789abcdef" for c in bare.lower()):
            for info in items:
                sha = self.hashes.cached(info.hash_source)
                if sha and sha.startswith(bare.lower()):
                    return info
        raise ModelNotFoundError(query, [i.name for i in items])
