"""Making new model files from old ones: single file <-> diffusers folder, pickle -> safetensors,
fp16 pruning and baking a VAE into a checkpoint.

Every function here reads its sources, writes one new file (or folder) under a temporary
name beside the target and renames it into place, so a crash or an error never leaves a
half-written model where the model list would pick it up. Existing files are only
replaced when the caller asks. Safetensors files are written tensor by tensor
(`stream_safetensors`), so a conversion holds at most the source and one tensor, and a
merge only one tensor of each input. The key renaming itself lives in `convert.py`.
No UI code here: the Models tab and any other way in call these functions inside a job.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from ..fileio import atomic_open, atomic_write_text, format_size
from ..paths import UnsafePathError, safe_join
from .architecture import Architecture, ModelConfigs, configs_for
from .convert import (
    VAE_PREFIX, ConversionError, StateDict, checkpoint_to_diffusers, diffusers_to_checkpoint, vae_to_diffusers,
    vae_to_original)
from .detect import DetectionError
from .hashing import HashCache, autov2, sha256_file
from .safe_unpickle import PICKLE_SUFFIXES, PickleRefusedError, UnsafePickleError, load_pickle_checkpoint
from .sidecar import SidecarError, file_configs, read_sidecars

# (done, total, text): called once per tensor (or per stage) so a job can show progress.
ProgressFn = Callable[[int, int, str], None]

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# Tensors only training needs: the EMA copy of the UNet and optimizer/scheduler state.
TRAINING_ONLY_PREFIXES = ("model_ema.", "ema_model.", "optimizer.", "optimizer_states.", "lr_scheduler")
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline", "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}
INPAINT_PIPELINES = {"sd1": "StableDiffusionInpaintPipeline", "sd2": "StableDiffusionInpaintPipeline",
                     "sdxl": "StableDiffusionXLInpaintPipeline", "sdxl-refiner": "StableDiffusionXLInpaintPipeline"}
TOKENIZER_FOLDERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


class ConversionFailed(ValueError):
    """A conversion or merge cannot be done; the message names the file and the reason."""

    user_facing = True


@dataclass
class ConversionResult:
    """What was written, its hash, and what the user should know about it."""

    path: Path
    sha256: str
    notes: list[str] = field(default_factory=list)
    source_sha256: str = ""
    size_before: int = 0
    size_after: int = 0

    @property
    def autov2(self) -> str:
        return autov2(self.sha256)

    def summary(self) -> str:
        lines = [f"Saved {self.path.name}", f"sha256 {self.sha256}  (AutoV2 {self.autov2})"]
        if self.source_sha256:
            lines.append(f"source sha256 {self.source_sha256}  (AutoV2 {autov2(self.source_sha256)})")
        if self.size_before and self.size_after:
            lines.append(f"size {format_size(self.size_before)} -> {format_size(self.size_after)}")
        return "\n".join(lines + self.notes)


def _say(progress: ProgressFn | None, done: int, total: int, text: str) -> None:
    if progress:
        progress(done, total, text)


def job_progress(job: Any) -> ProgressFn:
    """Adapt a queue job (anything with `report` and `check`) to a ProgressFn; interrupt stops the work."""
    def report(done: int, total: int, text: str) -> None:
        job.report(step=done, total=total, text=text)
        job.check()
    return report


# ---- names and targets ---------------------------------------------------------------------


def output_path(folder: Path, name: str, suffix: str | None = ".safetensors") -> Path:
    """Where a user-named output goes: inside `folder` (never outside), with the suffix added."""
    name = (name or "").strip()
    if not name:
        raise ConversionFailed("output name: enter a name for the new model")
    if suffix and not name.lower().endswith(suffix):
        name += suffix
    try:
        return safe_join(folder, name)
    except UnsafePathError as exc:
        raise ConversionFailed(f"output name: {exc}") from None


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConversionFailed(f"{path.name} already exists; choose another name or tick 'overwrite'")


def _hash(path: Path, hashes: HashCache | None) -> str:
    return hashes.sha256(path) if hashes else sha256_file(path)


# ---- reading ---------------------------------------------------------------------------------


class TensorFile:
    """Tensor-by-tensor access to one checkpoint file.

    safetensors files are read lazily (one tensor in memory at a time); pickle files can
    only be read whole, through the restricted unpickler, and only when `allow_pickle`.
    """

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = path
        self._handle: Any = None
        self._tensors: StateDict | None = None
        self.metadata: dict[str, str] = {}
        if path.suffix.lower() == ".safetensors":
            try:
                self._handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types for damaged headers
                raise ConversionFailed(f"{path.name}: not a readable safetensors file ({exc})") from None
            self.metadata = dict(self._handle.metadata() or {})
        elif path.suffix.lower() in PICKLE_SUFFIXES:
            self._tensors = _read_pickle(path, allow_pickle)
        else:
            raise ConversionFailed(f"{path.name}: unsupported file type {path.suffix}")

    def keys(self) -> list[str]:
        return list(self._handle.keys()) if self._handle is not None else list(self._tensors or {})

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        if self._handle is not None:
            name = self._handle.get_slice(key).get_dtype()
            if name not in _DTYPE_NAMES:
                raise ConversionFailed(f"{self.path.name}: tensor {key} has unsupported dtype {name}")
            return _DTYPE_NAMES[name]
        return self._tensors[key].dtype

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: self.shape(key) for key in self.keys()}

    def get(self, key: str) -> torch.Tensor:
        if self._handle is not None:
            return self._handle.get_tensor(key)
        return self._tensors[key]

    def all(self) -> StateDict:
        return {key: self.get(key) for key in self.keys()}

    def nbytes(self) -> int:
        total = 0
        for key in self.keys():
            count = 1
            for dim in self.shape(key):
                count *= dim
            total += count * torch.empty((), dtype=self.dtype(key)).element_size()
        return total

    def close(self) -> None:
        self._handle = None
        self._tensors = None

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_pickle(path: Path, allow_pickle: bool) -> StateDict:
    try:
        tensors = load_pickle_checkpoint(path, allow_pickle)
    except PickleRefusedError as exc:
        raise ConversionFailed(f"{exc} Or convert it first with Models > Convert > Pickle to safetensors.") from None
    except UnsafePickleError as exc:
        raise ConversionFailed(f"{exc}. Nothing in the file was run and nothing was written.") from None
    except Exception as exc:  # damaged archives, truncated downloads
        raise ConversionFailed(f"{path.name}: cannot be read as a PyTorch file ({exc})") from None
    if not tensors:
        raise ConversionFailed(f"{path.name}: contains no tensors")
    return tensors


def checkpoint_configs(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[ModelConfigs, bool]:
    """Configs for a single-file checkpoint (detection + sidecars), and whether its prediction type is a guess."""
    try:
        return file_configs(shapes, read_sidecars(path))
    except (DetectionError, SidecarError) as exc:
        raise ConversionFailed(f"{path.name}: {exc}") from None


def _normalise_text_keys(tensors: StateDict) -> StateDict:
    """transformers 5 saves CLIPTextModel without the `text_model.` level; files and the key tables keep it."""
    out: StateDict = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key] = value
    return out


def read_folder(folder: Path, allow_pickle: bool = False) -> tuple[ModelConfigs, dict[str, StateDict]]:
    """A diffusers folder's configs and component tensors, with text-encoder names as files keep them."""
    from .loader import read_diffusers_folder  # heavy imports (diffusers, transformers) only when converting

    try:
        configs, weights = read_diffusers_folder(folder, allow_pickle)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConversionFailed(f"{folder.name}: {exc}") from None
    for name in configs.architecture.text_encoders:
        if name not in weights:
            raise ConversionFailed(f"{folder.name}: the folder has no {name}/")
        weights[name] = _normalise_text_keys(weights[name])
    return configs, weights


