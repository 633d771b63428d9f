"""Separate VAE files: listing, choosing one per request, and swapping it into a loaded model.

The choice follows AUTOMATIC1111: the setting `sd_vae` is "Automatic", "None" (the VAE
baked into the checkpoint) or a file from models/VAE. Automatic means the checkpoint's
remembered preference, else a file named like the checkpoint (`model.vae.safetensors`),
else the baked-in VAE. With `sd_vae_overrides_per_model_preferences` off, a remembered
preference wins over an explicit choice. Preferences live in cache/vae_preferences.json
rather than the `<name>.json` sidecar, because that file overrides architecture detection.

Swapping copies the file's weights into the model's existing VAE modules; the first swap
keeps a CPU copy of the baked-in weights so "None" restores them bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import model_files
from .checkpoint_preferences import CheckpointPreferences
from .hashing import HashCache, autov2
from .lookup import ModelNotFound, find_file
from .safe_unpickle import PICKLE_SUFFIXES

if TYPE_CHECKING:
    from .loader import LoadedModel
    from .registry import CheckpointInfo

AUTOMATIC = "Automatic"
NONE = "None"
VAE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
_NAMED_LIKE = (".vae.safetensors", ".vae.pt", ".vae.ckpt")


class VaeNotFoundError(ModelNotFound):
    """No VAE file answers to the name; the message names the `sd_vae` setting and offers Automatic and None."""

    def __init__(self, query: str, available: list[str], where: str = ""):
        super().__init__("VAE", query, available, where=where, field="sd_vae")

    def _message(self) -> str:
        return super()._message() + f"; or choose {AUTOMATIC} or {NONE}"


class VaeLoadError(RuntimeError):
    user_facing = True


class VaeUnreadableError(LookupError):
    """No usable VAE answers to the name: the file exists but cannot be a VAE (unreadable, truncated,
    no VAE tensors). A LookupError like VaeNotFoundError, so every caller refuses both the same way."""

    user_facing = True


@dataclass(frozen=True)
class VaeChoice:
    """The VAE a generation used: a file (name, path, sha256) or the checkpoint's own (path None)."""

    path: Path | None = None
    sha256: str = ""
    source: str = "baked"  # baked | setting | preference | named-like-checkpoint

    @property
    def name(self) -> str | None:
        return self.path.name if self.path else None

    @property
    def short_hash(self) -> str | None:
        return autov2(self.sha256) if self.sha256 else None


class VaeLibrary:
    """VAE files in models/VAE (and `*.vae.*` files beside checkpoints), and per-checkpoint preferences."""

    def __init__(self, folders: list[Path], checkpoint_folders: list[Path], hashes: HashCache,
                 preferences_file: Path, allow_pickle: bool = False):
        self.folders = folders
        self.checkpoint_folders = checkpoint_folders
        self.hashes = hashes
        self.preferences = CheckpointPreferences(preferences_file)
        self.allow_pickle = allow_pickle

    # ---- listing ------------------------------------------------------------------------------

    def _suffixes(self) -> tuple[str, ...]:
        return VAE_SUFFIXES if self.allow_pickle else (".safetensors",)

    def files(self) -> list[Path]:
        # a diffusers VAE folder's weights are a VAE file, so model folders are walked into here
        found = model_files(self.folders, self._suffixes(), inside_model_folders=True)
        for folder in self.checkpoint_folders:
            if folder.is_dir():
                found += [p for p in folder.rglob("*.vae.*") if p.suffix.lower() in self._suffixes() and p.is_file()]
        unique = {p.resolve(): p for p in found}
        return sorted(unique.values(), key=lambda p: p.name.lower())

    def names(self) -> list[str]:
        """File names as the dropdown, the settings and infotext's `VAE:` show them."""
        return [p.name for p in self.files()]

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE, *self.names()]

    def find(self, query: str) -> Path:
        """A VAE file by file name, stem or path relative to models/VAE (the `lookup` contract)."""
        return find_file(query, self.files(), self.folders, VaeNotFoundError, shown=lambda path: path.name)

    def check(self, selection: Any) -> None:
        """Raise VaeNotFoundError unless `selection` is Automatic, None or an installed file, and
        VaeUnreadableError when that file cannot be read as a VAE, so `sd_vae` never names a file
        that would fail every generation after it is saved."""
        if selection in (None, "", AUTOMATIC, NONE):
            return
        check_vae_file(self.find(str(selection)))

    def short_hash(self, path: Path) -> str | None:
        sha = self.hashes.cached(path)
        return autov2(sha) if sha else None

    # ---- preferences --------------------------------------------------------------------------

    def preference(self, checkpoint: str) -> str | None:
        """The remembered VAE for a checkpoint name ("None" = its baked-in one), or None if none is remembered."""
        return self.preferences.get(checkpoint)

    def set_preference(self, checkpoint: str, vae: str | None) -> None:
        """Remember (vae: a file name or "None") or forget (vae: None / "Automatic") a checkpoint's VAE."""
        if vae not in (None, "", AUTOMATIC, NONE):
            vae = self.find(vae).name
        self.preferences.set(checkpoint, None if vae in (None, "", AUTOMATIC) else vae)

    # ---- choosing -----------------------------------------------------------------------------

    def named_like(self, checkpoint: CheckpointInfo) -> Path | None:
        """`model.vae.safetensors` (or .pt/.ckpt) beside the checkpoint or in models/VAE, as AUTOMATIC1111 looks."""
        stem = checkpoint.path.name if checkpoint.format == "diffusers" else checkpoint.path.stem
        places = [checkpoint.path.parent, *self.folders]
        for folder in places:
            for suffix in _NAMED_LIKE:
                candidate = folder / (stem + suffix)
                if candidate.is_file() and candidate.suffix.lower() in self._suffixes():
                    return candidate
        return None

    def resolve(self, checkpoint: CheckpointInfo, selection: str | None, overrides_preferences: bool = True
                ) -> tuple[Path | None, str]:
        """(file or None for baked-in, why) for a checkpoint and the `sd_vae` value in force."""
        selection = (selection or AUTOMATIC).strip()
        preferred = self.preference(checkpoint.name)
        if selection != AUTOMATIC and (overrides_preferences or preferred is None):
            return (None if selection == NONE else self.find(selection)), "setting"
        if preferred is not None:
            if preferred == NONE:
                return None, "preference"
            try:
                return self.find(preferred), "preference"
            except VaeNotFoundError:
                pass  # the preferred file was removed: fall through to Automatic
        named = self.named_like(checkpoint)
        if named is not None:
            return named, "named-like-checkpoint"
        return None, "baked"

    # ---- applying (on the queue worker) -------------------------------------------------------

    def prepare(self, model: LoadedModel, options: dict[str, Any]) -> VaeChoice:
        """Put the VAE that `options` (settings + override_settings) ask for into the model; say which."""
        path, source = self.resolve(model.info, options.get("sd_vae"),
                                    bool(options.get("sd_vae_overrides_per_model_preferences", True)))
        apply_vae(model, path, self.allow_pickle)
        return VaeChoice(path, self.hashes.sha256(path) if path else "", source)


