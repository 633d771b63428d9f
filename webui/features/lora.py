"""LoRA (and LyCORIS LoCon/LoHa/LoKr) files applied to a loaded model, reversibly.

Files from models/Lora/ in the layouts people publish:
- kohya-ss: `lora_unet_<module>` and `lora_te_`/`lora_te1_`/`lora_te2_<module>` with
  `.lora_down.weight`, `.lora_up.weight`, `.alpha`; the UNet module may be named the
  diffusers way (SD 1.x files) or the original way (SDXL files: `input_blocks_4_1_...`);
- LyCORIS: `.hada_w1_a/...` (LoHa), `.lokr_w1/...` (LoKr), conv LoCon;
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B`, `text_encoder.<module>...`,
  and the older `.lora.down/up` and attention-processor forms.

Merging adds `strength * alpha/rank * up @ down` to each target weight. The first time a
weight is touched, a copy is kept; restoring copies it back, so the base weights come
back bit-identical. Applying the same set again is free (the patcher remembers what is
applied).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..model_manager.convert import _apply, _sorted, unet_rules
from ..model_manager.fused_qkv import FUSED_PARTS, refresh_fused
from ..model_manager.hashing import HashCache
from ..model_manager.lookup import ModelNotFound, find_file
from ..paths import model_files
from ..model_manager.safe_unpickle import PICKLE_SUFFIXES, load_pickle_checkpoint
from ..model_manager.store import ModelStore
from .lora_formats import QuantizedBackup, quantized_patch, to_diffusers_layout

log = logging.getLogger(__name__)
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES

# tensor-name endings, longest first, -> role
_ROLES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".hada_w1_a", "w1a"), (".hada_w1_b", "w1b"), (".hada_w2_a", "w2a"), (".hada_w2_b", "w2b"),
    (".lokr_w1_a", "k1a"), (".lokr_w1_b", "k1b"), (".lokr_w2_a", "k2a"), (".lokr_w2_b", "k2b"),
    (".lokr_w1", "k1"), (".lokr_w2", "k2"), (".diff", "diff"), (".alpha", "alpha"),
    (".fused_rows", "rows"),  # ours (lora_mmdit): this layer's rows of a fused layer's LyCORIS update
    (".down.weight", "down"), (".up.weight", "up"),
)


class LoraError(ValueError):
    user_facing = True


class LoraNotFound(ModelNotFound, LoraError):
    """No LoRA file answers to the name; a LoraError too, so a `<lora:>` tag that names none is a warning."""


@dataclass
class LoraModule:
    """The update for one layer, in whatever decomposition the file uses."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def alpha(self) -> float | None:
        value = self.tensors.get("alpha")
        return float(value) if value is not None else None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """scale * update, float32, shaped like the target weight."""
        rows = self.tensors.get("rows")
        if rows is not None:  # a LoHa/LoKr of a fused layer (SD 3's qkv): the whole update, then these rows
            whole = LoraModule({k: v for k, v in self.tensors.items() if k != "rows"})
            return whole.delta(torch.Size([_update_rows(whole.tensors), *shape[1:]]))[rows.long()].reshape(shape)
        t = {k: v.float() for k, v in self.tensors.items() if k != "alpha"}
        if "diff" in t:
            return t["diff"].reshape(shape)
        if "up" in t and "down" in t:
            if "mid" in t:
                raise LoraError("LoCon files with a CP mid tensor are not supported")
            rank = t["down"].shape[0]
            update = t["up"].flatten(1) @ t["down"].flatten(1)
        elif "w1a" in t:
            rank = t["w1b"].shape[0]
            update = (t["w1a"] @ t["w1b"].flatten(1)) * (t["w2a"] @ t["w2b"].flatten(1))
        elif "k1" in t or "k1a" in t:
            w1 = t["k1"] if "k1" in t else t["k1a"] @ t["k1b"]
            w2 = t["k2"] if "k2" in t else t["k2a"] @ t["k2b"].flatten(1)
            rank = t["k1b"].shape[0] if "k1b" in t else (t["k2b"].shape[0] if "k2b" in t else None)
            if len(shape) == 4 and w2.ndim == 2:
                w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
            if w2.ndim == 4:
                w1 = w1.reshape(*w1.shape, 1, 1)
            update = torch.kron(w1, w2)
            scale = self.alpha / rank if rank and self.alpha is not None else 1.0
            return (update * scale).reshape(shape)
        else:
            raise LoraError(f"unrecognised LoRA tensors: {', '.join(sorted(self.tensors))}")
        scale = self.alpha / rank if self.alpha is not None else 1.0
        return (update * scale).reshape(shape)


