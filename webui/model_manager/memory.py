"""Memory modes: where a checkpoint's components live between and during their uses.

Three ways to run, as the weights compare with the device memory there is:

- **Resident**: every component stays on the compute device (fastest; what fits does this).
- **Model offload** (AUTOMATIC1111's `--medvram`): components wait in system memory and each
  moves to the device when it runs, the one used before leaving it (text encoders, then the
  denoiser with its ControlNets, then the VAE), as diffusers' model CPU offload does. Easel
  runs its own sampler loop rather than a pipeline, so the moves are diffusers `ModelHook`s on
  the components themselves (`ModelOffloadHook`), not `enable_model_cpu_offload`.
- **Block offload** (`--lowvram`): diffusers' group offloading (`apply_group_offloading`)
  streams the denoiser's blocks (block level; on CUDA with a side stream, so the next block's
  copy overlaps the current block's compute) and the text encoders' and VAE's layers (leaf
  level: our code calls `vae.decode` and the encoder's final norm directly, which a block-level
  group led by `forward` would never onload). With a GPU-weights budget (Forge's `--gpu-weights`)
  the denoiser's blocks that fit in it stay on the device and only the rest stream
  (`residency_plan`), as Forge's GPU Weights slider does.

Besides the checkpoint's components, every other kind of model that runs on the device during
a job follows the active checkpoint's mode (`join`): ControlNets, T2I-Adapters and InstantID's
IdentityNet run at every step with the denoiser and join its group; IP-Adapter/Redux image
encoders, PhotoMaker's ID encoder, upscalers (Extras and hires fix) and face restorers run once
and get a group of their own, so in model offload each is on the device only while it runs. A
companion checkpoint (the refiner, a hires-fix checkpoint) gets its own placement with the same
policy; all offloaders share one `DeviceSlot`, so one group of any of them is on the device at a
time. The tiny preview VAE (a few MB) stays where it loads. A denoiser with NF4 weights
(`nf4.py`) moves whole in block offload: group offloading moves `param.data` only, not
bitsandbytes' quantization state.

`choose_mode` picks one from the setting `memory_mode` (Automatic follows the flags, then the
free device memory), the flags (`--medvram`, `--medvram-sdxl`, `--lowvram`) and the GPU-weights
budget (Forge's `--gpu-weights` MB, or the setting `gpu_weights_mb`), which is capped by the
model store's device budget minus what other models already hold there: one budget for every
kind. On the CPU the onload and offload devices are the same, so the moves cost nothing, but
every hook still runs: `Offloader.moves` records each move in order (tests and logs read it).
"""
from __future__ import annotations

import logging
import weakref
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable

import torch

if TYPE_CHECKING:
    from .loader import LoadedModel

log = logging.getLogger(__name__)
GB = 1024 ** 3
MEMORY_MODES = ("Automatic", "Resident", "Model offload", "Block offload")
AUTOMATIC, RESIDENT, MODEL_OFFLOAD, BLOCK_OFFLOAD = MEMORY_MODES
HEADROOM = 0.75  # weights may take this share of the budget; the rest is for activations (and the VAE's decode)
DENOISER = "denoiser"  # the group that runs at every step: the UNet with its ControlNets
# components that run together move together: SDXL's two text encoders encode each prompt in turn
GROUPS = {"unet": DENOISER, "text_encoder": "text encoders", "text_encoder_2": "text encoders"}
HOOK_NAME = "easel_model_offload"
ONLOAD, OFFLOAD = "onload", "offload"
GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
# the model store's kinds that run on the device during a job besides checkpoints: at every step with the
# denoiser (they join its group), or once, alone (a group of their own: on the device only while they run)
WITH_DENOISER_KINDS = ("controlnet", "t2i_adapter", "identitynet")
ALONE_KINDS = ("clip_vision", "photomaker", "upscaler", "face_restorer")


def kind_group(kind: str, name: str) -> str | None:
    """The group a loaded model of `kind` (named `name`) runs in; None: it does not follow the memory mode."""
    if kind in WITH_DENOISER_KINDS:
        return DENOISER
    return name if kind in ALONE_KINDS else None


def runnable_module(value: Any) -> torch.nn.Module | None:
    """The module that runs, from a model store value: the module itself, the first module of a tuple
    (PhotoMaker's encoder with its LoRA), or a spandrel descriptor's model (upscalers, face restorers)."""
    if isinstance(value, torch.nn.Module):
        return value
    if isinstance(value, tuple):
        return next((v for v in value if isinstance(v, torch.nn.Module)), None)
    model = getattr(getattr(value, "descriptor", None), "model", None)
    return model if isinstance(model, torch.nn.Module) else None


