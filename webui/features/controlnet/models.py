"""ControlNet model files: finding them, telling which base model they fit, loading them offline.

Files come in two layouts: the original one (lllyasviel's `control_model.input_blocks...`,
`input_hint_block`, `zero_convs`, `middle_block_out`) and diffusers' (`down_blocks...`,
`controlnet_cond_embedding`, `controlnet_down_blocks`), as single files or diffusers
folders. A ControlNet mirrors the encoder half of its base UNet, so its config is the base
UNet's, with the transformer depths and hint-encoder channels read from the file itself;
that works for published models and for the tests' tiny ones alike.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ...model_manager.convert import Rule, _apply, _sorted, unet_rules
from ...model_manager.hashing import legacy_short_hash
from ...model_manager.lookup import ModelNotFound, match, path_names
from ...model_manager.safe_unpickle import PICKLE_SUFFIXES, load_pickle_checkpoint
from ...model_manager.store import ModelStore
from ...paths import model_files
from . import flux, sd3, t2i_adapter
from .t2i_adapter import T2IAdapterError, is_t2i_adapter

SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
ORIGINAL_PREFIX = "control_model."


class ControlNetError(ValueError):
    user_facing = True


class ControlNetNotFound(ModelNotFound, ControlNetError):
    """No ControlNet file or folder answers to the name (a ControlNetError too, as before)."""


@dataclass
class ControlNetInfo:
    name: str
    path: Path
    context_width: int | None     # cross-attention width: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL
    has_add_embedding: bool       # SDXL's size/pooled-text embedding
    kind: str = "controlnet"      # or "t2i_adapter"
    adapter_config: dict | None = None

    @property
    def title(self) -> str:
        """`name [hash]` as the ControlNet extension writes it in infotext."""
        weights = self.path if self.path.is_file() else next(iter(sorted(self.path.glob("*.safetensors"))), None)
        return f"{self.name} [{legacy_short_hash(weights)}]" if weights is not None else self.name


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            return {}
        path = weights[0]
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


def _folder_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    return json.loads(config.read_text()) if path.is_dir() and config.is_file() else None


def _name_of(path: Path) -> str:
    """The name a ControlNet is listed under: a file's stem, a folder's name."""
    return path.stem if path.is_file() else path.name


def describe(path: Path) -> ControlNetInfo:
    shapes = _header(path)
    name = _name_of(path)
    saved = _folder_config(path)
    if is_t2i_adapter(shapes) or (saved or {}).get("_class_name") == "T2IAdapter":
        try:
            config = t2i_adapter.adapter_config(t2i_adapter.to_diffusers(shapes), saved)
        except (T2IAdapterError, KeyError):
            config = None
        return ControlNetInfo(name, path, None, False, "t2i_adapter", config)
    if flux.is_flux_controlnet(shapes, saved):
        return ControlNetInfo(name, path, None, False, flux.KIND)
    if sd3.is_sd3_controlnet(shapes, saved):  # context_width: the transformer width it was made for
        return ControlNetInfo(name, path, sd3.width_of(shapes), False, sd3.KIND)
    width = next((shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    add = any("label_emb" in k or "add_embedding" in k for k in shapes)
    return ControlNetInfo(name, path, width, add)


def fits(info: ControlNetInfo, unet_config: dict[str, Any]) -> bool:
    """Whether a ControlNet or T2I-Adapter was made for this base model (unknown files are offered anyway)."""
    if info.kind == flux.KIND or unet_config.get("family", "").startswith("flux"):
        return info.kind == flux.KIND and flux.fits(unet_config.get("family"))
    if info.kind == sd3.KIND or sd3.is_sd3_config(unet_config):
        return sd3.fits(info.kind, info.context_width, unet_config)
    if info.kind == "t2i_adapter":
        return info.adapter_config is None or t2i_adapter.fits(info.adapter_config, unet_config)
    if info.context_width is None:
        return True
    sdxl = unet_config.get("addition_embed_type") == "text_time"
    return info.context_width == unet_config["cross_attention_dim"] and info.has_add_embedding == sdxl


# ---- key layouts ----------------------------------------------------------------------------


def hint_rules(conditioning_channels: int) -> list[Rule]:
    """input_hint_block.{0,2,...} (convs between SiLUs) <-> controlnet_cond_embedding."""
    convs = 2 * conditioning_channels  # conv_in + 2 per extra level + conv_out
    names = ["conv_in"] + [f"blocks.{i}" for i in range(convs - 2)] + ["conv_out"]
    return [Rule(f"input_hint_block.{2 * i}.", f"controlnet_cond_embedding.{name}.") for i, name in enumerate(names)]


def controlnet_rules(unet_config: dict[str, Any], levels: int, zero_convs: int) -> list[Rule]:
    rules = [r for r in unet_rules(unet_config) if not r.original.startswith(("output_blocks.", "out."))]
    rules += hint_rules(levels)
    rules += [Rule(f"zero_convs.{i}.0.", f"controlnet_down_blocks.{i}.") for i in range(zero_convs)]
    rules.append(Rule("middle_block_out.0.", "controlnet_mid_block."))
    return rules


def _levels_and_zero_convs(keys, original: bool) -> tuple[int, int]:
    if original:
        hint = {int(k.split(".")[1]) for k in keys if k.startswith("input_hint_block.")}
        zeros = {int(k.split(".")[1]) for k in keys if k.startswith("zero_convs.")}
        return len(hint) // 2, len(zeros)  # 2 convs per level (conv_in/out count as one level each half)
    blocks = {int(k.split(".")[2]) for k in keys if k.startswith("controlnet_cond_embedding.blocks.")}
    zeros = {int(k.split(".")[1]) for k in keys if k.startswith("controlnet_down_blocks.")}
    return len(blocks) // 2 + 1, len(zeros)


def to_diffusers(tensors: dict[str, torch.Tensor], unet_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {k.removeprefix(ORIGINAL_PREFIX): v for k, v in tensors.items()}
    if "controlnet_cond_embedding.conv_in.weight" in tensors:
        return tensors
    if "input_hint_block.0.weight" not in tensors:
        raise ControlNetError("not a ControlNet file (no hint encoder)")
    levels, zeros = _levels_and_zero_convs(tensors, original=True)
    rules = _sorted(controlnet_rules(unet_config, levels, zeros), forward=True)
    out = {}
    for key, value in tensors.items():
        new = _apply(key, rules, forward=True)
        if new is not None:
            out[new] = value
    return out


def to_original(tensors: dict[str, torch.Tensor], unet_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers ControlNet keys -> the original layout (with the control_model. prefix)."""
    levels, zeros = _levels_and_zero_convs(tensors, original=False)
    rules = _sorted(controlnet_rules(unet_config, levels, zeros), forward=False)
    out = {}
    for key, value in tensors.items():
        new = _apply(key, rules, forward=False)
        if new is None:
            raise ControlNetError(f"ControlNet tensor {key} has no place in the original layout")
        out[ORIGINAL_PREFIX + new] = value
    return out


