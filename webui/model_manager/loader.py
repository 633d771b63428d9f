"""Turn a checkpoint on disk into diffusers/transformers modules, offline.

Single files: read tensors (safetensors, or pickle through the restricted unpickler),
detect the architecture, take the shipped configs (or the sidecar's), rename keys with
`convert`, and assign the tensors into models built on the meta device (no random
initialisation, no second copy). Diffusers folders: read each component's config.json
and weights the same way. Nothing here touches the network.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from .. import families
from ..devices import DeviceConfig
from ..families.registry import family_of_folder, refine_by_name
from .architecture import Architecture, ModelConfigs, configs_for
from .convert import ConversionError, StateDict, checkpoint_to_diffusers, with_unet_prefix
from .detect import DetectionError
from .errors import ModelLoadError
from .registry import CheckpointInfo
from .safe_unpickle import load_pickle_checkpoint
from .sidecar import file_configs, read_sidecars
from .tokenizer import EOS, clip_tokenizer

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class LoadedModel:
    """Everything needed to run one checkpoint, already on its device."""

    info: CheckpointInfo
    architecture: Architecture
    configs: ModelConfigs
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: dict[str, torch.nn.Module]
    tokenizers: dict[str, Any]  # CLIPTokenizer, or the family's own (T5)
    device: DeviceConfig
    sha256: str = ""
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    demo: bool = False
    # per-model state other features attach (LoRA patcher, layer maps); dropped with the model
    patches: dict[str, Any] = field(default_factory=dict)
    # set after a half-precision VAE decode produced NaNs: decode in fp32 from then on
    vae_upcast: bool = False
    # how the denoiser's weights are stored ("Automatic": in the compute precision; or an fp8 type)
    weight_storage: str = "Automatic"
    # where the components live between uses (model_manager/memory.py), and the hooks that move them
    memory_mode: str = "Resident"
    offloader: Any = None
    fast: bool = False  # fast mode applied (model_manager/fast.py)
    # the VAE / text encoder files chosen for it (module_choice.py), and every part read from a separate file
    module_files: tuple[Path, ...] = ()
    part_files: dict[str, Path] = field(default_factory=dict)
    automatic_files: frozenset[Path] = frozenset()  # chosen files the automatic search would have found too

    def built_from(self, chosen: tuple[Path, ...]) -> bool:
        """Whether loading with these chosen files would give this model (so a pasted `Module N` list
        naming the files found automatically does not reload it, nor does clearing such a list)."""
        wanted, had = set(chosen), set(self.module_files)
        return wanted == had or (wanted <= set(self.part_files.values()) and had - wanted <= self.automatic_files)

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.configs["scheduler"])

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.configs["vae"]["block_out_channels"]) - 1)

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders.values()]

    def to(self, device: torch.device) -> None:
        for module in self.modules():
            module.to(device)


# ---- reading files ------------------------------------------------------------------------


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the data."""
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def read_tensors(path: Path, allow_pickle: bool) -> StateDict:
    if path.suffix.lower() == ".safetensors":
        return load_file(str(path), device="cpu")
    if path.suffix.lower() == ".gguf":  # quantized: dequantized here, then loaded like any single file
        from .gguf import read_gguf_checkpoint

        return read_gguf_checkpoint(path)
    return load_pickle_checkpoint(path, allow_pickle)


def _component_weights(folder: Path, allow_pickle: bool) -> StateDict:
    """Weights of one diffusers/transformers component folder (single, sharded or fp16 variant)."""
    for pattern in ("*.safetensors.index.json",):
        for index in folder.glob(pattern):
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: StateDict = {}
            for shard in shards:
                tensors.update(load_file(str(folder / shard), device="cpu"))
            return tensors
    candidates = sorted(folder.glob("*.safetensors"), key=lambda p: (".fp16." in p.name, p.name))
    if candidates:
        return load_file(str(candidates[0]), device="cpu")
    pickles = sorted(folder.glob("*.bin"))
    if pickles:
        return load_pickle_checkpoint(pickles[0], allow_pickle)
    raise ModelLoadError(f"{folder.name}: no weight file found in {folder}")