@dataclass(frozen=True)
class MemoryFlags:
    """The command line's choice: AUTOMATIC1111's --medvram / --medvram-sdxl / --lowvram, Forge's --gpu-weights."""

    mode: str = AUTOMATIC       # Resident / Model offload / Block offload, or Automatic
    sdxl_only: bool = False     # --medvram-sdxl: model offload for SDXL only, other families decide automatically
    gpu_weights_mb: float = 0.0  # 0: no budget of its own (the store's device budget and free memory decide)

    @classmethod
    def from_flags(cls, lowvram: bool = False, medvram: bool = False, medvram_sdxl: bool = False,
                   gpu_weights_mb: float = 0.0, memory_mode: str = AUTOMATIC) -> "MemoryFlags":
        mode = memory_mode
        if lowvram:
            mode = BLOCK_OFFLOAD
        elif medvram or medvram_sdxl:
            mode = MODEL_OFFLOAD
        return cls(mode, medvram_sdxl and not medvram and not lowvram, max(0.0, float(gpu_weights_mb or 0)))


@dataclass(frozen=True)
class Choice:
    mode: str
    reason: str
    resident_bytes: int = 0  # block offload: denoiser weights that may stay on the device (a GPU-weights budget)


def choose_mode(setting: str, flags: MemoryFlags, family: str, total_bytes: int, largest_bytes: int,
                budget_bytes: int | None) -> Choice:
    """The mode for one checkpoint. A setting other than Automatic wins, then the flags, then the memory.

    `budget_bytes`: device memory the weights may use (None: the device shares system memory,
    e.g. the CPU, so offloading would save nothing). Automatic keeps everything resident when the
    weights take at most HEADROOM of it, else offloads whole models when the largest group fits, else blocks.
    """
    if setting in MEMORY_MODES[1:]:
        return Choice(setting, "setting memory_mode")
    if flags.mode in MEMORY_MODES[1:] and (not flags.sdxl_only or family.startswith("sdxl")):
        return Choice(flags.mode, "--medvram-sdxl" if flags.sdxl_only else "command-line flag")
    if budget_bytes is None:
        return Choice(RESIDENT, "automatic: the device uses system memory")
    usable = budget_bytes * HEADROOM
    numbers = f"{total_bytes / 2 ** 20:.0f} MB of weights, {budget_bytes / 2 ** 20:.0f} MB budget"
    if total_bytes <= usable:
        return Choice(RESIDENT, f"automatic: {numbers}")
    if largest_bytes <= usable:
        return Choice(MODEL_OFFLOAD, f"automatic: {numbers}")
    return Choice(BLOCK_OFFLOAD, f"automatic: {numbers}")


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()] if not t.is_meta)


def components_of(model: "LoadedModel") -> dict[str, torch.nn.Module]:
    """The checkpoint's components by name, in the order they run (text encoders, denoiser, VAE)."""
    return {**model.text_encoders, "unet": model.unet, "vae": model.vae}


