"""The one model manager every tab, the API and the CLI share.

It owns the checkpoint registry and the model store (`store.py`), which holds loaded models
of every kind under one RAM and one device-memory budget; checkpoints also keep the count
limit `sd_checkpoints_limit` (default 1). The active model lives on the compute device; other
cached ones wait in system memory. Loading happens on the job queue's worker, so a
switch never races a generation.
"""
from __future__ import annotations

import gc
import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import torch

from ..devices import DeviceConfig, empty_cache
from ..paths import Paths
from ..settings import SettingsStore
from .fast import apply_fast
from .hashing import HashCache
from .checkpoint_preferences import CheckpointPreferences
from .memory import MemoryFlags, MemoryPolicy, kind_group, runnable_module
from .module_choice import ModuleLibrary
from .registry import CheckpointInfo, CheckpointRegistry, ModelNotFoundError
from .store import ModelStore, Sizes, measure

if TYPE_CHECKING:
    from .loader import LoadedModel, Progress

log = logging.getLogger(__name__)
KIND = "checkpoint"
# --weights: what the setting weight_storage means when left at Automatic (fp16/bf16 name the compute type)
WEIGHTS_FLAG = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8_e4m3fn", "nf4": "nf4"}
# a checkpoint's own weight storage (Models → Library, /easel/v1/checkpoints): Automatic follows the setting;
# fp16 / bf16 keep one checkpoint in 16 bits while the setting stores the others in fp8
CHECKPOINT_STORAGES = ("Automatic", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "nf4")


class WeightStorageError(ValueError):
    user_facing = True


class NoCheckpointError(LookupError):
    user_facing = True

    def __init__(self, folders: list[str]):
        where = " or ".join(folders)
        super().__init__(
            f"No Stable Diffusion checkpoint is installed. Put a .safetensors checkpoint (or a diffusers folder) "
            f"into {where}, then press the refresh button next to the checkpoint list. "
            "To try Easel without one, start it with --demo-model.")