def controlnet_config(tensors: dict[str, torch.Tensor], unet_config: dict[str, Any]) -> dict[str, Any]:
    """The base UNet's config, adapted to what the file contains."""
    config = {k: v for k, v in unet_config.items() if not k.startswith("_") and k not in (
        "up_block_types", "out_channels", "center_input_sample", "sample_size", "time_cond_proj_dim")}
    config["in_channels"] = 4
    conv_in = tensors["controlnet_cond_embedding.conv_in.weight"]
    config["conditioning_channels"] = conv_in.shape[1]
    levels, _ = _levels_and_zero_convs(tensors, original=False)
    channels = [conv_in.shape[0]] + [tensors[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"].shape[0]
                                     for i in range(levels - 1)]
    config["conditioning_embedding_out_channels"] = channels
    depths = []
    for i, block in enumerate(config["down_block_types"]):
        found = {int(m.group(1)) for k in tensors
                 if (m := re.match(rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.", k))}
        depths.append(max(found) + 1 if found else 1)
    config["transformer_layers_per_block"] = depths
    return config


# ---- loading ----------------------------------------------------------------------------------


def read_weights(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ControlNetError(f"{path.name}: no .safetensors weights in the folder")
        return load_file(str(files[0]))
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return load_pickle_checkpoint(path, allow_pickle)


def build_controlnet(tensors: dict[str, torch.Tensor], unet_config: dict[str, Any], device: torch.device,
                     dtype: torch.dtype):
    from diffusers import ControlNetModel

    import inspect

    converted = to_diffusers(tensors, unet_config)
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters)
    config = {k: v for k, v in controlnet_config(converted, unet_config).items() if k in accepted}
    with torch.device("meta"):
        model = ControlNetModel(**config)
    load_fitting(model, converted, "ControlNet", device, dtype)
    return model.eval().requires_grad_(False)


def load_fitting(model: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, device: torch.device,
                 dtype: torch.dtype) -> None:
    """Fill a ControlNet built on the meta device from `tensors`, or say which weights do not fit the loaded
    checkpoint (missing, or of another shape: a ControlNet made for another size of model)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise ControlNetError(f"this {what} does not fit the loaded checkpoint ({', '.join((missing or wrong)[:2])})")
    model.load_state_dict({k: tensors[k].to(device, dtype) for k in expected}, assign=True, strict=True)


class ControlNetLibrary:
    """ControlNet files under models/ControlNet; loaded ones live in the model store, keyed by (file, base model).

    `store`: the app's ModelStore (one budget for every kind); without one the library keeps a
    private store. `cache_size` stays a count limit for the kind (three at a time on the device).
    """

    def __init__(self, folders: list[Path], allow_pickle: bool = False, cache_size: int = 3,
                 store: ModelStore | None = None, kind: str = "controlnet"):
        self.folders = folders
        self.allow_pickle = allow_pickle
        self.cache_size = cache_size
        self.store = store if store is not None else ModelStore()
        self.kind = kind
        self.store.set_limit(kind, lambda: self.cache_size)

    def paths(self) -> list[Path]:
        """Every ControlNet file, and every diffusers ControlNet folder at the top of a folder; reads no file."""
        found = model_files(self.folders, SUFFIXES)
        for folder in self.folders:
            if folder.is_dir():
                found += [p for p in sorted(folder.iterdir()) if p.is_dir() and (p / "config.json").is_file()]
        return found

    def all(self) -> list[ControlNetInfo]:
        return sorted((describe(p) for p in self.paths()), key=lambda i: i.name.lower())

    def names_for(self, unet_config: dict[str, Any]) -> list[str]:
        return [i.name for i in self.all() if fits(i, unet_config)]

    def find(self, name: str) -> ControlNetInfo:
        """A ControlNet by name, `name [hash]` title, file name or path (the `lookup` contract).

        Matches on the listing and reads the header of the one file found only.
        """
        paths = sorted(self.paths(), key=lambda p: _name_of(p).lower())
        found = match(name, paths, lambda p: [_name_of(p), *path_names(p, self.folders, p.is_dir())])
        if found is None:
            raise ControlNetNotFound("ControlNet model", name.strip(), [_name_of(p) for p in paths],
                                     " or ".join(map(str, self.folders)))
        return describe(found)

    def load(self, name: str, model) -> Any:
        """The ControlNet for the loaded checkpoint `model`, on its device and dtype."""
        info = self.find(name)
        key = (str(info.path), info.path.stat().st_mtime, model.info.name, str(model.device.device))

        def build():
            tensors = read_weights(info.path, self.allow_pickle)
            if info.kind == "t2i_adapter" or is_t2i_adapter(tensors):  # .pth files are only known once read
                return t2i_adapter.build_adapter(tensors, model.device.device, model.device.dtype,
                                                 _folder_config(info.path))
            if info.kind == flux.KIND:
                return flux.build_flux_controlnet(tensors, dict(model.configs["transformer"]), model.device.device,
                                                  model.device.dtype, _folder_config(info.path))
            if info.kind == sd3.KIND:
                return sd3.build(tensors, _folder_config(info.path), model.unet, model.device.device,
                                 model.device.dtype)
            return build_controlnet(tensors, dict(model.configs["unet"]), model.device.device, model.device.dtype)

        return self.store.get(self.kind, key, build)


def write_controlnet(path: Path, unet, layout: str = "original", seed: int = 0) -> Path:
    """A random-weight ControlNet for `unet` in the published layouts (tests, benchmarks)."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    with torch.no_grad():  # zero convs start at zero in training; give them signal so the effect is visible
        for module in list(model.controlnet_down_blocks) + [model.controlnet_mid_block,
                                                            model.controlnet_cond_embedding.conv_out]:
            module.weight.normal_(0, 0.2)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        tensors = to_original(tensors, dict(unet.config))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
