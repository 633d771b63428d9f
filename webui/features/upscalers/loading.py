"""Model files -> ready-to-run spandrel models, kept in the model store.

Tensors are read by us (safetensors, or pickles through Easel's restricted unpickler when
--allow-pickle is given), never by spandrel's own file loader, so the pickle policy is the
same everywhere. spandrel then recognises the architecture from the tensor names and
shapes (ESRGAN, Real-ESRGAN/Compact, SwinIR, DAT, HAT, SCUNet, ... and the face models
GFPGAN and RestoreFormer) and builds the network. spandrel is imported on first use: it
takes a second or two to import and most sessions never upscale.

CodeFormer is not in spandrel itself but in the separate spandrel_extra_arches package,
whose CodeFormer code carries a non-commercial licence; Easel does not install it, but
uses it when the user has installed it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...model_manager.safe_unpickle import PICKLE_SUFFIXES, load_pickle_data
from ...model_manager.store import ModelStore

log = logging.getLogger(__name__)
_registry_lock = threading.Lock()
_extra_installed = False


class UpscalerLoadError(ValueError):
    """A model file could not be used; the message names the file and the reason."""

    user_facing = True


@dataclass
class LoadedUpscaler:
    """A spandrel model descriptor placed on a device, with what we need to know about it."""

    path: Path
    descriptor: Any  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.id

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def purpose(self) -> str:
        return self.descriptor.purpose


def _spandrel():
    """Import spandrel, adding spandrel_extra_arches' architectures once if the user installed it."""
    global _extra_installed
    import spandrel

    with _registry_lock:
        if not _extra_installed:
            _extra_installed = True
            try:
                import spandrel_extra_arches  # type: ignore[import-not-found]
            except ImportError:
                pass
            else:
                try:
                    spandrel_extra_arches.install(ignore_duplicates=True)
                except Exception:  # an incompatible version must not break upscaling
                    log.warning("spandrel_extra_arches is installed but could not be registered", exc_info=True)
    return spandrel


def read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The file's tensors, with training wrappers ("params_ema", "state_dict", ...) removed."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        elif suffix in PICKLE_SUFFIXES:
            data = load_pickle_data(path, allow_pickle)
        else:
            raise UpscalerLoadError(f"{path.name}: unsupported model file type {suffix!r}")
    except UpscalerLoadError:
        raise
    except PermissionError as exc:  # pickle refused: the message says how to allow it
        raise UpscalerLoadError(str(exc)) from None
    except ValueError as exc:  # UnsafePickleError, safetensors header errors
        raise UpscalerLoadError(f"{path.name}: {exc}") from None
    except Exception as exc:
        raise UpscalerLoadError(f"{path.name}: the file could not be read ({exc})") from None
    if not isinstance(data, dict):
        raise UpscalerLoadError(f"{path.name}: the file does not contain model weights")
    return _spandrel().canonicalize_state_dict(data)


def pick_dtype(descriptor: Any, device: torch.device, preferred: torch.dtype) -> torch.dtype:
    """The engine's dtype where the architecture supports it; float32 otherwise (and always on CPU)."""
    if device.type == "cpu" or preferred == torch.float32:
        return torch.float32
    if preferred == torch.float16 and descriptor.supports_half:
        return torch.float16
    if preferred == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    if preferred == torch.float16 and descriptor.supports_bfloat16 and device.type == "cuda" \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(path: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool) -> LoadedUpscaler:
    """Build the network for a file on `device`; UpscalerLoadError when spandrel does not know it."""
    state_dict = read_state_dict(path, allow_pickle)
    spandrel = _spandrel()
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(state_dict)
    except spandrel.UnsupportedModelError:
        raise UpscalerLoadError(f"{path.name}: not a model architecture Easel can run (spandrel does not "
                                "recognise its layout)") from None
    except Exception as exc:  # shapes that match a detector but not the architecture
        raise UpscalerLoadError(f"{path.name}: the weights do not fit the detected architecture ({exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerLoadError(f"{path.name}: a {descriptor.architecture.name} model ({descriptor.purpose}) "
                                "is not an image-to-image model")
    target = pick_dtype(descriptor, device, dtype)
    descriptor.to(device).to(target).eval()
    return LoadedUpscaler(path, descriptor, device, target)


class ModelCache:
    """The last few loaded models of one kind, keyed by file and mtime; they live in the model store.

    `store`: the app's ModelStore (one budget for every kind); without one, a private store.
    `size` is the kind's count limit (least recently used goes first).
    """

    def __init__(self, size: int = 2, store: ModelStore | None = None, kind: str = "upscaler"):
        self.size = size
        self.store = store if store is not None else ModelStore()
        self.kind = kind
        self.store.set_limit(kind, lambda: self.size)

    def get(self, path: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool) -> LoadedUpscaler:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device), dtype)
        if self.store.peek(self.kind, key) is None:  # a changed file: its older versions go first
            self.store.evict_where(self.kind, lambda k: k[0] == key[0])
        return self.store.get(self.kind, key, lambda: load_model(path, device, dtype, allow_pickle))

    def clear(self) -> None:
        self.store.evict_where(self.kind)

    def __len__(self) -> int:
        return len(self.store.keys(self.kind))
