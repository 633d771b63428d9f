"""XLabs' Flux IP-Adapter (`ip_adapter.safetensors` of XLabs-AI/flux-ip-adapter) in an IP-Adapter unit.

diffusers runs it through `FluxIPAdapterMixin.load_ip_adapter`: XLabs' keys (`ip_adapter_proj_model.*`,
`double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*`) become an `ImageProjection` and one
`FluxIPAdapterAttnProcessor` per double block (to_k_ip / to_v_ip from the T5 width to the transformer's),
and the pipeline hands CLIP ViT-L/14's `image_embeds` to the transformer as
`joint_attention_kwargs["ip_adapter_image_embeds"]`. Easel uses that same mixin, on the loaded
transformer, once per file and device: the processors and projection it makes are kept (model store,
kind "clip_vision") and the transformer's own processors are put back at once, so the shared model is
changed only while a pass samples (`FluxIPAdapter.installed`). Each step the embeddings go in per row of
the CFG batch: the picture's on the conditional rows, an all-black picture's on the negative ones (what
FluxPipeline uses when no negative image is given); the unit weight is the processors' scale (0 outside
the unit's start/end). The CLIP vision encoder is a local folder (transformers' `config.json` +
`model.safetensors`, e.g. openai/clip-vit-large-patch14's) or single file in models/clip_vision or
models/ipadapter whose projection width is the adapter's; pixels go through the folder's
`preprocessor_config.json` when it has one, else `CLIPImageProcessor` at the encoder's size, as
`load_ip_adapter` makes it. One XLabs unit per generation (diffusers' processors take several adapters
only loaded together).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from safetensors import safe_open

from ...core.request import FieldError, ValidationError
from .units import SCRIPT, ControlUnit

_PROJ = "ip_adapter_proj_model.proj.weight"
_K = "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"
_UNSET = object()


class FluxIPAdapterError(ValueError):
    user_facing = True


def is_xlabs_ip_adapter(path: Path) -> bool:
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    return _PROJ in keys and _K in keys


def names(library) -> list[str]:
    """XLabs Flux IP-Adapters among the IP-Adapter files (a Flux checkpoint's image-prompt units)."""
    return [p.stem for p in library.adapter_paths() if is_xlabs_ip_adapter(p)]


def projection_width(path: Path) -> int:
    """The CLIP image-embedding width the adapter's projection takes (768 for ViT-L/14)."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_slice(_PROJ).get_shape()[1]


@dataclass
class LoadedAdapter:
    processors: dict[str, Any]   # the transformer's attention processors with the IP ones in the double blocks
    projection: Any              # MultiIPAdapterImageProjection


def load_adapter(path: Path, transformer: torch.nn.Module) -> LoadedAdapter:
    """diffusers' own loader on the transformer; what it made is taken out and the transformer restored."""
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

    class Loader(FluxIPAdapterMixin):  # the mixin reads `self.transformer`; no image encoder here
        def __init__(self, transformer: torch.nn.Module):
            self.transformer = transformer

    before, projection = transformer.attn_processors, getattr(transformer, "encoder_hid_proj", None)
    # the mixin sets `config.encoder_hid_dim_type` as an attribute of the config object (not a key)
    hid_type = vars(transformer.config).get("encoder_hid_dim_type", _UNSET)
    try:
        Loader(transformer).load_ip_adapter(str(path.parent), weight_name=path.name, subfolder="",
                                            image_encoder_pretrained_model_name_or_path=None,
                                            local_files_only=True, low_cpu_mem_usage=False)
        loaded = LoadedAdapter(transformer.attn_processors, transformer.encoder_hid_proj)
    finally:
        transformer.set_attn_processor(before)
        transformer.encoder_hid_proj = projection
        if hid_type is _UNSET:
            vars(transformer.config).pop("encoder_hid_dim_type", None)
        else:
            vars(transformer.config)["encoder_hid_dim_type"] = hid_type
    for processor in loaded.processors.values():
        if hasattr(processor, "to_k_ip"):
            processor.requires_grad_(False)
    loaded.projection.requires_grad_(False)
    return loaded


def find_clip(library, width: int) -> Path:
    """A CLIP vision encoder (folder or file) whose projection width is `width`."""
    from ..ip_adapter import _vision_config, _vision_width

    for folder in library.encoder_folders:
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not (path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("*.safetensors")))):
                continue
            size = _vision_width(path)
            if size is not None and _vision_config(path, size).get("projection_dim") == width:
                return path
    raise FluxIPAdapterError(f"XLabs' Flux IP-Adapter needs a CLIP vision encoder with {width}-wide image embeds "
                             f"(openai/clip-vit-large-patch14's folder) in "
                             f"{' or '.join(map(str, library.encoder_folders))}")