def _update_rows(t: dict[str, torch.Tensor]) -> int:
    """The output rows of a module's update, from its factors."""
    if "diff" in t or "up" in t:
        return int(t["diff" if "diff" in t else "up"].shape[0])
    if "w1a" in t:
        return int(t["w1a"].shape[0])
    return int((t["k1"] if "k1" in t else t["k1a"]).shape[0]) * int((t["k2"] if "k2" in t else t["k2a"]).shape[0])


@dataclass
class LoraFile:
    name: str
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str]
    mtime: float = 0.0

    @property
    def key(self) -> tuple[str, float]:
        return (str(self.path), self.mtime)


def _split_key(key: str) -> tuple[str, str] | None:
    for ending, role in _ROLES:
        if key.endswith(ending):
            return key[: -len(ending)], role
    return None


def read_lora(path: Path, allow_pickle: bool = False) -> LoraFile:
    if path.suffix.lower() == ".safetensors":
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    else:
        tensors = load_pickle_checkpoint(path, allow_pickle)
        metadata = {}
    try:  # Flux's kohya / BFL / XLabs layouts, in diffusers' layout (features/lora_formats.py)
        tensors = to_diffusers_layout(tensors)
    except ValueError as exc:
        raise LoraError(f"{path.name}: {exc}") from exc
    modules: dict[str, LoraModule] = {}
    for key, value in tensors.items():
        split = _split_key(key)
        if split is None:
            continue
        base, role = split
        modules.setdefault(base, LoraModule()).tensors[role] = value
    modules = {k: m for k, m in modules.items() if set(m.tensors) - {"alpha"}}
    if not modules:
        raise LoraError(f"{path.name}: no LoRA tensors found")
    return LoraFile(path.stem, path, modules, metadata, path.stat().st_mtime)


# ---- where each file key points in a model ---------------------------------------------------


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _text_module_name(encoder: torch.nn.Module, name: str) -> str:
    """Module names as files write them: with the `text_model.` level transformers 5 drops."""
    has_level = any(n.startswith("text_model.") for n, _ in encoder.named_modules())
    return name if has_level else "text_model." + name


def target_map(model) -> dict[str, tuple[str, torch.nn.Module]]:
    """Every spelling of every patchable layer -> (component, module). Built once per model."""
    cached = model.patches.get("lora_targets")
    if cached is not None:
        return cached
    targets: dict[str, tuple[str, torch.nn.Module]] = {}
    unet_config = model.configs.components.get("unet")  # a transformer family has no UNet layout rules
    rules = _sorted(unet_rules(unet_config), forward=False) if unet_config else []
    denoiser = model.architecture.adapter.denoiser_component  # diffusers/PEFT files: "transformer.<module>"
    for name, module in model.unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or name.rpartition(".")[2] in FUSED_PARTS:
            continue  # fast mode's fused QKV copies follow the separate layers (fused_qkv.py)
        original = _apply(name + ".", rules, forward=False) if rules else None
        for spelling in {"lora_unet_" + _flat(name), "unet." + name, name, f"{denoiser}.{name}",
                         f"lora_{denoiser}_" + _flat(name),  # LyCORIS files over diffusers names (SimpleTuner)
                         *(["lora_unet_" + _flat(original.rstrip("."))] if original else [])}:
            targets[spelling] = ("unet", module)
    encoders = model.architecture.text_encoders
    for index, component in enumerate(encoders, start=1):
        if component not in model.text_encoders:  # an optional encoder the checkpoint runs without (SD3's T5)
            continue
        encoder = model.text_encoders[component]
        prefixes = {"lora_te_", f"lora_te{index}_"} if len(encoders) == 1 else {f"lora_te{index}_"}
        if component == "text_encoder_2":
            prefixes.add("lora_te2_")
        for name, module in encoder.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            file_name = _text_module_name(encoder, name)
            for spelling in {file_name, name}:  # T5 (SD 3's lora_te3_) has no text_model. level in any spelling
                for prefix in prefixes:
                    targets[prefix + _flat(spelling)] = (component, module)
                targets[f"{component}.{spelling}"] = (component, module)
    model.patches["lora_targets"] = targets
    return targets


def _resolve(base: str, targets: dict) -> tuple[str, torch.nn.Module] | None:
    found = targets.get(base)
    if found is None and ".processor." in base:  # old diffusers attention-processor LoRAs
        head, _, tail = base.partition(".processor.")
        tail = tail.removesuffix("_lora").replace("to_out", "to_out.0")
        found = targets.get(f"{head}.{tail}")
    return found


# ---- applying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    lora: LoraFile
    te: float = 1.0
    unet: float = 1.0

    @property
    def signature(self) -> tuple:
        return (self.lora.key, self.te, self.unet)


@dataclass
class ApplyReport:
    matched: int = 0
    unmatched: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False