def check_vae_file(path: Path) -> None:
    """Cheap checks of a VAE file before it is chosen: a safetensors header that parses, tensor data
    inside the file, and encoder/decoder tensors. Pickle files (listed only with --allow-pickle) are
    read at use."""
    from .library import read_safetensors_header

    if path.suffix.lower() != ".safetensors":
        return
    try:
        header = read_safetensors_header(path)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            data_start = 8 + int.from_bytes(handle.read(8), "little")
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise VaeUnreadableError(f"sd_vae: cannot read {path.name} ({exc})") from None
    if data_start + end > size:
        raise VaeUnreadableError(f"sd_vae: {path.name} is truncated ({size} bytes, its header describes more)")
    keys = [k.removeprefix("first_stage_model.") for k in tensors]
    if not any(k.startswith("encoder.") for k in keys) or not any(k.startswith("decoder.") for k in keys):
        raise VaeUnreadableError(f"sd_vae: {path.name} holds no VAE (no encoder and decoder tensors)")


def vae_state_dict(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A VAE file's tensors under diffusers AutoencoderKL names, whichever layout the file uses.

    Accepts original-layout files (`encoder.down.0...`, as most published VAEs), the same with
    a `first_stage_model.` prefix, and diffusers-layout files (`encoder.down_blocks.0...`).
    """
    from .convert import VAE_PREFIX, vae_to_diffusers

    if any(k.startswith(VAE_PREFIX) for k in tensors):
        tensors = {k[len(VAE_PREFIX):]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in tensors):
        return dict(tensors)
    converted, _ = vae_to_diffusers(tensors, config)
    return converted


def read_vae_file(path: Path, config: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    from .loader import read_tensors

    try:
        tensors = read_tensors(path, allow_pickle)
    except (OSError, ValueError, PermissionError) as exc:
        raise VaeLoadError(f"sd_vae: cannot read {path.name} ({exc})") from exc
    return vae_state_dict(tensors, config)


def apply_vae(model: LoadedModel, path: Path | None, allow_pickle: bool = False) -> None:
    """Swap the model's VAE weights for a file's (or back to the baked-in ones when path is None).

    Every name and shape is checked before anything is copied, so a wrong file leaves the
    model as it was. The same file (by path and mtime) is not read twice in a row.
    """
    wanted = None if path is None else (str(path), path.stat().st_mtime)
    if model.patches.get("vae_file") == wanted:
        return
    if "vae_baked" not in model.patches:
        if path is None:
            return
        model.patches["vae_baked"] = {k: v.detach().to("cpu", copy=True) for k, v in model.vae.state_dict().items()}
    if path is None:
        weights = model.patches["vae_baked"]
    else:
        weights = read_vae_file(path, model.configs["vae"], allow_pickle)
        expected = model.vae.state_dict()
        missing = [k for k in expected if k not in weights]
        if missing:
            raise VaeLoadError(f"sd_vae: {path.name} is not a VAE for this model: {len(missing)} tensors missing "
                               f"(first: {', '.join(missing[:3])})")
        for key, target in expected.items():
            if tuple(weights[key].shape) != tuple(target.shape):
                raise VaeLoadError(f"sd_vae: {path.name} does not fit this model: {key} has shape "
                                   f"{tuple(weights[key].shape)}, the model expects {tuple(target.shape)}")
        weights = {k: weights[k] for k in expected}
    model.vae.load_state_dict(weights, strict=True)
    model.patches["vae_file"] = wanted
