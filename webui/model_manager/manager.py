"""The one model manager every tab, the API and the CLI share.

It owns the checkpoint registry and a small cache of loaded checkpoints (the setting
`sd_checkpoints_limit`, default 1). The active model lives on the compute device; other
cached ones wait in system memory. Loading happens on the job queue's worker, so a
switch never races a generation.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

import torch

from ..devices import DeviceConfig, empty_cache
from ..paths import Paths
from ..settings import SettingsStore
from .hashing import HashCache
from .registry import CheckpointInfo, CheckpointRegistry, ModelNotFoundError

if TYPE_CHECKING:
    from .loader import LoadedModel, Progress

log = logging.getLogger(__name__)


class NoCheckpointError(LookupError):
    user_facing = True

    def __init__(self, folders: list[str]):
        where = " or ".join(folders)
        super().__init__(
            f"No Stable Diffusion checkpoint is installed. Put a .safetensors checkpoint (or a diffusers folder) "
            f"into {where}, then press the refresh button next to the checkpoint list. "
            "To try Easel without one, start it with --demo-model.")


class ModelManager:
    def __init__(self, paths: Paths, settings: SettingsStore, device: DeviceConfig, allow_pickle: bool = False):
        self.paths = paths
        self.settings = settings
        self.device = device
        self.allow_pickle = allow_pickle
        self.hashes = HashCache(paths.cache_dir / "hashes.json")
        self.registry = CheckpointRegistry(paths.checkpoint_dirs(), self.hashes)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self.listeners: list[Callable[[LoadedModel], None]] = []

    # ---- listing -------------------------------------------------------------------------

    def refresh(self) -> list[CheckpointInfo]:
        return self.registry.refresh()

    def checkpoints(self) -> list[CheckpointInfo]:
        return self.registry.all()

    def titles(self) -> list[str]:
        return [self.registry.title(c) for c in self.registry.all()]

    def find(self, query: str) -> CheckpointInfo:
        return self.registry.find(query)

    def resolve(self, query: str | None) -> CheckpointInfo:
        """The checkpoint a request asks for; else the selected one; else the first installed."""
        if query:
            return self.registry.find(query)
        selected = self.settings.get("sd_model_checkpoint")
        if selected:
            try:
                return self.registry.find(selected)
            except ModelNotFoundError:
                log.warning("selected checkpoint %r is gone; using the first one", selected)
        items = self.registry.all() or self.registry.refresh()
        if not items:
            raise NoCheckpointError([str(p) for p in self.paths.checkpoint_dirs()])
        return items[0]

    # ---- loading -------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        with self._lock:
            return next(reversed(self._loaded.values()), None)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def get(self, query: str | None = None, progress: Progress | None = None) -> LoadedModel:
        """The loaded model for `query`, loading it (and evicting the oldest) when needed."""
        info = self.resolve(query)
        with self._lock:
            model = self._loaded.get(info.name)
            if model is not None and model.info.mtime == info.mtime:
                self._activate(info.name)
                return model
            if model is not None:  # the file changed on disk: reload
                self._unload(info.name)
            self._make_room(self._limit() - 1)
            from .loader import load_checkpoint  # heavy (diffusers, transformers): imported on first load

            model = load_checkpoint(info, self.device, self.allow_pickle, progress)
            if progress:
                progress("hashing")
            model.sha256 = self.hashes.sha256(info.hash_source)
            self._loaded[info.name] = model
            self._activate(info.name)
        for listener in list(self.listeners):
            try:
                listener(model)
            except Exception:  # a listener must never break loading
                log.exception("model-loaded listener failed")
        return model

    def unload(self, query: str | None = None) -> None:
        with self._lock:
            names = [self.registry.find(query).name] if query else list(self._loaded)
            for name in names:
                self._unload(name)

    def _limit(self) -> int:
        return max(1, int(self.settings.get("sd_checkpoints_limit") or 1))

    def _activate(self, name: str) -> None:
        """Move `name` to the device and to the end of the LRU order; park the others in RAM."""
        self._loaded.move_to_end(name)
        if self.device.device.type == "cpu":
            return
        moved = False
        for other_name, other in self._loaded.items():
            target = self.device.device if other_name == name else torch.device("cpu")
            if next(other.unet.parameters()).device.type != target.type:
                other.to(target)
                moved = True
        if moved:  # only then: emptying the allocator cache makes the next run re-allocate everything
            empty_cache(self.device.device)

    def _make_room(self, keep: int) -> None:
        while len(self._loaded) > max(keep, 0):
            self._unload(next(iter(self._loaded)))

    def _unload(self, name: str) -> None:
        model = self._loaded.pop(name, None)
        if model is None:
            return
        for module in model.modules():
            module.to("meta")
        del model
        gc.collect()
        empty_cache(self.device.device)