class LoraPatcher:
    """Applies sets of LoRAs to one loaded model and restores it exactly."""

    def __init__(self, model):
        self.model = model
        self._backups: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
        self.signature: tuple = ()
        self.last_report = ApplyReport()

    @classmethod
    def of(cls, model) -> "LoraPatcher":
        patcher = model.patches.get("lora_patcher")
        if patcher is None:
            patcher = model.patches["lora_patcher"] = cls(model)
        return patcher

    @torch.no_grad()
    def set(self, specs: list[LoraSpec]) -> ApplyReport:
        import time

        signature = tuple(spec.signature for spec in specs)
        if signature == self.signature:
            return ApplyReport(self.last_report.matched, self.last_report.unmatched, 0.0, cached=True)
        started = time.perf_counter()
        self._restore()
        targets = target_map(self.model)
        report = ApplyReport()
        updates: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
        for spec in specs:
            for base, module_update in spec.lora.modules.items():
                found = _resolve(base, targets)
                if found is None:
                    report.unmatched.append(base)
                    continue
                component, module = found
                strength = spec.unet if component == "unet" else spec.te
                if strength == 0:
                    continue
                if type(module.weight).__name__ == "Params4bit":  # NF4 storage (model_manager/nf4.py)
                    from ..core.request import FieldError, ValidationError
                    from ..model_manager.nf4 import lora_refusal

                    raise ValidationError([FieldError("prompt", f"<lora:{spec.lora.path.stem}>: " + lora_refusal(
                        getattr(self.model, "weight_storage", "nf4")))])
                try:
                    shape = getattr(module.weight, "quant_shape", module.weight.shape)  # GGUF: the real shape
                    delta = module_update.delta(torch.Size(shape)).to(module.weight.device) * strength
                except (RuntimeError, LoraError):  # same name, other shape: a LoRA for another model
                    report.unmatched.append(base)
                    continue
                key = id(module)
                if key in updates:
                    updates[key] = (module, updates[key][1] + delta)
                else:
                    updates[key] = (module, delta)
                report.matched += 1
        for key, (module, delta) in updates.items():
            if hasattr(module.weight, "quant_type"):  # a GGUF block-quantized layer: patched dequantized
                self._backups[key] = (module, quantized_patch(module, delta))
                continue
            self._backups[key] = (module, module.weight.detach().to("cpu", copy=True))
            module.weight.copy_((module.weight.float() + delta).to(module.weight.dtype))
        self.signature = signature
        refresh_fused(self.model.unet)  # fast mode's fused QKV copies follow the patched q/k/v layers
        report.seconds = time.perf_counter() - started
        self.last_report = report
        return report

    def restore(self) -> None:
        self._restore()
        refresh_fused(self.model.unet)

    @torch.no_grad()
    def _restore(self) -> None:
        for module, original in self._backups.values():
            if isinstance(original, QuantizedBackup):
                original.restore(module)
                continue
            module.weight.copy_(original.to(module.weight.device))
        self._backups.clear()
        self.signature = ()


class LoraLibrary:
    """LoRA files in models/Lora (and --lora-dir), parsed on demand and kept in the model store.

    Parsed files are store entries of kind "lora" keyed by (path, mtime): the store's RAM budget
    counts them with every other model, `cache_size` is their count limit, and a file changed on
    disk is a new key (its older version is dropped when the new one loads).
    """

    KIND = "lora"

    def __init__(self, folders: list[Path], hashes: HashCache, allow_pickle: bool = False, cache_size: int = 16,
                 store: ModelStore | None = None):
        self.folders = folders
        self.hashes = hashes
        self.allow_pickle = allow_pickle
        self.store = store if store is not None else ModelStore()
        self.store.set_limit(self.KIND, cache_size)

    def files(self) -> list[Path]:
        return model_files(self.folders, SUFFIXES)

    def names(self) -> list[str]:
        return [p.stem for p in self.files()]

    def find(self, name: str) -> Path:
        """A LoRA file by stem, file name or path under models/Lora (the `lookup` contract)."""
        return find_file(name, self.files(), self.folders, lambda *found: LoraNotFound("LoRA", *found))

    def load(self, name: str) -> LoraFile:
        path = self.find(name)
        mtime = path.stat().st_mtime
        key = (str(path), mtime)
        self.store.evict_where(self.KIND, lambda k: k[0] == key[0] and k != key)  # the file changed on disk
        return self.store.get(self.KIND, key, lambda: read_lora(path, self.allow_pickle))

    def short_hash(self, lora: LoraFile) -> str:
        """AutoV3: first 12 hex of sha256 of the file's data after the safetensors header."""
        return self.hashes.sha256_data(lora.path)[:12]