def device_budget(device: torch.device, own_bytes: int, store_budget: int | None, others_on_device: int,
                  gpu_weights_mb: float) -> int | None:
    """What the weights of one checkpoint may take on `device`: free memory (plus what the checkpoint
    already holds there), the store's budget less other models, and the GPU-weights budget. Off CUDA
    only a GPU-weights budget given on purpose counts (None without one: nothing to save there)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return int(gpu_weights_mb * 2 ** 20) if gpu_weights_mb > 0 else None
    free, _total = torch.cuda.mem_get_info(device)
    limits = [free + own_bytes]
    if store_budget is not None:
        limits.append(max(0, store_budget - others_on_device))
    if gpu_weights_mb > 0:
        limits.append(int(gpu_weights_mb * 2 ** 20))
    return min(limits)


# ---- the hooks -----------------------------------------------------------------------------------


class DeviceSlot:
    """Model offload across offloaders (the active checkpoint, a companion): the one holding a group on
    the device, parked before another one onloads."""

    def __init__(self) -> None:
        self.holder: "Offloader | None" = None


class Offloader:
    """Places one checkpoint's components for a memory mode and moves them as they run.

    Components belong to groups (the text encoders, the denoiser with its ControlNets, the VAE,
    and each model that runs alone); in model offload at most one group is on the device at a
    time. `moves` keeps the last moves in order, as (component, "onload" or "offload"): on the CPU
    both devices are the CPU and a move costs nothing, so this record is what shows where each
    component would be.
    """

    def __init__(self, onload: torch.device, offload: torch.device | None = None, slot: DeviceSlot | None = None):
        self.slot = slot if slot is not None else DeviceSlot()
        self.onload = torch.device(onload)
        self.offload = torch.device(offload) if offload is not None else torch.device("cpu")
        self.mode = RESIDENT
        self.modules: dict[str, torch.nn.Module] = {}
        self.groups: dict[str, str] = {}
        # models that run with the denoiser (ControlNets): weakly held, so an evicted one is freed
        self.extras: weakref.WeakValueDictionary[str, torch.nn.Module] = weakref.WeakValueDictionary()
        self.on_device: str | None = None  # the group now onloaded (model offload)
        self.resident_bytes = 0  # block offload: how much of the denoiser may stay on the device
        self.resident_blocks: list[str] = []  # block offload: the denoiser's blocks kept there
        self.streamed_blocks: list[str] = []  # and those streamed through it
        self.moves: deque[tuple[str, str]] = deque(maxlen=4096)  # (component, "onload" | "offload")

    # ---- placing ----

    def apply(self, mode: str, components: dict[str, torch.nn.Module], resident_bytes: int = 0) -> None:
        """Take the components (name -> module) and place them for `mode`, undoing the previous mode first.
        `resident_bytes`: in block offload, the denoiser's weights that may stay on the device (0: all stream)."""
        extras, groups = dict(self.extras), dict(self.groups)
        self.remove()
        self.modules = dict(components)
        self.groups = {name: GROUPS.get(name, name) for name in components}
        self.mode = mode
        self.resident_bytes = resident_bytes
        for name, module in self.modules.items():
            self._place(name, module)
        for name, module in extras.items():
            self.add(name, module, groups.get(name, DENOISER))

    def add(self, name: str, module: torch.nn.Module, group: str = DENOISER) -> None:
        """Another model joins this placement: in the denoiser's group (a ControlNet), or in its own
        (`group` = its name: an image encoder, an upscaler), on the device only while it runs."""
        if name in self.modules or name in self.extras or any(p.is_meta for p in module.parameters()):
            return
        _unhook(module)  # hooks another placement left (a checkpoint switch)
        self.extras[name] = module
        self.groups[name] = group
        self._place(name, module)

    def _all(self) -> list[tuple[str, torch.nn.Module]]:
        return [*self.modules.items(), *self.extras.items()]

    def _place(self, name: str, module: torch.nn.Module) -> None:
        if self.mode == RESIDENT:
            self._move(name, module, ONLOAD)
        elif self.mode == MODEL_OFFLOAD:
            self._move(name, module, OFFLOAD)
            group = self.groups[name]
            # a model that runs alone is called in many ways (PhotoMaker's `id_tokens` calls a grandchild):
            # every submodule gets the hook; it runs once per job, so the checks cost nothing that matters
            deep = name in self.extras and group != DENOISER
            _register(module, lambda: model_offload_hook(self, group), deep)
        elif self.mode == BLOCK_OFFLOAD:
            self._move(name, module, OFFLOAD)
            if _holds_4bit(module):  # group offloading would move the packed weights without their scales
                group = self.groups[name]
                _register(module, lambda: model_offload_hook(self, group))
            elif not (name in self.modules and self.groups[name] == DENOISER and self._partly_resident(name, module)):
                self._group_offload(name, module)
        else:
            raise ValueError(f"memory mode {self.mode!r}: must be one of {', '.join(MEMORY_MODES[1:])}")

    def _group_offload(self, name: str, module: torch.nn.Module) -> None:
        from diffusers.hooks import apply_group_offloading

        cuda = self.onload.type == "cuda"
        block_level = self.groups[name] == DENOISER and _has_block_lists(module)
        apply_group_offloading(module, onload_device=self.onload, offload_device=self.offload,
                               offload_type="block_level" if block_level else "leaf_level",
                               num_blocks_per_group=1 if block_level else None, use_stream=cuda)

    def _partly_resident(self, name: str, module: torch.nn.Module) -> bool:
        """Forge's GPU-weights budget in block offload: keep the denoiser's blocks that fit `resident_bytes` on the
        device, in the order they are declared, and stream only the rest (`residency_plan`); False when no block
        fits (then every block streams, as without a budget)."""
        plan = residency_plan(module, self.resident_bytes)
        if plan is None:
            return False
        for part_name, part in [*plan.fixed, *plan.resident]:
            part.to(self.onload)
            self.moves.append((f"{name}.{part_name}", ONLOAD))
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            tensor.data = tensor.data.to(self.onload)
        self._stream_blocks(plan.streamed)
        self.resident_blocks = [part_name for part_name, _ in plan.resident]
        self.streamed_blocks = [part_name for part_name, _ in plan.streamed]
        log.info("block offload of %s: %d of %d blocks resident within %.0f MB of GPU weights", name,
                 len(plan.resident), len(plan.resident) + len(plan.streamed), self.resident_bytes / 2 ** 20)
        return True

    def _stream_blocks(self, blocks: Parts) -> None:
        """diffusers' group offloading per streamed block, leaf level (a block's layers are what it calls),
        with a side stream on CUDA so each next layer's copy overlaps the current one's compute."""
        from diffusers.hooks import apply_group_offloading

        for _name, block in blocks:
            apply_group_offloading(block, onload_device=self.onload, offload_device=self.offload,
                                   offload_type="leaf_level", use_stream=self.onload.type == "cuda")

    def remove(self) -> None:
        """Drop every hook; the components stay where they are (offloaded ones in system memory)."""
        for _name, module in self._all():
            _unhook(module)
        self.resident_blocks, self.streamed_blocks = [], []
        self.on_device = None
        if self.slot.holder is self:
            self.slot.holder = None
        self.modules, self.groups = {}, {}
        self.extras = weakref.WeakValueDictionary()

    def forget(self, names: Iterable[str]) -> None:
        """Let joined models go without touching their hooks (they move to another checkpoint's placement)."""
        for name in names:
            self.extras.pop(name, None)

    # ---- moving ----

    def onload_group(self, group: str) -> None:
        """Model offload: `group` onto the device, the group there before (of any offloader) back to system memory."""
        if self.on_device == group:
            return
        holder = self.slot.holder
        if holder is not None and holder is not self:
            holder.park()
        self.park()
        for name, module in self._all():
            if self.groups.get(name) == group:
                self._move(name, module, ONLOAD)
        self.on_device = group
        self.slot.holder = self

    def park(self) -> None:
        """The onloaded group back to system memory (after a job, or before another group): model offload,
        and a block-offload denoiser that moves whole (NF4)."""
        if self.mode == RESIDENT or self.on_device is None:
            return
        for name, module in self._all():
            if self.groups.get(name) == self.on_device:
                self._move(name, module, OFFLOAD)
        self.on_device = None
        if self.slot.holder is self:
            self.slot.holder = None

    def refresh(self) -> None:
        """Place everything again for the same mode (after a component changed dtype: the VAE's fp32 retry;
        block offload's pinned copies must be taken again)."""
        self.apply(self.mode, dict(self.modules), self.resident_bytes)

    def _move(self, name: str, module: torch.nn.Module, where: str) -> None:
        module.to(self.onload if where == ONLOAD else self.offload)
        self.moves.append((name, where))


