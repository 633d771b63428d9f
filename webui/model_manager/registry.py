"""The list of checkpoints on disk: single files and diffusers folders.

Names follow AUTOMATIC1111: a checkpoint's `name` is its path relative to the folder it
was found in (`sub/model.safetensors`), its `title` adds the short hash once known
(`sub/model.safetensors [0123456789]`), and lookups accept the name, title, file stem
or hash, so infotext and API clients written for AUTOMATIC1111 find the same model.

A folder is one model or a folder of models, never both: a diffusers pipeline
(`model_index.json`) or a single component (`config.json` beside its weights) is never
walked into, so its component files (`unet/diffusion_pytorch_model.safetensors`,
`text_encoder/model.safetensors`) are never listed as checkpoints. A pipeline Easel cannot
load (a Hunyuan-DiT folder: a family Easel does not know) and a lone component folder are
kept aside in `unloadable()` with the reason, so the Models library and `find()` can say why.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import is_model_folder
from .hashing import HashCache, autov2
from .lookup import ModelNotFound, match
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
        """The file whose sha256 identifies the model (the UNet's or transformer's weights for diffusers folders)."""
        if self.format != "diffusers":
            return self.path
        for denoiser in ("unet", "transformer"):
            for candidate in sorted((self.path / denoiser).glob("*.safetensors")):
                return candidate
        return self.path / "model_index.json"


@dataclass(frozen=True)
class UnloadableFolder:
    """A model folder in a checkpoint folder that Easel cannot load as a checkpoint, and why."""

    name: str
    path: Path
    reason: str


class ModelNotFoundError(ModelNotFound):
    """No loadable checkpoint answers to the name (the `ModelNotFound` of the checkpoint registry).

    Its own type because the API reports it against `sd_model_checkpoint`.
    """

    def __init__(self, query: str, available: list[str], where: str = "", reason: str = ""):
        super().__init__("checkpoint", query, available, where=where, reason=reason)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _known_families() -> str:
    from ..families import all_families  # imports torch; only needed when a folder is in question

    return ", ".join(f.label for f in all_families())


def folder_family(folder: Path):
    """The family adapter of a loadable diffusers folder (for its label), else None; reads only JSON."""
    if folder_problem(folder) is not None:
        return None
    from ..families.registry import family_of_folder

    index = _read_json(folder / "model_index.json")
    components = {name: _read_json(folder / name / "config.json") for name in
                  ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")
                  if (folder / name / "config.json").is_file()}
    return family_of_folder(index, components)


def folder_problem(folder: Path) -> str | None:
    """Why Easel cannot load this model folder as a checkpoint, or None if it can.

    Reads only small JSON files (model_index.json, component configs), with the loader's rules:
    a diffusers pipeline with unet/ and vae/ configs, of a family Easel knows.
    """
    index = _read_json(folder / "model_index.json")
    if index is None and not (folder / "model_index.json").is_file():
        config = _read_json(folder / "config.json")
        config = config if isinstance(config, dict) else {}
        architectures = config.get("architectures")
        cls = str(config.get("_class_name") or (architectures[0] if isinstance(architectures, list) and architectures
                                                 else ""))
        what = f"a {cls} component" if cls else "one diffusers component"
        return (f"{what} (config.json beside its weights), not a whole model; "
                "a checkpoint is a single file or a diffusers folder with model_index.json")
    if not isinstance(index, dict):
        return "model_index.json cannot be read as a JSON object"
    pipeline = str(index.get("_class_name") or "diffusers pipeline")
    denoiser = "transformer" if "transformer" in index or (folder / "transformer").is_dir() else "unet"
    if denoiser not in index or not (folder / denoiser).is_dir():
        return f"a {pipeline} folder without {denoiser}/; Easel needs unet/ (or transformer/) and vae/"
    components: dict[str, dict[str, Any]] = {}
    for name in (denoiser, "vae", "text_encoder", "text_encoder_2"):
        if (folder / name / "config.json").is_file():
            config = _read_json(folder / name / "config.json")
            if not isinstance(config, dict):
                return f"{name}/config.json cannot be read"
            components[name] = config
    missing = [name for name in (denoiser, "vae") if name not in components]
    if missing:
        return f"a {pipeline} folder without {' or '.join(m + '/config.json' for m in missing)}"
    from ..families.registry import family_of_folder

    if family_of_folder(index, components) is None:
        return f"a {pipeline} folder of a model family Easel does not know (it loads {_known_families()})"
    return None


def scan(root: Path) -> tuple[list[CheckpointInfo], list[UnloadableFolder]]:
    """Every checkpoint under root sorted by name, and the model folders there Easel cannot load.

    Hidden files and partial downloads are skipped; model folders are never walked into.
    """
    found: list[CheckpointInfo] = []
    unloadable: list[UnloadableFolder] = []
    if not root.is_dir():
        return found, unloadable
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
                if not is_model_folder(entry):
                    stack.append(entry)
                elif (problem := folder_problem(entry)) is not None:
                    unloadable.append(UnloadableFolder(rel, entry, problem))
                else:
                    stat = (entry / "model_index.json").stat()
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    found.append(CheckpointInfo(rel, entry, "diffusers", size, stat.st_mtime))
            elif entry.suffix.lower() in CHECKPOINT_SUFFIXES and entry.is_file():
                if entry.stem.lower().endswith(".vae"):  # model.vae.safetensors: that checkpoint's VAE
                    continue
                stat = entry.stat()
                fmt = {".safetensors": "safetensors", ".gguf": "gguf"}.get(entry.suffix.lower(), "pickle")
                found.append(CheckpointInfo(rel, entry, fmt, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda c: c.name.lower()), sorted(unloadable, key=lambda u: u.name.lower())


def _stem(info: CheckpointInfo) -> str:
    """The name without the file suffix (`sub/model`), which the other libraries answer to as well."""
    return info.name.removesuffix(info.name.rsplit("/", 1)[-1]) + info.model_name


def scan_folder(root: Path) -> list[CheckpointInfo]:
    """Every loadable checkpoint under root, sorted by name."""
    return scan(root)[0]


class CheckpointRegistry:
    """Scans the checkpoint folders on demand and answers lookups by any of A1111's names."""

    def __init__(self, folders: list[Path], hashes: HashCache):
        self.folders = folders
        self.hashes = hashes
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self._unloadable: list[UnloadableFolder] = []

    def refresh(self) -> list[CheckpointInfo]:
        items: list[CheckpointInfo] = []
        unloadable: list[UnloadableFolder] = []
        seen: set[str] = set()
        for folder in self.folders:
            found, problems = scan(folder)
            for info in found:
                if info.name in seen:  # the same name in a later folder: keep the first, like A1111
                    continue
                seen.add(info.name)
                items.append(info)
            unloadable += problems
        with self._lock:
            self._items = items
            self._unloadable = unloadable
        return list(items)

    def unloadable(self) -> list[UnloadableFolder]:
        """Model folders found at the last refresh that Easel cannot load, each with its reason."""
        with self._lock:
            return list(self._unloadable)

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
        """A loadable checkpoint by name, title, stem, file name or hash prefix (the `lookup` contract).

        A model folder that is on disk but cannot be loaded raises ModelNotFoundError with its reason.
        """
        items = self.all()
        query = query.strip()
        found = match(query, items, lambda i: (i.name, self.title(i)), lambda i: (i.model_name, i.path.name, _stem(i)))
        if found is not None:
            return found
        bare = query.split(" [", 1)[0] if query.endswith("]") else query
        if len(bare) >= 8 and all(c in "0123456789abcdef" for c in bare.lower()):
            for info in items:
                sha = self.hashes.cached(info.hash_source)
                if sha and sha.startswith(bare.lower()):
                    return info
        where = " or ".join(str(f) for f in self.folders)
        problem = match(query, self.unloadable(), lambda u: (u.name, u.path.name))
        raise ModelNotFoundError(query, [i.name for i in items], where, problem.reason if problem else "")