def clip_pixels(path: Path, image: Image.Image, size: int) -> torch.Tensor:
    from transformers import CLIPImageProcessor

    if path.is_dir() and (path / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
    else:  # what load_ip_adapter makes when the pipeline has no feature extractor
        processor = CLIPImageProcessor(size=size, crop_size=size)
    return processor(image.convert("RGB"), return_tensors="pt").pixel_values


@dataclass
class FluxIPAdapter:
    """One XLabs unit of a pass: processors installed while it samples, embeddings given each step."""
    transformer: torch.nn.Module
    loaded: LoadedAdapter
    positive: torch.Tensor   # (1, 1, width) CLIP image embeds of the unit's picture
    negative: torch.Tensor   # the same for an all-black picture
    weight: float
    start: float
    end: float

    @contextmanager
    def installed(self) -> Iterator[None]:
        transformer = self.transformer
        before, projection = transformer.attn_processors, getattr(transformer, "encoder_hid_proj", None)
        transformer.set_attn_processor(dict(self.loaded.processors))
        transformer.encoder_hid_proj = self.loaded.projection
        try:
            yield
        finally:
            transformer.set_attn_processor(before)
            transformer.encoder_hid_proj = projection

    def kwargs(self, fraction: float, rows: int, copies: int, uncond_first: bool) -> dict[str, Any]:
        scale = self.weight if self.start <= fraction <= self.end else 0.0
        for processor in self.loaded.processors.values():
            if hasattr(processor, "scale"):
                processor.scale = [scale]
        embeds = self.positive.expand(rows, -1, -1).clone()
        if uncond_first and copies > 1:
            embeds[:rows // copies] = self.negative
        return {"joint_attention_kwargs": {"ip_adapter_image_embeds": [embeds]}}


@torch.no_grad()
def prepare(units: list[ControlUnit], model, library, fallback: Image.Image | None
            ) -> tuple[FluxIPAdapter | None, dict[str, str]]:
    """The XLabs IP-Adapter unit on a Flux checkpoint (at most one) and its infotext."""
    from ...model_manager.hashing import legacy_short_hash

    found: list[tuple[int, ControlUnit, Path]] = []
    for index, unit in enumerate(units):
        if unit.enabled and unit.is_ip_adapter and unit.model not in ("", "None"):
            path = library.find(unit.model)
            if is_xlabs_ip_adapter(path):
                found.append((index, unit, path))
    if not found:
        return None, {}
    if len(found) > 1:
        raise ValidationError([FieldError(f"alwayson_scripts.{SCRIPT}.args[{found[1][0]}].model",
                                          "one XLabs Flux IP-Adapter unit per generation")])
    index, unit, path = found[0]
    image = unit.image if unit.image is not None else fallback
    if image is None:
        raise FluxIPAdapterError(f"ControlNet unit {index} (Flux IP-Adapter): give it a reference image")
    transformer, device, dtype = model.unet, model.device.device, model.device.dtype
    key = (str(path), transformer.inner_dim, transformer.config.joint_attention_dim, str(device), str(dtype))
    loaded = library.store.get("clip_vision", key, lambda: load_adapter(path, transformer))
    clip_path = find_clip(library, projection_width(path))
    from ..ip_adapter import load_image_encoder

    encoder = library.store.get("clip_vision", (str(clip_path), str(device), str(dtype)),
                                lambda: load_image_encoder(clip_path, device, dtype))
    size = encoder.config.image_size
    black = Image.new("RGB", image.size, (0, 0, 0))
    pixels = torch.cat([clip_pixels(clip_path, image, size), clip_pixels(clip_path, black, size)])
    embeds = encoder(pixel_values=pixels.to(device, dtype)).image_embeds[:, None]
    adapter = FluxIPAdapter(transformer, loaded, embeds[:1], embeds[1:], unit.weight, unit.guidance_start,
                            unit.guidance_end)
    return adapter, {f"ControlNet {index}": unit.infotext(f"{path.stem} [{legacy_short_hash(path)}]")}


# ---- test files ----------------------------------------------------------------------------------


def write_test_ip_adapter(path: Path, transformer: torch.nn.Module, clip_width: int, seed: int = 0) -> Path:
    """A tiny random adapter in XLabs' layout for this transformer's widths (4 image tokens)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    text, inner = transformer.config.joint_attention_dim, transformer.inner_dim

    def rand(*shape: int, std: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    tensors = {_PROJ: rand(4 * text, clip_width), "ip_adapter_proj_model.proj.bias": rand(4 * text),
               "ip_adapter_proj_model.norm.weight": 1 + rand(text, std=0.1),
               "ip_adapter_proj_model.norm.bias": rand(text, std=0.1)}
    for i in range(len(transformer.transformer_blocks)):
        for kind in ("k", "v"):
            stem = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kind}_proj"
            tensors[f"{stem}.weight"], tensors[f"{stem}.bias"] = rand(inner, text, std=1.0), rand(inner)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_test_clip(folder: Path, projection_dim: int = 24, seed: int = 0) -> Path:
    """A tiny random CLIP vision encoder with projection as transformers saves it (config.json + weights)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(config).save_pretrained(str(folder))
    return folder