def _holds_4bit(module: torch.nn.Module) -> bool:
    return any(type(p).__name__ == "Params4bit" for p in module.parameters())


Parts = list[tuple[str, torch.nn.Module]]  # (name under the denoiser, module)


def block_parts(module: torch.nn.Module) -> tuple[Parts, Parts]:
    """(the parts outside block lists: embeddings, mid block, norms; the blocks of its block lists), in the
    order the children are declared (a UNet's down, mid, up; a transformer's double then single blocks)."""
    fixed, blocks = [], []
    for child_name, child in module.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            blocks += [(f"{child_name}.{i}", block) for i, block in enumerate(child)]
        else:
            fixed.append((child_name, child))
    return fixed, blocks


@dataclass
class Residency:
    """A denoiser split for a GPU-weights budget in block offload."""

    fixed: Parts     # outside the block lists: always on the device
    resident: Parts  # blocks kept on the device
    streamed: Parts  # blocks streamed through it


def residency_plan(module: torch.nn.Module, room: int) -> Residency | None:
    """Which blocks stay on the device for `room` bytes of resident weights, in the order they are declared,
    after the fixed parts and, when not all fit, room for two of the largest layers (streamed blocks move
    layer by layer: one running, the next being copied in). None when no block fits: every block streams."""
    fixed, blocks = block_parts(module)
    if room <= 0 or not blocks:
        return None
    sizes = [module_bytes(block) for _, block in blocks]
    used = _own_bytes(module) + sum(module_bytes(part) for _, part in fixed)
    if used + sum(sizes) > room:
        room -= 2 * max(_own_bytes(layer) for _, block in blocks for layer in block.modules())
    kept = 0
    while kept < len(blocks) and used + sizes[kept] <= room:
        used += sizes[kept]
        kept += 1
    return Residency(fixed, blocks[:kept], blocks[kept:]) if kept else None