# ---- writing ---------------------------------------------------------------------------------


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def stream_safetensors(path: Path, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                       tensor_for: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None,
                       progress: ProgressFn | None = None) -> None:
    """Write a safetensors file one tensor at a time, atomically (temp name beside it, then rename).

    The header needs every name, dtype and shape up front (`layout`); `tensor_for(name)` is
    then asked for each tensor in that order and must match its entry.
    """
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in layout:
        if dtype not in _DTYPES:
            raise ConversionFailed(f"tensor {name}: dtype {dtype} cannot be stored in safetensors")
        count = 1
        for dim in shape:
            count *= dim
        size = count * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic_open(path) as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for index, (name, dtype, shape) in enumerate(layout):
            tensor = tensor_for(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ConversionFailed(f"tensor {name}: got {tensor.dtype} {tuple(tensor.shape)}, "
                                       f"expected {dtype} {tuple(shape)}")
            handle.write(_tensor_bytes(tensor))
            _say(progress, index + 1, len(layout), name)


def save_tensors(path: Path, tensors: StateDict, metadata: dict[str, str] | None = None,
                 progress: ProgressFn | None = None) -> None:
    """Tensors already in memory, written with `stream_safetensors` (shared storage is fine here)."""
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    stream_safetensors(path, layout, tensors.__getitem__, metadata, progress)


def _cast(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    return tensor.to(torch.float16) if half and tensor.is_floating_point() else tensor


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a finished temporary folder onto its target (replacing an old one only when asked)."""
    if target.exists():
        if not overwrite:
            raise ConversionFailed(f"{target.name} already exists; choose another name or tick 'overwrite'")
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(tmp, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, target)


def carry_sidecars(source: Path, target: Path, overwrite: bool = False) -> list[str]:
    """Copy `<source>.yaml/.json` beside `target` so the new file is built with the same configs."""
    from .sidecar import sidecar_paths

    written = []
    for sidecar in sidecar_paths(source):
        destination = target.with_name(target.stem + sidecar.suffix)
        if destination.resolve() == sidecar.resolve() or (destination.exists() and not overwrite):
            continue
        atomic_write_text(destination, sidecar.read_text(encoding="utf-8"))
        written.append(destination.name)
    return written


# ---- config comparison (does a single file need a sidecar?) ---------------------------------

_STRUCTURE: dict[str, dict[str, Any]] = {
    "unet": {"in_channels": 4, "out_channels": 4, "block_out_channels": None, "layers_per_block": 2,
             "down_block_types": None, "up_block_types": None, "cross_attention_dim": 1280, "attention_head_dim": 8,
             "num_attention_heads": None, "transformer_layers_per_block": 1, "use_linear_projection": False,
             "addition_embed_type": None, "addition_time_embed_dim": None,
             "projection_class_embeddings_input_dim": None, "norm_num_groups": 32, "class_embed_type": None,
             "upcast_attention": False},
    "vae": {"block_out_channels": None, "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32,
            "scaling_factor": 0.18215, "in_channels": 3, "out_channels": 3},
    "text": {"hidden_size": None, "intermediate_size": None, "num_attention_heads": None,
             "num_hidden_layers": None, "hidden_act": None, "projection_dim": None,
             "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-05},
}
_PER_BLOCK = ("attention_head_dim", "transformer_layers_per_block", "num_attention_heads")


def _structure(name: str, config: dict[str, Any]) -> dict[str, Any]:
    fields = _STRUCTURE["text" if name.startswith("text_encoder") else name]
    blocks = len(config.get("block_out_channels", []) or [])
    out: dict[str, Any] = {}
    for key, default in fields.items():
        value = config.get(key, default)
        if key in _PER_BLOCK and isinstance(value, int) and blocks:
            value = [value] * blocks
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, float):
            value = round(value, 6)
        out[key] = value
    return out


def differs_from_standard(configs: ModelConfigs) -> list[str]:
    """Components whose config the shipped (standard) one would not reproduce: these need a sidecar."""
    standard = configs_for(configs.architecture)
    names = ["unet", "vae", *configs.architecture.text_encoders]
    return [n for n in names if _structure(n, configs[n]) != _structure(n, standard[n])]


def sidecar_for(configs: ModelConfigs) -> dict[str, Any] | None:
    """The `<name>.json` a single file needs so Easel rebuilds exactly these configs (None: none needed)."""
    arch = configs.architecture
    if differs_from_standard(configs):
        return {"architecture": arch.family, "prediction_type": arch.prediction_type,
                "inpainting": arch.inpainting,
                "components": {k: v for k, v in configs.components.items() if k != "scheduler"}}
    if arch.family == "sd2":  # SD 2.x files do not say whether they predict v; spare the probe
        return {"prediction_type": arch.prediction_type}
    return None


# ---- single file -> diffusers folder -----------------------------------------------------------


def _probe_prediction(configs: ModelConfigs, unet: StateDict) -> None:
    from .loader import build_module, probe_v_prediction

    model = build_module("unet", configs["unet"], unet, torch.device("cpu"), torch.float32)
    if probe_v_prediction(model):
        configs.architecture = Architecture(configs.architecture.family, "v_prediction",
                                            configs.architecture.inpainting)
        configs["scheduler"]["prediction_type"] = "v_prediction"


def _model_index(configs: ModelConfigs) -> dict[str, Any]:
    import diffusers

    arch = configs.architecture
    pipeline = (INPAINT_PIPELINES if arch.inpainting else PIPELINES)[arch.family]
    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
                             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                             "scheduler": ["diffusers", configs["scheduler"].get("_class_name", "EulerDiscreteScheduler")]}
    for name in ("text_encoder", "text_encoder_2"):
        if name in arch.text_encoders:
            index[name] = ["transformers", (configs[name].get("architectures") or ["CLIPTextModel"])[0]]
            index[TOKENIZER_FOLDERS[name]] = ["transformers", "CLIPTokenizer"]
        elif arch.is_sdxl:
            index[name] = [None, None]
            index[TOKENIZER_FOLDERS[name]] = [None, None]
    if arch.is_sdxl:
        index.update({"image_encoder": [None, None], "feature_extractor": [None, None],
                      "force_zeros_for_empty_prompt": arch.family == "sdxl"})
        if arch.family == "sdxl-refiner":
            index["requires_aesthetics_score"] = True
    else:
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "image_encoder": [None, None], "requires_safety_checker": False})
    return index


def write_diffusers_components(folder: Path, configs: ModelConfigs, components: dict[str, StateDict],
                               progress: ProgressFn | None = None) -> None:
    """model_index.json, config + weights per component, tokenizers and the scheduler config."""
    import diffusers
    from transformers import CLIPTextConfig

    from .loader import tokenizer_for

    arch = configs.architecture
    names = ["unet", "vae", *arch.text_encoders]
    for step, name in enumerate(names):
        _say(progress, step, len(names), f"writing {name}")
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        if name in ("unet", "vae"):
            cls = "UNet2DConditionModel" if name == "unet" else "AutoencoderKL"
            config = {**configs[name], "_class_name": cls, "_diffusers_version": diffusers.__version__}
            (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            save_tensors(target / "diffusion_pytorch_model.safetensors", components[name], {"format": "pt"})
        else:
            clean = {k: v for k, v in configs[name].items() if not k.startswith("_")}
            CLIPTextConfig(**clean).save_pretrained(str(target))
            save_tensors(target / "model.safetensors", components[name], {"format": "pt"})
            tokenizer_for(arch.family, name).save_pretrained(str(folder / TOKENIZER_FOLDERS[name]))
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": "EulerDiscreteScheduler", **configs["scheduler"],
                 "_diffusers_version": diffusers.__version__}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps(_model_index(configs), indent=2), encoding="utf-8")
    _say(progress, len(names), len(names), "written")


def checkpoint_to_folder(source: Path, target: Path, *, allow_pickle: bool = False, overwrite: bool = False,
                         hashes: HashCache | None = None, progress: ProgressFn | None = None) -> ConversionResult:
    """Single-file checkpoint -> diffusers folder that Easel and diffusers' `from_pretrained` both open."""
    _check_target(target, overwrite)
    _say(progress, 0, 1, f"reading {source.name}")
    with TensorFile(source, allow_pickle) as reader:
        tensors = reader.all()
    configs, uncertain = checkpoint_configs(source, {k: tuple(v.shape) for k, v in tensors.items()})
    try:
        components, leftovers = checkpoint_to_diffusers(tensors, configs)
    except ConversionError as exc:
        raise ConversionFailed(f"{source.name}: {exc}") from None
    del tensors
    if uncertain:
        _say(progress, 0, 1, "checking whether the UNet predicts v")
        _probe_prediction(configs, components["unet"])
    notes = [f"{configs.architecture.label}"]
    if leftovers:
        notes.append(f"left out {len(leftovers)} tensors no component uses (EMA copies, schedule buffers)")
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write_diffusers_components(tmp, configs, components, progress)
        if read_sidecars(source).demo:
            atomic_write_text(target.with_name(target.name + ".json"), json.dumps({"easel_demo": True}))
        _move_into_place(tmp, target, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    unet_file = target / "unet" / "diffusion_pytorch_model.safetensors"
    return ConversionResult(target, _hash(unet_file, hashes), notes)


# ---- diffusers folder -> single file -------------------------------------------------------------


def folder_to_checkpoint(source: Path, target: Path, *, half: bool = False, allow_pickle: bool = False,
                         overwrite: bool = False, hashes: HashCache | None = None,
                         progress: ProgressFn | None = None) -> ConversionResult:
    """Diffusers folder -> single file in the original layout (+ a JSON sidecar for non-standard configs)."""
    _check_target(target, overwrite)
    _say(progress, 0, 1, f"reading {source.name}")
    configs, weights = read_folder(source, allow_pickle)
    try:
        tensors = diffusers_to_checkpoint(weights, configs)
    except (ConversionError, KeyError) as exc:
        raise ConversionFailed(f"{source.name}: {exc}") from None
    del weights
    tensors = {k: _cast(v, half) for k, v in tensors.items()}
    sidecar = sidecar_for(configs)
    sidecar_path = target.with_suffix(".json")
    if sidecar is not None:
        _check_target(sidecar_path, overwrite)
    metadata = {"format": "pt", "easel_converted_from": source.name,
                "easel_conversion": "diffusers folder -> single file" + (" (fp16)" if half else "")}
    save_tensors(target, tensors, metadata, progress)
    notes = [configs.architecture.label]
    if sidecar is not None:
        atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2))
        notes.append(f"wrote {sidecar_path.name}: the model's configs are not the standard ones")
    return ConversionResult(target, _hash(target, hashes), notes)


# ---- pickle -> safetensors ---------------------------------------------------------------------


def pickle_to_safetensors(source: Path, target: Path | None = None, *, overwrite: bool = False,
                          hashes: HashCache | None = None,
                          progress: ProgressFn | None = None) -> ConversionResult:
    """`.ckpt/.pt/.bin` -> `.safetensors`, read only through the restricted unpickler.

    Asking for this conversion of one file is the user's opt-in for reading that file,
    even without --allow-pickle; its sha256 is reported before anything is unpickled so
    it can be checked against the publisher's.
    """
    if source.suffix.lower() not in PICKLE_SUFFIXES:
        raise ConversionFailed(f"{source.name}: not a pickle file ({', '.join(PICKLE_SUFFIXES)})")
    target = target or source.with_suffix(".safetensors")
    _check_target(target, overwrite)
    _say(progress, 0, 1, f"hashing {source.name}")
    source_sha = _hash(source, hashes)
    _say(progress, 0, 1, f"{source.name}: sha256 {source_sha} (AutoV2 {autov2(source_sha)}); reading tensors")
    tensors = _read_pickle(source, allow_pickle=True)
    metadata = {"format": "pt", "easel_converted_from": source.name, "easel_source_sha256": source_sha}
    save_tensors(target, tensors, metadata, progress)
    return ConversionResult(target, _hash(target, hashes), [f"{len(tensors)} tensors"], source_sha256=source_sha)


# ---- pruning ------------------------------------------------------------------------------------


def is_training_only(key: str) -> bool:
    return key.startswith(TRAINING_ONLY_PREFIXES)


def prune_checkpoint(source: Path, target: Path, *, half: bool = True, drop_ema: bool = True,
                     allow_pickle: bool = False, overwrite: bool = False, hashes: HashCache | None = None,
                     progress: ProgressFn | None = None) -> ConversionResult:
    """Drop EMA/optimizer tensors and store float tensors as fp16: the file halves (or more)."""
    _check_target(target, overwrite)
    with TensorFile(source, allow_pickle) as reader:
        keys = reader.keys()
        kept = [k for k in keys if not (drop_ema and is_training_only(k))]
        if not kept:
            raise ConversionFailed(f"{source.name}: pruning would leave no tensors")
        layout = []
        for key in kept:
            dtype = reader.dtype(key)
            layout.append((key, torch.float16 if half and dtype.is_floating_point else dtype, reader.shape(key)))
        metadata = {"format": "pt", "easel_converted_from": source.name,
                    "easel_conversion": "prune" + (" fp16" if half else "") + (" no-ema" if drop_ema else "")}
        stream_safetensors(target, layout, lambda k: _cast(reader.get(k), half), metadata, progress)
    notes = [f"dropped {len(keys) - len(kept)} EMA/optimizer tensors" if drop_ema else "kept every tensor"]
    notes += [f"copied {name}" for name in carry_sidecars(source, target, overwrite)]
    return ConversionResult(target, _hash(target, hashes), notes, size_before=source.stat().st_size,
                            size_after=target.stat().st_size)


# ---- baking a VAE --------------------------------------------------------------------------------

_VAE_NOISE = ("loss.", "model_ema.")


def read_vae(path: Path, vae_config: dict[str, Any], allow_pickle: bool = False) -> StateDict:
    """A VAE file's tensors in the original layout (no prefix), from original or diffusers layout."""
    with TensorFile(path, allow_pickle) as reader:
        tensors = reader.all()
    tensors = {k.removeprefix(VAE_PREFIX): v for k, v in tensors.items() if not k.startswith(_VAE_NOISE)}
    if any(".down_blocks." in k or ".up_blocks." in k or ".mid_block." in k for k in tensors):
        try:
            tensors = vae_to_original(tensors, vae_config)
        except ConversionError as exc:
            raise ConversionFailed(f"{path.name}: {exc}") from None
    if not any(k.startswith(("encoder.", "decoder.")) for k in tensors):
        raise ConversionFailed(f"{path.name}: not a VAE (no encoder./decoder. tensors)")
    return tensors


def vae_replacements(checkpoint: Path, shapes: dict[str, tuple[int, ...]], configs: ModelConfigs, vae: Path,
                     allow_pickle: bool = False) -> StateDict:
    """The checkpoint's VAE tensors (full `first_stage_model.` names) taken from a VAE file, checked to fit."""
    tensors = read_vae(vae, configs["vae"], allow_pickle)
    wanted = {k[len(VAE_PREFIX):]: s for k, s in shapes.items() if k.startswith(VAE_PREFIX)}
    if not wanted:  # a checkpoint shipped without a VAE: the VAE must fit the model's config instead
        _, unmapped = vae_to_diffusers(tensors, configs["vae"])
        if unmapped:
            raise ConversionFailed(f"{vae.name} does not fit {checkpoint.name} (e.g. {next(iter(unmapped))})")
        return {VAE_PREFIX + k: v for k, v in tensors.items()}
    missing = sorted(set(wanted) - set(tensors))
    extra = sorted(set(tensors) - set(wanted))
    if missing or extra:
        example = (missing or extra)[0]
        raise ConversionFailed(f"{vae.name} does not fit {checkpoint.name}: {len(missing)} VAE tensors missing, "
                               f"{len(extra)} unexpected (e.g. {example}); is it a VAE for this architecture?")
    for key, shape in wanted.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise ConversionFailed(f"{vae.name} does not fit {checkpoint.name}: {key} has shape "
                                   f"{tuple(tensors[key].shape)}, the checkpoint's is {tuple(shape)}")
    return {VAE_PREFIX + k: v for k, v in tensors.items()}


def bake_vae(checkpoint: Path, vae: Path, target: Path, *, half: bool = False, allow_pickle: bool = False,
             overwrite: bool = False, hashes: HashCache | None = None,
             progress: ProgressFn | None = None) -> ConversionResult:
    """A copy of `checkpoint` whose VAE tensors are those of `vae` (original or diffusers layout)."""
    _check_target(target, overwrite)
    with TensorFile(checkpoint, allow_pickle) as reader:
        shapes = reader.shapes()
        configs, _ = checkpoint_configs(checkpoint, shapes)
        replacements = vae_replacements(checkpoint, shapes, configs, vae, allow_pickle)
        keys = [k for k in reader.keys() if k not in replacements] + list(replacements)

        def dtype_of(key: str) -> torch.dtype:
            dtype = reader.dtype(key) if key in shapes else replacements[key].dtype
            return torch.float16 if half and dtype.is_floating_point else dtype

        def tensor_for(key: str) -> torch.Tensor:
            if key in replacements:
                value = replacements[key]
                return value.to(dtype_of(key)) if value.is_floating_point() else value
            return _cast(reader.get(key), half)

        layout = [(k, dtype_of(k), shapes[k] if k in shapes else tuple(replacements[k].shape)) for k in keys]
        vae_sha = _hash(vae, hashes)
        metadata = {"format": "pt", "easel_converted_from": checkpoint.name,
                    "easel_baked_vae": f"{vae.name} [{autov2(vae_sha)}]"}
        metadata.update({k: v for k, v in reader.metadata.items() if k.startswith("sd_merge")})
        stream_safetensors(target, layout, tensor_for, metadata, progress)
    notes = [f"baked in {vae.name} [{autov2(vae_sha)}]: {len(replacements)} VAE tensors replaced"]
    notes += [f"copied {name}" for name in carry_sidecars(checkpoint, target, overwrite)]
    return ConversionResult(target, _hash(target, hashes), notes)