class ModelManager:
    def __init__(self, paths: Paths, settings: SettingsStore, device: DeviceConfig, allow_pickle: bool = False,
                 store: ModelStore | None = None, memory_flags: MemoryFlags | None = None, weights: str = "auto",
                 attention_flag: str = "Automatic"):
        self.paths = paths
        self.settings = settings
        self.device = device
        self.allow_pickle = allow_pickle
        self.hashes = HashCache(paths.cache_dir / "hashes.json")
        self.registry = CheckpointRegistry(paths.checkpoint_dirs(), self.hashes)
        # every loaded model of every kind; checkpoints also keep the count limit sd_checkpoints_limit
        self.store = store if store is not None else ModelStore()
        self.store.set_limit(KIND, self._limit)
        self._current: str | None = None  # the active checkpoint's name, pinned in the store
        self._lock = threading.RLock()
        self.listeners: list[Callable[[LoadedModel], None]] = []
        # memory modes (--medvram/--lowvram/--gpu-weights, setting memory_mode), --weights
        self.memory = MemoryPolicy(settings, memory_flags or MemoryFlags(), device.device, self.store)
        self.weights = weights  # --fast is the setting fast_mode for this run (SettingsStore.apply_flag)
        self.attention_flag = attention_flag  # what --xformers / --opt-sdp-attention / ... chose (attention_backends)
        self.store.after_jobs.append(self._after_job)
        self.store.load_listeners.append(self._loaded_with)
        # Forge's "VAE / Text Encoder" choice, remembered per checkpoint (module_choice.py)
        self.module_choices = ModuleLibrary([paths.model_dir("vae"), paths.model_dir("text_encoder")],
                                            paths.cache_dir / "module_preferences.json")
        # the weight storage chosen for one checkpoint (fp8 for a big Flux file, 16 bits for the SD 1.5 one)
        self.storage_choices = CheckpointPreferences(paths.cache_dir / "weight_storage_preferences.json",
                                                     accept=lambda value: value in CHECKPOINT_STORAGES)

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
        """The active checkpoint (on the compute device); None before the first load."""
        with self._lock:
            return self.store.peek(KIND, self._current) if self._current is not None else None

    def loaded_names(self) -> list[str]:
        """Loaded checkpoints, least recently used first."""
        return [str(key) for key in self.store.keys(KIND)]

    def get(self, query: str | None = None, progress: Progress | None = None, modules: object = None) -> LoadedModel:
        """The loaded model for `query`, loading it (and evicting the oldest) when needed.

        `modules`: the VAE / text encoder files to use (`forge_additional_modules` of a request's
        override_settings); None: the checkpoint's remembered choice."""
        info = self.resolve(query)
        storage = self.weight_storage(info.name)
        chosen = self.module_choices.chosen(info.name, modules)
        loaded: list[LoadedModel] = []
        load = self._loader(info, storage, progress, loaded, offloadable=True, modules=chosen)
        with self._lock:
            model = self.store.peek(KIND, info.name)
            if model is not None and (model.info.mtime != info.mtime  # the file changed on disk: reload
                                      or model.weight_storage != storage  # or is to be stored otherwise
                                      or not model.built_from(chosen)):  # or built from other files
                self.store.evict(KIND, info.name)
                model = None
            if model is None:
                self._release_current()  # the count limit may now evict the active one: switching means it is done
                self.store.make_room(KIND, self._limit() - 1)
            # not scoped to a job: an X/Y/Z grid switches checkpoints inside one job, and the switch frees the last
            model = self.store.get(KIND, info.name, load, measure=_measure_checkpoint, on_evict=self._dropped,
                                   scoped=False, estimate=self._estimate(info))
            self._activate(info.name)
        self._announce(loaded)
        return model

    def get_companion(self, query: str, progress: Progress | None = None) -> LoadedModel:
        """A second checkpoint for the running job (the refiner), loaded beside the active one.

        The active checkpoint stays active and loaded; the companion is pinned until the job ends
        (`store.in_use`), after which the count limit holds again (it is the one to go).
        """
        info = self.resolve(query)
        loaded: list[LoadedModel] = []
        load = self._loader(info, self.weight_storage(info.name), progress, loaded, offloadable=True,
                            modules=self.module_choices.chosen(info.name))
        with self._lock:
            model = self.store.get(KIND, info.name, load, measure=_measure_checkpoint, on_evict=self._dropped,
                                   scoped=True, estimate=self._estimate(info))
            # placed by the memory policy like the active one (parked in RAM by an earlier switch, or offloaded)
            if model is not self.current and self.memory.place(model, active=False):
                self.store.remeasure(KIND, info.name)
        self._announce(loaded)
        return model

    def _loader(self, info: CheckpointInfo, storage: str, progress: Progress | None, loaded: list[LoadedModel],
                offloadable: bool, modules: tuple = ()) -> Callable[[], LoadedModel]:
        """The store's load function for `info`: companions (VAE, text encoders) from their folders, the weight
        storage applied, hashed; each model it builds is added to `loaded` (announced once the lock is free)."""

        def load() -> LoadedModel:
            from .loader import apply_weight_storage, load_checkpoint  # heavy: imported on first load

            # an offload mode builds the model in system memory: a small GPU never holds all of it
            offloaded = offloadable and self.memory.loads_offloaded(info.size)
            load_on = replace(self.device, device=torch.device("cpu")) if offloaded else self.device
            companions = {kind: self.paths.model_dir(kind) for kind in ("vae", "text_encoder")}
            model = load_checkpoint(info, load_on, self.allow_pickle, progress, companions, modules, storage=storage)
            model.device = self.device
            apply_weight_storage(model, storage)
            model.weight_storage = storage  # fp8 types, or the compute type --weights named
            if progress:
                progress("hashing")
            model.sha256 = self.hashes.sha256(info.hash_source)
            loaded.append(model)
            return model

        return load

    def _announce(self, loaded: list[LoadedModel]) -> None:
        for new in loaded:
            for listener in list(self.listeners):
                try:
                    listener(new)
                except Exception:  # a listener must never break loading
                    log.exception("model-loaded listener failed")

    def unload(self, query: str | None = None) -> None:
        with self._lock:
            names = [self.registry.find(query).name] if query else self.loaded_names()
            for name in names:
                self.store.evict(KIND, name)

    def weight_storage(self, checkpoint: str | None = None) -> str:
        """What `checkpoint`'s weights are stored as (`weight_storage_source` says why)."""
        return self.weight_storage_source(checkpoint)[0]

    def weight_storage_source(self, checkpoint: str | None = None) -> tuple[str, str]:
        """(storage, where the choice comes from): the checkpoint's own choice; else the setting weight_storage;
        else what --weights asked for. The most specific choice wins."""
        own = self.storage_choices.get(checkpoint) if checkpoint else None
        if own not in (None, "Automatic"):
            return str(own), "checkpoint"
        setting = str(self.settings.get("weight_storage") or "Automatic")
        if setting != "Automatic":
            return setting, "setting weight_storage"
        flag = WEIGHTS_FLAG.get(self.weights)
        return (flag, "--weights") if flag else ("Automatic", "default")

    def set_weight_storage(self, checkpoint: str, storage: str | None) -> str:
        """Remember `checkpoint`'s weight storage (None or Automatic: follow the setting); its next load uses it.
        Raises WeightStorageError naming the field for a value that is not a choice, or NF4 without bitsandbytes."""
        value = "Automatic" if storage in (None, "") else str(storage)
        if value not in CHECKPOINT_STORAGES:
            raise WeightStorageError(f"weight_storage: {value!r} is not one of {', '.join(CHECKPOINT_STORAGES)}")
        if value == "nf4":
            from .nf4 import available, unavailable_message

            if not available():
                raise WeightStorageError(unavailable_message("this checkpoint's weight_storage",
                                                             "Automatic, fp16, bf16 or fp8_e4m3fn"))
        self.storage_choices.set(checkpoint, None if value == "Automatic" else value)
        return value

    def _after_job(self) -> None:
        """Model offload leaves nothing on the device between jobs; the store then counts it in RAM."""
        self.memory.after_job()
        for name in self.loaded_names():  # the active checkpoint and a companion the job used
            model = self.store.peek(KIND, name)
            if model is not None and model.offloader is not None:
                self.store.remeasure(KIND, name)

    def _loaded_with(self, kind: str, key, value) -> None:
        """A model of another kind just loaded (ControlNet, image encoder, upscaler...): it follows the active
        checkpoint's memory mode, in the denoiser's group or its own (memory.py's kinds)."""
        name = f"{kind}:{key}"
        group, module = kind_group(kind, name), runnable_module(value)
        if group is not None and module is not None:
            self.memory.join(self.current, name, module, group)

    def _estimate(self, info: CheckpointInfo) -> Sizes:
        """Room to make before loading: the file's bytes in RAM (its state dict is read whole) and,
        on an accelerator, again on the device (an upper bound when weights are halved on load)."""
        on_device = self.device.device.type != "cpu" and not self.memory.loads_offloaded(info.size)
        return Sizes(ram=info.size, device=info.size if on_device else 0)

    def _limit(self) -> int:
        return max(1, int(self.settings.get("sd_checkpoints_limit") or 1))

    def _release_current(self) -> None:
        if self._current is not None:
            name, self._current = self._current, None
            self.store.unpin(KIND, name)

    def _activate(self, name: str) -> None:
        """Pin `name` as the active checkpoint and move it to the device; park the others in RAM."""
        if self._current != name:
            self._release_current()
            self.store.pin(KIND, name)
            self._current = name
        cpu = self.device.device.type == "cpu"
        moved = False
        for other_name in self.loaded_names():
            other = self.store.peek(KIND, other_name)
            if other is None:
                continue
            if other_name == name:  # fast mode first: block offload's pinned copies take the final layout
                changed = apply_fast(other, bool(self.settings.get("fast_mode")),
                                     str(self.settings.get("fast_compile") or "Automatic"))
                changed = self.memory.place(other) or changed
            elif other.offloader is not None or (not cpu and next(other.unet.parameters()).device.type != "cpu"):
                self.memory.release(other)  # parked in system memory, without hooks
                changed = True
            else:
                changed = False
            if changed:
                self.store.remeasure(KIND, other_name)
                moved = True
        if moved and not cpu:  # only then: emptying the allocator cache makes the next run re-allocate everything
            empty_cache(self.device.device)

    def _dropped(self, model: LoadedModel) -> None:
        """The store evicted a checkpoint: free its tensors even if something still holds the object."""
        if self._current == model.info.name:
            self._current = None
        if model.offloader is not None:  # hooks first: group offload refuses .to() and keeps copies
            model.offloader.remove()
        for module in model.modules():
            if model.weight_storage == "nf4":
                from .nf4 import drop_quantized

                drop_quantized(module)
            module.to("meta")
        gc.collect()
        empty_cache(self.device.device)


def _measure_checkpoint(model: LoadedModel) -> Sizes:
    """The weights, plus what features attached (e.g. the LoRA patcher's saved originals)."""
    return measure([*model.modules(), model.patches])