def _own_bytes(module: torch.nn.Module) -> int:
    """A module's own parameters and buffers, not its children's."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(recurse=False),
                                                      *module.buffers(recurse=False)])


def _unhook(module: torch.nn.Module) -> None:
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (HOOK_NAME, *GROUP_HOOKS):
        registry.remove_hook(name, recurse=True)


def _has_block_lists(module: torch.nn.Module) -> bool:
    return any(isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) for child in module.children())


def _register(module: torch.nn.Module, make_hook, deep: bool = False) -> None:
    """A hook of its own on the module and on each direct child (`vae.decode` and a text encoder's final
    norm do not go through the component's `forward`), or on every submodule (`deep`)."""
    from diffusers.hooks import HookRegistry

    for target in module.modules() if deep else [module, *module.children()]:
        HookRegistry.check_if_exists_or_initialize(target).register_hook(make_hook(), HOOK_NAME)


def model_offload_hook(offloader: Offloader, group: str):
    """A diffusers ModelHook: before a component (or any direct child) runs, its group onto the device, inputs too.

    Built on first use so that importing this module does not import diffusers (start-up stays light)."""
    from accelerate.utils import send_to_device
    from diffusers.hooks import ModelHook

    class ModelOffloadHook(ModelHook):
        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
            offloader.onload_group(group)
            return send_to_device(args, offloader.onload), send_to_device(kwargs, offloader.onload)

    return ModelOffloadHook()


# ---- the policy ----------------------------------------------------------------------------------


class MemoryPolicy:
    """Chooses and applies each active checkpoint's memory mode (ModelManager calls `place` per job).

    `settings` gives `memory_mode` and `gpu_weights_mb`; `flags` the command line's choice;
    `store_budget`/`others_on_device` come from the model store, so the one budget covers every kind.
    """

    def __init__(self, settings, flags: MemoryFlags, onload: torch.device, store=None):
        self.settings, self.flags, self.onload, self.store = settings, flags, torch.device(onload), store
        self.slot = DeviceSlot()  # one group on the device among every checkpoint's offloader
        # models of other kinds that follow the active checkpoint's mode (weakly held: evicted ones go)
        self.joined: weakref.WeakValueDictionary[str, torch.nn.Module] = weakref.WeakValueDictionary()
        self.joined_groups: dict[str, str] = {}

    def wanted(self, model: "LoadedModel") -> Choice:
        components = components_of(model)
        total, largest = group_sizes(model)
        own = sum(module_bytes_on(m, "cuda") for m in components.values())
        gpu_weights = float(self.settings.get("gpu_weights_mb") or 0) or self.flags.gpu_weights_mb
        store_budget = self.store.device_budget() if self.store is not None else None
        others = (self.store.totals().device - own) if self.store is not None else 0
        budget = device_budget(self.onload, own, store_budget, max(0, others), gpu_weights)
        choice = choose_mode(str(self.settings.get("memory_mode") or AUTOMATIC), self.flags,
                             model.architecture.family, total, largest, budget)
        if choice.mode == BLOCK_OFFLOAD and gpu_weights > 0 and budget is not None:  # a budget given on purpose
            return replace(choice, resident_bytes=int(budget * HEADROOM))
        return choice

    def loads_offloaded(self, file_bytes: int) -> bool:
        """Whether a checkpoint about to load should be built in system memory rather than on the device:
        its mode will be an offload one (judged from the file's size; --medvram-sdxl counts before the
        family is known), so a small GPU never holds the whole model, not even during the load."""
        if self.onload.type != "cuda":
            return False
        store_budget = self.store.device_budget() if self.store is not None else None
        others = self.store.totals().device if self.store is not None else 0
        gpu_weights = float(self.settings.get("gpu_weights_mb") or 0) or self.flags.gpu_weights_mb
        budget = device_budget(self.onload, 0, store_budget, others, gpu_weights)
        choice = choose_mode(str(self.settings.get("memory_mode") or AUTOMATIC), self.flags,
                             "sdxl" if self.flags.sdxl_only else "", file_bytes, file_bytes, budget)
        return choice.mode != RESIDENT

    def place(self, model: "LoadedModel", active: bool = True) -> bool:
        """Apply the wanted mode to the model if it changed; True when anything moved.

        `active`: the checkpoint the job runs on, which the joined models (ControlNets, image encoders,
        upscalers) follow; False for a companion (the refiner), placed on its own."""
        choice = self.wanted(model)
        offloader = model.offloader
        if offloader is not None and model.memory_mode == choice.mode and (
                offloader.resident_bytes == choice.resident_bytes):
            return False
        if offloader is None:
            offloader = model.offloader = Offloader(self.onload, slot=self.slot)
        offloader.apply(choice.mode, components_of(model), choice.resident_bytes)
        if active:
            for name, module in list(self.joined.items()):
                offloader.add(name, module, self.joined_groups.get(name, DENOISER))
        model.memory_mode = choice.mode
        log.info("memory mode for %s: %s (%s)", model.info.name, choice.mode, choice.reason)
        return True

    def release(self, model: "LoadedModel") -> None:
        """A checkpoint that is no longer the active one: no hooks, all in system memory."""
        if model.offloader is not None:
            model.offloader.forget(list(self.joined))  # they follow the next active checkpoint
            model.offloader.remove()
            model.offloader = None
        model.memory_mode = RESIDENT
        model.to(torch.device("cpu"))

    def after_job(self) -> None:
        """Model offload: nothing stays on the device between jobs (whichever checkpoint's group is there)."""
        if self.slot.holder is not None:
            self.slot.holder.park()

    def join(self, model: "LoadedModel | None", name: str, module: Any, group: str = DENOISER) -> None:
        """A model of another kind follows the active checkpoint's mode: in the denoiser's group (ControlNet,
        T2I-Adapter, IdentityNet) or its own (`group` = `name`: image encoders, upscalers). Remembered, so it
        follows the next checkpoint too; with none active yet it stays where it loaded until one is placed."""
        if not isinstance(module, torch.nn.Module):
            return
        self.joined[name] = module
        self.joined_groups[name] = group
        if model is not None and model.offloader is not None:
            model.offloader.add(name, module, group)


def group_sizes(model: "LoadedModel") -> tuple[int, int]:
    """(all weights, the largest group's) in bytes: what moves together must fit together."""
    groups: dict[str, int] = {}
    for name, module in components_of(model).items():
        groups[GROUPS.get(name, name)] = groups.get(GROUPS.get(name, name), 0) + module_bytes(module)
    return sum(groups.values()), max(groups.values(), default=0)


REDUCED_STORAGE = ("fp8_e4m3fn", "fp8_e5m2", "nf4")


def memory_advice(model: "LoadedModel | None") -> str:
    """For an out-of-memory message: the memory mode and weight storage that keep less on the device than
    what the job ran with (empty when it already ran with the least)."""
    if model is None:
        return ""
    advice = []
    if model.memory_mode == RESIDENT:
        total, largest = group_sizes(model)
        advice.append(f"set Memory mode to Model offload (Settings → memory_mode, or start with --medvram): the GPU "
                      f"then holds the largest model ({largest / 2 ** 20:.0f} MB) instead of all "
                      f"{total / 2 ** 20:.0f} MB of weights; Block offload (--lowvram) holds the least")
    elif model.memory_mode == MODEL_OFFLOAD:
        advice.append("set Memory mode to Block offload (Settings → memory_mode, or start with --lowvram): the "
                      "denoiser's blocks stream through the GPU one at a time")
    from .gguf_quantized import is_quantized

    if model.weight_storage not in REDUCED_STORAGE and not is_quantized(model):  # GGUF: smaller already
        advice.append("store the denoiser's weights in fp8 (Settings → weight_storage fp8_e4m3fn, this checkpoint's "
                      "own in Models → Library, or --weights fp8; half of fp16) or nf4 (a quarter of its Linear "
                      "layers' fp16 bytes)")
    return "; ".join(advice)


def module_bytes_on(module: torch.nn.Module, device_type: str) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
               if t.device.type == device_type)