def _folder_architecture(folder: Path, components: dict[str, dict[str, Any]]) -> Architecture:
    index = json.loads((folder / "model_index.json").read_text())
    adapter = family_of_folder(index, components)
    if adapter is None:
        raise ModelLoadError(f"{folder.name}: a diffusers folder of a model family Easel does not know")
    family = refine_by_name(adapter.name, folder.name)  # SD 3.5 Large Turbo: Large's tensors, "turbo" name
    prediction = components.get("scheduler", {}).get("prediction_type", "epsilon")
    denoiser = components[adapter.denoiser_component]
    inpainting = denoiser.get("in_channels", 4) in (9, 384)  # SD inpainting; Flux Fill
    return Architecture(family, prediction, inpainting)


def read_diffusers_folder(folder: Path, allow_pickle: bool) -> tuple[ModelConfigs, dict[str, StateDict]]:
    components: dict[str, dict[str, Any]] = {}
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        cfg = folder / name / "config.json"
        if cfg.is_file():
            components[name] = json.loads(cfg.read_text())
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        components["scheduler"] = json.loads(sched.read_text())
    denoiser = "transformer" if "transformer" in components else "unet"
    if denoiser not in components or "vae" not in components:
        raise ModelLoadError(f"{folder.name}: a diffusers folder needs unet/ (or transformer/) and vae/ subfolders")
    arch = _folder_architecture(folder, components)
    scheduler = {k: v for k, v in components.pop("scheduler", {}).items() if not k.startswith("_")}
    configs = configs_for(arch, {**components, "scheduler": scheduler})
    weights = {name: _component_weights(folder / name, allow_pickle) for name in components}
    return configs, weights


# ---- building modules -----------------------------------------------------------------------


def _factory(name: str, config: dict[str, Any], family: str = "sd1") -> Callable[[], torch.nn.Module]:
    """The family adapter says which class builds each component (families/base.Family.module_factory)."""
    return families.get(family).module_factory(name, config)


def _uses_bare_text_keys(model: torch.nn.Module) -> bool:
    """transformers 5's CLIPTextModel drops the `text_model.` level that files (and WithProjection) keep."""
    return isinstance(model, CLIPTextModel) and not any(k.startswith("text_model.") for k in model.state_dict())


def file_state_dict(model: torch.nn.Module) -> StateDict:
    """A module's tensors under the names files use (diffusers folders, single-file conversion)."""
    tensors = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    if _uses_bare_text_keys(model):
        return {"text_model." + k: v for k, v in tensors.items()}
    return tensors


def _restore_meta_buffers(model: torch.nn.Module, name: str) -> None:
    """Non-persistent buffers are not in any file; rebuild the ones we know how to."""
    for buffer_name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        parent_name, _, leaf = buffer_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if leaf == "position_ids":
            length = buffer.shape[-1]
            parent.register_buffer(leaf, torch.arange(length).expand((1, -1)), persistent=False)
        else:
            raise ModelLoadError(f"{name}: buffer {buffer_name} has no value")


