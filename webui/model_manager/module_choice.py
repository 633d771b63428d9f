"""Forge's "VAE / Text Encoder" choice: separate files from models/VAE and models/text_encoder that
take the place of a checkpoint's own parts (or fill in what a transformer-only file leaves out).

Names follow Forge so its clients keep working: the option `forge_additional_modules` (a list of
file names or paths; per request in `override_settings`), `GET /sdapi/v1/sd-modules`, and the
infotext keys `Module 1: ae, Module 2: clip_l, ...` (file stems). Unlike Forge, whose choice is
one global list, the choice is remembered per checkpoint (cache/module_preferences.json, beside
the VAE preferences), because a Flux checkpoint's encoders mean nothing to an SDXL one.

Which part a chosen file becomes is decided by its tensors, not its name, so this is the same for
every family: a VAE by its latent channels, a text encoder by building the family's module on the
meta device and comparing names and shapes (`loader.fits`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..paths import model_files
from .checkpoint_preferences import CheckpointPreferences, is_name_list
from .lookup import ModelNotFound, find_file

SETTING = "forge_additional_modules"
MODULE_SUFFIXES = (".safetensors", ".gguf")
INFOTEXT_PREFIX = "Module "


class ModuleFileNotFound(ModelNotFound):
    """No VAE or text encoder file answers to the name; names the option."""

    def __init__(self, query: str, available: list[str], where: str = ""):
        super().__init__("VAE / text encoder", query, available, where=where, field=SETTING)


def as_list(value: Any) -> list[str]:
    """The option's value as names: a list (Forge's shape), or one name, or "" / None for none."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v for v in value if v.strip()]
    raise ValueError(f"{SETTING}: expected a list of file names, got {type(value).__name__}")


class ModuleLibrary:
    """The files a user may choose (models/VAE and models/text_encoder) and each checkpoint's choice."""

    def __init__(self, folders: list[Path], preferences_file: Path):
        self.folders = folders
        self.preferences = CheckpointPreferences(preferences_file, accept=is_name_list)

    def files(self) -> list[Path]:
        unique = {p.resolve(): p for p in model_files(self.folders, MODULE_SUFFIXES, inside_model_folders=True)}
        return sorted(unique.values(), key=lambda p: p.name.lower())

    def shown(self, path: Path) -> str:
        """A file as clients see it: `VAE/ae.safetensors`, `text_encoder/clip_l.safetensors` (Forge shows
        the server's absolute paths; Easel never does, and `find` takes either)."""
        for folder in self.folders:
            try:
                return f"{folder.name}/{path.relative_to(folder).as_posix()}"
            except ValueError:
                continue
        return path.name

    def names(self) -> list[str]:
        """File names, as Forge's dropdown and `sd-modules` list them."""
        return [p.name for p in self.files()]

    def find(self, query: str) -> Path:
        """A file by name, stem (as the infotext writes it), relative path, or a path ending in its name
        (Forge's clients send the server's absolute paths)."""
        files = self.files()
        try:
            return find_file(query, files, self.folders, ModuleFileNotFound, shown=lambda path: path.name)
        except ModelNotFound:
            name = Path(query.strip()).name
            if name and name != query.strip():
                return find_file(name, files, self.folders, ModuleFileNotFound, shown=lambda path: path.name)
            raise

    def resolve_names(self, value: Any) -> tuple[Path, ...]:
        """The files `value` names, in order, without repeats; raises ValueError / ModelNotFound naming the option."""
        paths: list[Path] = []
        for name in as_list(value):
            path = self.find(name)
            if path not in paths:
                paths.append(path)
        return tuple(paths)

    def check(self, value: Any) -> None:
        self.resolve_names(value)

    # ---- per checkpoint ---------------------------------------------------------------------------

    def preference(self, checkpoint: str) -> list[str]:
        """The file names remembered for a checkpoint (empty: its own parts, companions found by name)."""
        return self.preferences.get(checkpoint) or []

    def set_preference(self, checkpoint: str, value: Any) -> list[str]:
        """Remember a checkpoint's choice (names checked first); an empty choice forgets it."""
        names = [p.name for p in self.resolve_names(value)]
        self.preferences.set(checkpoint, names or None)
        return names

    def chosen(self, checkpoint: str, override: Any = None) -> tuple[Path, ...]:
        """The files a load of `checkpoint` uses: the request's override, else the remembered choice.
        A remembered file since removed is skipped (the checkpoint still loads with what remains)."""
        if override is not None:
            return self.resolve_names(override)
        paths: list[Path] = []
        for name in self.preference(checkpoint):
            try:
                paths.append(self.find(name))
            except ModelNotFound:
                continue
        return tuple(paths)


def infotext_params(files: Iterable[Path]) -> dict[str, str]:
    """Forge's keys: `Module 1: ae, Module 2: clip_l, ...` (file stems)."""
    return {f"{INFOTEXT_PREFIX}{i}": Path(p).stem for i, p in enumerate(files, 1)}


def pasted_modules(params: dict[str, str]) -> list[str]:
    """The `Module N` values of an infotext, in N's order (Forge pastes them as its VAE / TE choice)."""
    numbered = []
    for key, value in params.items():
        number = key[len(INFOTEXT_PREFIX):]
        if key.startswith(INFOTEXT_PREFIX) and number.isdigit() and str(value).strip():
            numbered.append((int(number), str(value).strip()))
    return [value for _, value in sorted(numbered)]