def _materialise(value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A file tensor read now (lazy_tensors.StoredTensor), GGUF blocks dequantized, or a tensor in memory."""
    from .lazy_tensors import StoredTensor

    if isinstance(value, StoredTensor):
        return value.load()
    if hasattr(value, "quant_type"):  # GGUF blocks a conversion cut (a layer that is not kept quantized)
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        return dequantize_gguf_tensor(value).reshape(shape).float()
    return value


def _shape(value: Any, expected: tuple[int, ...]) -> tuple[int, ...]:
    """A value's shape; GGUF blocks (byte shape) count as the expected shape when their rows match it."""
    if hasattr(value, "quant_shape"):
        rows = tuple(value.quant_shape)
        return expected if rows in {expected, (expected[0], int(torch.Size(expected[1:]).numel()))} else rows
    return tuple(value.shape)


def _store_weights(model: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """diffusers' layerwise casting, set up on the meta model before any weight is read: each layer's
    weights are then cast to the storage type as they are read, never held in the compute type.
    A text encoder's embeddings are stored by `stored_embeddings` instead: the hook would cast the whole
    token table on each call."""
    from diffusers import ModelMixin
    from diffusers.hooks import apply_layerwise_casting

    from .stored_embeddings import SKIPPED_CLASSES, store_embeddings

    model.stored_compute_dtype = compute  # what it computes in: its parameters' dtype is the storage's (compute_dtype)
    if isinstance(model, ModelMixin):  # its class's skip patterns (norms); a denoiser's embeddings are small
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
        return
    # text encoders: diffusers' default skip patterns; their token tables are stored by store_embeddings
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    # transformers casts the input of its keep-in-fp32 layers (T5's `wo`) to their weight's dtype, which
    # in storage would be fp8: those layers stay as they are
    keep = tuple(rf"(^|\.){name}$" for name in getattr(model, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(model, storage_dtype=storage, compute_dtype=compute,
                            skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + keep,
                            skip_modules_classes=SKIPPED_CLASSES)
    store_embeddings(model, storage, compute)


def build_module(name: str, config: dict[str, Any], tensors: StateDict, device: torch.device,
                 dtype: torch.dtype, family: str = "sd1", storage: torch.dtype | None = None,
                 keep_quantized: bool = False) -> torch.nn.Module:
    """Instantiate on the meta device and assign the file's tensors: fast, and one copy in memory.

    Tensors may still be on disk (lazy_tensors.StoredTensor): each is read when assigned and cast
    at once. `storage`: keep the castable layers' weights in this dtype (fp8, or fp16 under fp32
    compute) and compute in `dtype`. `keep_quantized`: GGUF Linear/Conv2d weights keep their blocks
    (gguf_quantized.py); the module's `gguf_layers` says how many did."""
    try:
        with torch.device("meta"):
            model = _factory(name, config, family)()
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{name}: its config cannot build a model ({exc})") from exc
    expected = model.state_dict()
    tensors = families.get(family).component_tensors(name, tensors)
    if _uses_bare_text_keys(model):
        tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    tied = getattr(model, "_tied_weights_keys", None)
    for target, source in (tied.items() if isinstance(tied, dict) else ()):
        if target not in tensors and source in tensors:  # tied weights are saved once (T5's embeddings)
            tensors = {**tensors, target: tensors[source]}
    for key, value in tensors.items():
        target = expected.get(key)
        if target is not None and _shape(value, tuple(target.shape)) != tuple(target.shape):
            raise ModelLoadError(f"{name}: tensor {key} has shape {_shape(value, tuple(target.shape))}, "
                                 f"the architecture expects {tuple(target.shape)}")
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelLoadError(f"{name}: {len(missing)} tensors missing from the file (first: {', '.join(missing[:3])})")
    quantized: set[str] = set()
    if keep_quantized:
        from .gguf_quantized import quantize_layers

        quantized = quantize_layers(model, tensors, dtype)
    elif storage is not None and storage != dtype:
        _store_weights(model, storage, dtype)
        expected = model.state_dict()
    converted: StateDict = {}
    for key in list(tensors):
        target = expected.get(key)
        if target is None or key in quantized:
            continue
        value = _materialise(tensors.pop(key), tuple(target.shape))  # the file's copy goes once it is cast
        wanted = (storage if target.dtype == storage else dtype) if value.is_floating_point() else value.dtype
        converted[key] = value.to(device=device, dtype=wanted)
        del value
    tensors.clear()  # each file tensor is referenced once more only in `converted`
    model.load_state_dict(converted, strict=False, assign=True)
    model.gguf_layers = len(quantized)
    _restore_meta_buffers(model, name)
    model.to(device)
    model.eval().requires_grad_(False)
    return model


def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """SD 2.x files don't record their parameterisation: ask the model.

    At the last timestep the input is almost pure noise, so an epsilon model returns
    roughly its input, while a v model returns roughly minus the clean image, far below
    the input. A mid-grey latent and a constant context make that difference plain.
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
    return bool((out - x).float().mean().item() < -1)


def tokenizer_for(family: str, component: str) -> CLIPTokenizer:
    """CLIP ViT-L pads with the end token; the OpenCLIP encoders pad with '!' (id 0)."""
    openclip = families.get(family).tokenizer_pad(component) == "!"
    return clip_tokenizer("!" if openclip else EOS)


# ---- weight storage ----------------------------------------------------------------------------

STORAGE_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# --weights fp16/bf16 name the compute type; where the device computes in another (the CPU: fp32, as its
# half-precision kernels are tens of times slower), they are the weights' storage type instead
HALF_STORAGE = {"fp16": torch.float16, "bf16": torch.bfloat16}


def storage_dtype(storage: str, compute: torch.dtype) -> torch.dtype | None:
    """The dtype weights are kept in for a weight-storage choice (None: the compute type)."""
    dtype = STORAGE_DTYPES.get(storage) or HALF_STORAGE.get(storage)
    return dtype if dtype is not None and dtype != compute else None


def vae_storage(stored_as: torch.dtype | None, vae_compute: torch.dtype) -> torch.dtype | None:
    """The VAE's weight storage under a storage choice: 16-bit where the VAE computes in fp32 (the CPU,
    --no-half-vae), which halves its memory and keeps its activations in fp32 (SDXL's fp16 NaNs come from
    activations, not weights). Never fp8: a decode shows every rounding of its weights, and Forge too keeps
    the VAE in 16 bits. Where the VAE computes in 16 bits already, it stays as it is (None)."""
    if stored_as is None or vae_compute != torch.float32:
        return None
    return torch.bfloat16 if stored_as == torch.bfloat16 else torch.float16


def apply_weight_storage(model: "LoadedModel", storage: str) -> None:
    """Store the denoiser's weights in fp8 and compute in the device's precision (a model loaded
    without `load_checkpoint(storage=...)`, which stores the denoiser and text encoders so while reading).

    diffusers' layerwise casting (`enable_layerwise_casting`) keeps each layer's weights in the
    storage type and casts them to the compute type only while that layer runs, so the
    denoiser's memory halves (from fp16) for a small cost per step; norms and embeddings stay
    in the compute type, as diffusers skips them by default.
    """
    if storage == "nf4":  # 4-bit through bitsandbytes: model_manager/nf4.py
        from .nf4 import apply_nf4

        return apply_nf4(model)
    dtype = STORAGE_DTYPES.get(storage)
    if dtype is None or model.weight_storage == storage:
        return
    from .gguf_quantized import is_quantized

    if is_quantized(model):  # its quantized blocks are already smaller than fp8; casting them would garble them
        model.notes.append(f"weight storage {storage} not applied: the GGUF weights stay quantized")
        return
    model.unet.enable_layerwise_casting(storage_dtype=dtype, compute_dtype=model.device.dtype)
    model.weight_storage = storage
    model.notes.append(f"denoiser weights stored as {storage}")


# ---- entry point ---------------------------------------------------------------------------


@dataclass
class ReadWeights:
    """What a checkpoint reader returns: configs (with the architecture), weights per component."""

    configs: ModelConfigs
    weights: dict[str, StateDict]
    uncertain: bool = False                       # prediction type to be probed from the UNet
    notes: list[str] = field(default_factory=list)
    tokenizers: dict[str, Any] = field(default_factory=dict)  # non-CLIP tokenizers the checkpoint carries
    part_files: dict[str, Path] = field(default_factory=dict)  # component -> the separate file it came from
    automatic_files: set[Path] = field(default_factory=set)  # chosen, and what add_companions would find


Reader = Callable[[CheckpointInfo, bool, Any], ReadWeights]  # (info, allow_pickle, sidecar) -> ReadWeights


def _first_match(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def _tokenizer_folder(folder: Path, class_prefix: str) -> Path | None:
    """A tokenizer folder (tokenizer.json + tokenizer_config.json naming a `class_prefix`* class) in `folder`."""
    for config in sorted(folder.glob("*/tokenizer_config.json")):
        try:
            tokenizer_class = str(json.loads(config.read_text()).get("tokenizer_class") or "")
        except (OSError, ValueError):
            continue
        if tokenizer_class.startswith(class_prefix) and (config.parent / "tokenizer.json").is_file():
            return config.parent
    return None


def add_companions(read: ReadWeights, companion_dirs: dict[str, Path], allow_pickle: bool) -> None:
    """Fill in what a single file leaves out (a transformer-only file's VAE and text encoders) from
    the family's companion files in models/VAE and models/text_encoder, and non-CLIP tokenizers."""
    adapter = read.configs.architecture.adapter
    for component, (kind, patterns) in adapter.companion_files.items():
        folder = companion_dirs.get(kind)
        path = _first_match(folder, patterns) if folder is not None and folder.is_dir() else None
        if read.weights.get(component):  # the file has it (a UNet-only file's split leaves its parts empty)
            if path is not None and read.part_files.get(component) == path:
                read.automatic_files.add(path)
            continue
        if path is None and component in adapter.optional_components:
            read.notes.append(f"no {component.replace('_', ' ')} found in {folder or 'models/' + kind} "
                              f"(looked for {', '.join(patterns)}): running without it")
            continue
        if path is None:
            raise ModelLoadError(f"the file has no {component.replace('_', ' ')} and none was found in "
                                 f"{folder or 'models/' + kind} (looked for {', '.join(patterns)}); put one "
                                 "there or choose it in the top bar's VAE / Text Encoder list")
        _take_part(read, component, path, allow_pickle)
    for component, class_prefix in adapter.tokenizer_classes.items():
        if component in read.tokenizers or component not in read.weights:
            continue
        folder = companion_dirs.get("text_encoder")
        found = _tokenizer_folder(folder, class_prefix) if folder is not None and folder.is_dir() else None
        try:
            read.tokenizers[component] = adapter.load_tokenizer(component, found)
        except ValueError as exc:
            raise ModelLoadError(f"{exc}; put the tokenizer folder (tokenizer.json, tokenizer_config.json) in "
                                 f"{folder or 'models/text_encoder'}") from exc


def _take_part(read: ReadWeights, component: str, path: Path, allow_pickle: bool) -> None:
    from .vae import vae_state_dict

    tensors = read_tensors(path, allow_pickle)
    if component == "vae":
        tensors = vae_state_dict(tensors, read.configs["vae"])
    read.weights[component] = read.configs.architecture.adapter.companion_state_dict(component, tensors, read.configs)
    read.part_files[component] = path
    read.notes.append(f"{component.replace('_', ' ')} from {path.parent.name}/{path.name}")


def apply_chosen_modules(read: ReadWeights, paths: tuple[Path, ...], allow_pickle: bool) -> None:
    """The VAE / text encoder files chosen for this checkpoint replace its own parts (any family: each
    file's part is told by its tensors, `module_fit.component_of`). A file that fits no part, or a
    second file for the same part, is refused with both names."""
    from .module_choice import SETTING
    from .module_fit import component_of

    arch = read.configs.architecture
    parts = ["vae", *arch.text_encoders]
    taken: dict[str, Path] = {}
    for path in paths:
        component = component_of(path, [p for p in parts if p not in taken], read.configs, arch.family,
                                 allow_pickle)
        if component is None:
            already = [c for c in parts if c in taken and component_of(path, [c], read.configs, arch.family,
                                                                         allow_pickle)]
            if already:
                raise ModelLoadError(f"{SETTING}: {path.name} and {taken[already[0]].name} are both a "
                                     f"{already[0].replace('_', ' ')}; choose one")
            shown = ", ".join(p.replace("_", " ") for p in parts)
            raise ModelLoadError(f"{SETTING}: {path.name} fits none of {arch.label}'s parts ({shown})")
        taken[component] = path
        _take_part(read, component, path, allow_pickle)


def _read_folder(info: CheckpointInfo, allow_pickle: bool, sidecar: Any) -> ReadWeights:
    configs, weights = read_diffusers_folder(info.path, allow_pickle)
    if sidecar.family and sidecar.family != configs.architecture.family:  # `<folder>.json` names the variant
        arch = configs.architecture  # (e.g. Z-Image base, whose folder is Turbo's in every tensor and config)
        configs.architecture = Architecture(sidecar.family, arch.prediction_type, arch.inpainting)
    adapter, tokenizers = configs.architecture.adapter, {}
    for index, name in enumerate(configs.architecture.text_encoders):
        if name not in weights:  # an optional encoder the folder does not have (SD3 without T5)
            continue
        folder = info.path / ("tokenizer" if index == 0 else f"tokenizer_{index + 1}")
        tokenizer = adapter.load_tokenizer(name, folder if folder.is_dir() else None)
        if tokenizer is not None:
            tokenizers[name] = tokenizer
    return ReadWeights(configs, weights, tokenizers=tokenizers)


def _file_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` (empty for other formats or when unreadable)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    from .library import read_safetensors_header

    try:
        metadata = read_safetensors_header(path).get("__metadata__") or {}
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def _stored_tensors(path: Path) -> dict[str, Any]:
    """A single file's tensors, each read only when its module is built (lazy_tensors.py)."""
    from .lazy_tensors import gguf_tensors, safetensors_tensors

    return safetensors_tensors(path) if path.suffix.lower() == ".safetensors" else gguf_tensors(path)


def _read_single_file(info: CheckpointInfo, allow_pickle: bool, sidecar: Any) -> ReadWeights:
    """One file: tensors, configs from their shapes (or a sidecar), split by the family's layout."""
    lazy = info.format in ("safetensors", "gguf") and info.path.suffix.lower() in (".safetensors", ".gguf")
    tensors = _stored_tensors(info.path) if lazy else read_tensors(info.path, allow_pickle)
    tensors = dict(with_unet_prefix(tensors))  # a UNet-only file: its other parts come from companion files
    notes = []
    if info.format == "gguf":
        from .gguf import describe_gguf

        notes.append(f"GGUF: {describe_gguf(info.path)['quantization']}")
    configs, uncertain = file_configs({k: tuple(v.shape) for k, v in tensors.items()}, sidecar, info.path.name)
    variant = None if sidecar.family else configs.architecture.adapter.file_variant(info.path.name,
                                                                                    _file_metadata(info.path))
    if variant:  # a variant the tensors cannot tell (Flux Kontext): its name or metadata says
        arch = configs.architecture
        configs = configs_for(Architecture(variant, arch.prediction_type, arch.inpainting), sidecar.components)
    if lazy:
        from .lazy_tensors import convert_lazily

        weights, leftovers = convert_lazily(tensors, lambda found: checkpoint_to_diffusers(found, configs))
    else:
        weights, leftovers = checkpoint_to_diffusers(tensors, configs)
    del tensors
    if leftovers:
        notes.append(f"{len(leftovers)} tensors not used by the model (EMA copies, schedule buffers)")
    return ReadWeights(configs, weights, uncertain, notes)


# how each checkpoint format is read: one table, so a new format (a split or quantized layout) is
# one `register_reader` call beside its reader, and the rest of loading does not change
READERS: dict[str, Reader] = {"diffusers": _read_folder, "safetensors": _read_single_file,
                              "pickle": _read_single_file, "gguf": _read_single_file}


def register_reader(fmt: str, reader: Reader) -> None:
    READERS[fmt] = reader


def load_checkpoint(info: CheckpointInfo, device: DeviceConfig, allow_pickle: bool,
                    progress: Progress | None = None, companion_dirs: dict[str, Path] | None = None,
                    module_files: tuple[Path, ...] = (), keep_gguf_quantized: bool = True,
                    storage: str = "Automatic") -> LoadedModel:
    """Load a checkpoint for generation. Raises ModelLoadError with a readable reason.

    `keep_gguf_quantized`: a GGUF file's denoiser, text encoders and VAE keep their quantized blocks
    in memory (`gguf_quantized.py`; the VAE's layers compute in its dtype); False: dequantized at load. `storage`: the weight storage
    (`storage_dtype`) of the denoiser and text encoders, applied while each weight is read; the VAE,
    small and the last step to the pixels, stays in its own dtype."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    reader = READERS.get(info.format)
    if reader is None:
        raise ModelLoadError(f"{info.name}: Easel cannot read checkpoints in the {info.format!r} format")
    try:
        sidecar = read_sidecars(info.path)
        say(f"reading {info.path.name}")
        read = reader(info, allow_pickle, sidecar)
        apply_chosen_modules(read, module_files, allow_pickle)
        if info.format != "diffusers":
            add_companions(read, companion_dirs or {}, allow_pickle)
        configs, weights, uncertain, notes = read.configs, read.weights, read.uncertain, read.notes
        if sidecar.sources:
            notes.append("config from " + ", ".join(p.name for p in sidecar.sources))
    except (DetectionError, ConversionError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{info.name}: {exc}") from exc

    arch = configs.architecture
    modules: dict[str, torch.nn.Module] = {}
    stored_as = storage_dtype(storage, device.dtype)
    gguf_layers = 0
    for name in arch.adapter.components():
        if name not in weights and name in arch.adapter.optional_components:
            if info.format == "diffusers":  # single files say where they looked (add_companions)
                notes.append(f"no {name.replace('_', ' ')} in the folder: running without it")
            continue
        if name not in weights:
            raise ModelLoadError(f"{info.name}: the file has no {name.replace('_', ' ')}")
        say(f"building {name}")
        dtype = device.vae_dtype if name == "vae" else device.dtype
        quantize = keep_gguf_quantized and info.format == "gguf"
        modules[name] = build_module(name, configs[name], weights.pop(name), device.device, dtype, arch.family,
                                     vae_storage(stored_as, dtype) if name == "vae" else stored_as, quantize)
        gguf_layers += getattr(modules[name], "gguf_layers", 0)

    denoiser = modules[arch.adapter.denoiser_component]
    if uncertain and probe_v_prediction(denoiser):
        arch = Architecture(arch.family, "v_prediction", arch.inpainting)
        configs.architecture = arch
        configs["scheduler"]["prediction_type"] = "v_prediction"
        notes.append("detected v-prediction")

    loaded = LoadedModel(
        info=info, architecture=arch, configs=configs, unet=denoiser, vae=modules["vae"],
        text_encoders={n: modules[n] for n in arch.text_encoders if n in modules},
        tokenizers={n: read.tokenizers.get(n) or tokenizer_for(arch.family, n) for n in arch.text_encoders
                    if n in modules},
        device=device, notes=notes, demo=sidecar.demo, module_files=tuple(module_files),
        part_files=dict(read.part_files), automatic_files=frozenset(read.automatic_files))
    if gguf_layers:
        loaded.patches["gguf_quantized"] = gguf_layers
        notes.append(f"GGUF kept quantized in memory: {gguf_layers} layers")
        if stored_as is not None:
            notes.append(f"weight storage {storage} not applied: the GGUF weights stay quantized")
    elif stored_as is not None:
        loaded.weight_storage = storage
        vae = vae_storage(stored_as, device.vae_dtype)
        notes.append(f"denoiser and text encoder weights stored as {storage}"
                     + (f", the VAE's as {str(vae).removeprefix('torch.')}" if vae is not None else ""))
    elif info.format == "gguf" and keep_gguf_quantized:
        notes.append("GGUF dequantized at load: no quantized Linear or Conv2d weights")
    loaded.load_seconds = time.perf_counter() - started
    log.info("loaded %s (%s) in %.1fs", info.name, arch.label, loaded.load_seconds)
    return loaded
