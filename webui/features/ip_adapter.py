"""IP-Adapter: a reference image as a prompt (Ye et al. 2023), as a ControlNet-style unit.

Files from models/ipadapter/ in the published layout (`image_proj.*` + `ip_adapter.N.to_k_ip
/ to_v_ip` for every cross-attention layer), with a CLIP vision encoder found in
models/ipadapter/ or models/clip_vision/ (a transformers CLIPVisionModelWithProjection as
a single .safetensors or a folder; sizes from a `<name>.json` sidecar or the shipped ViT-H
and ViT-bigG configs, told apart by the file's hidden size). The adapter's image projection
decides which encoder output it takes: the projected embedding (plain, "light") or the
penultimate hidden states (plus, full-face). FaceID adapters (features/ip_adapter_faceid.py)
take the insightface embedding of the unit image's face instead, and Plus FaceID adapters
also the hidden states of the aligned face crop.

While a request runs, the UNet's cross-attention processors are swapped for diffusers'
IP-Adapter processors; they are restored afterwards, so the shared model is unchanged.
Unit weight scales the image attention; outside the unit's start/end steps it is zero.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ..model_manager.hashing import legacy_short_hash
from ..model_manager.lookup import ModelNotFound, match, path_names
from ..model_manager.safe_unpickle import PICKLE_SUFFIXES
from ..model_manager.store import ModelStore
from ..model_manager.weight_groups import read_weight_groups
from ..paths import model_files
from .ip_adapter_faceid import (aligned_crop, configure_projection, face_embedding, faceid_variant,
                                reads_without_allow_pickle, unit_face)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# OpenCLIP vision towers used by the published adapters (as transformers configs)
VISION_CONFIGS = {
    1280: {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
           "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
    1664: {"hidden_size": 1664, "intermediate_size": 8192, "num_hidden_layers": 48, "num_attention_heads": 16,
           "patch_size": 14, "image_size": 224, "projection_dim": 1280, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
}


class IPAdapterError(ValueError):
    user_facing = True


class IPAdapterNotFound(ModelNotFound, IPAdapterError):
    """No IP-Adapter file answers to the name (an IPAdapterError too, as before)."""


@dataclass
class AdapterFile:
    name: str
    path: Path
    state: dict[str, dict[str, torch.Tensor]]   # {"image_proj": {...}, "ip_adapter": {...}}

    @property
    def variant(self) -> str:
        """plain, plus, full-face, faceid, faceid-plus or faceid-plusv2 (FaceID: an insightface embedding)."""
        proj = self.state["image_proj"]
        if "proj.weight" in proj:
            return "plain"
        if "proj.3.weight" in proj:
            return "full-face"
        if "latents" in proj:
            return "plus"
        return faceid_variant(self.name, proj) or "unknown"

    @property
    def is_faceid(self) -> bool:
        return self.variant.startswith("faceid")

    @property
    def uses_hidden_states(self) -> bool:
        """Plus / full-face / FaceID Plus adapters read the encoder's penultimate hidden states."""
        return self.variant in ("plus", "full-face", "faceid-plus", "faceid-plusv2")

    @property
    def embedding_width(self) -> int:
        """The CLIP encoder width the adapter reads (FaceID: the 512-d face embedding)."""
        proj = self.state["image_proj"]
        if "perceiver_resampler.proj_in.weight" in proj:
            return proj["perceiver_resampler.proj_in.weight"].shape[1]
        if "proj.weight" in proj:
            return proj["proj.weight"].shape[1]
        if "proj.0.weight" in proj:
            return proj["proj.0.weight"].shape[1]
        if "proj_in.weight" in proj:
            return proj["proj_in.weight"].shape[1]
        raise IPAdapterError("unrecognised IP-Adapter image projection")

    @property
    def cross_attention_width(self) -> int:
        first = next(v for k, v in self.state["ip_adapter"].items() if k.endswith("to_k_ip.weight"))
        return first.shape[1]


def read_adapter(path: Path, allow_pickle: bool = False) -> AdapterFile:
    state = read_weight_groups(path, ("image_proj", "ip_adapter"), allow_pickle or reads_without_allow_pickle(path))
    if not state.get("image_proj") or not state.get("ip_adapter"):
        raise IPAdapterError(f"{path.name}: not an IP-Adapter file (image_proj / ip_adapter missing)")
    return AdapterFile(path.stem, path, state)


# ---- CLIP vision encoders ------------------------------------------------------------------------


def _vision_width(path: Path) -> int | None:
    target = path if path.is_file() else next(iter(sorted(path.glob("*.safetensors"))), None)
    if target is None or target.suffix != ".safetensors":
        return None
    with safe_open(str(target), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("encoder.layers.0.self_attn.q_proj.weight"):
                return handle.get_slice(key).get_shape()[0]
    return None


def _vision_config(path: Path, width: int) -> dict[str, Any]:
    sidecar = path.with_suffix(".json") if path.is_file() else path / "config.json"
    if sidecar.is_file():
        data = json.loads(sidecar.read_text())
        return data.get("vision_config", data)
    if width not in VISION_CONFIGS:
        raise IPAdapterError(f"{path.name}: a {width}-wide vision encoder needs a {sidecar.name} with its config")
    return dict(VISION_CONFIGS[width])


def load_image_encoder(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    width = _vision_width(path)
    config = {k: v for k, v in _vision_config(path, width or 0).items() if not k.startswith("_") and k not in (
        "architectures", "model_type", "transformers_version", "torch_dtype")}
    weights = path if path.is_file() else sorted(path.glob("*.safetensors"))[0]
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.endswith("position_ids")}
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise IPAdapterError(f"{path.name}: {len(missing)} vision-encoder tensors missing (first: {missing[0]})")
    model.load_state_dict({k: tensors[k].to(device, dtype) for k in expected if k in tensors}, strict=False, assign=True)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            parent.register_buffer(leaf, torch.arange(buffer.shape[-1], device=device).expand((1, -1)),
                                   persistent=False)
    return model.eval().requires_grad_(False)


def clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing: shortest side to `size` (bicubic), centre crop, normalise."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None]


# ---- library and per-request application -----------------------------------------------------------


class IPAdapterLibrary:
    def __init__(self, adapter_folders: list[Path], encoder_folders: list[Path], allow_pickle: bool = False,
                 faces: Callable[[], Any] | None = None, store: ModelStore | None = None):
        self.adapter_folders = adapter_folders
        self.encoder_folders = encoder_folders
        self.allow_pickle = allow_pickle
        # the app's FaceAnalyzer (shared with the Identity tab) for FaceID adapters; set by the app
        self.faces = faces
        # loaded vision encoders live in the app's model store (kind "clip_vision"), under its budget
        self.store = store if store is not None else ModelStore()

    def _candidates(self) -> list[Path]:
        return model_files(self.adapter_folders, (".safetensors",) + PICKLE_SUFFIXES)

    def adapter_paths(self) -> list[Path]:
        """Every adapter file (the folders may hold vision encoders too: each safetensors header is checked)."""
        return [p for p in self._candidates() if self._is_adapter(p)]

    @staticmethod
    def _is_adapter(path: Path) -> bool:
        if path.suffix != ".safetensors":
            return "ip-adapter" in path.name.lower() or "ip_adapter" in path.name.lower()
        with safe_open(str(path), framework="pt") as handle:
            # FLUX.1 Redux and XLabs' Flux IP-Adapter too
            return any(k.startswith(("ip_adapter.", "redux_up.", "ip_adapter_proj_model.")) for k in handle.keys())

    def titles(self) -> list[tuple[str, str]]:
        """(name, 8-digit legacy hash) of every adapter file."""
        return [(p.stem, legacy_short_hash(p)) for p in self.adapter_paths()]

    def names_for(self, unet_config: dict[str, Any]) -> list[str]:
        names = []
        for path in self.adapter_paths():
            try:
                adapter = read_adapter(path, self.allow_pickle)
            except Exception:
                continue
            if adapter.cross_attention_width == unet_config["cross_attention_dim"]:
                names.append(path.stem)
        return names

    def find(self, name: str) -> Path:
        """An adapter file by stem, `stem [hash]` title, file name or path (the `lookup` contract).

        Matches on the listing and checks the header of the file found only; `load` reads the weights.
        """
        def names(path: Path) -> list[str]:
            return path_names(path, self.adapter_folders)

        found = match(name, self._candidates(), names)
        if found is not None and not self._is_adapter(found):  # e.g. a vision encoder's name: look among adapters
            found = match(name, self.adapter_paths(), names)
        if found is None:  # FLUX.1 Redux as diffusers' folder (image_embedder/ + image_encoder/)
            from .controlnet.flux_redux import find_folder

            found = find_folder(name, self.adapter_folders)
        if found is None:
            raise IPAdapterNotFound("IP-Adapter model", name.strip(), [p.stem for p in self.adapter_paths()],
                                    " or ".join(map(str, self.adapter_folders)))
        return found

    def load(self, name: str) -> AdapterFile:
        """The adapter's weights, read from its file on every call (not cached yet: the model store's job)."""
        return read_adapter(self.find(name), self.allow_pickle)

    def encoder_for(self, adapter: AdapterFile, device: torch.device, dtype: torch.dtype):
        """A vision encoder whose output width fits the adapter's image projection."""
        candidates = [p for folder in self.encoder_folders if folder.is_dir() for p in sorted(folder.iterdir())
                      if (p.suffix == ".safetensors" or (p.is_dir() and any(p.glob("*.safetensors"))))
                      and _vision_width(p) is not None]
        for path in candidates:
            width = _vision_width(path)
            config = _vision_config(path, width)
            fits = (config.get("hidden_size") == adapter.embedding_width if adapter.uses_hidden_states
                    else config.get("projection_dim") == adapter.embedding_width)
            if fits:
                key = (str(path), str(device), str(dtype))
                return self.store.get("clip_vision", key, lambda: load_image_encoder(path, device, dtype))
        raise IPAdapterError(
            f"IP-Adapter {adapter.name} needs a CLIP vision encoder with {adapter.embedding_width}-wide output in "
            f"{' or '.join(map(str, self.encoder_folders))} (for SD 1.x adapters: the ViT-H/14 image encoder)")


@dataclass
class IPAdapterApplication:
    adapter: AdapterFile
    positive: torch.Tensor   # (1, 1, width) or (1, 1, tokens, width) image embedding, conditional half
    negative: torch.Tensor   # the same for an empty image
    weight: float
    start: float
    end: float
    # FaceID Plus: the CLIP hidden states of the face crop, (1, 1, tokens, width), beside the id embedding
    clip_positive: torch.Tensor | None = None
    clip_negative: torch.Tensor | None = None
    shortcut: bool = False   # FaceID Plus v2


def batch_layout(positive: torch.Tensor, negative: torch.Tensor, batch: int, copies: int,
                 with_uncond: bool) -> torch.Tensor:
    """Per-image tensors laid out like the denoiser's batch: [uncond, cond, cond...] x batch."""
    parts = [negative] * (1 if with_uncond else 0) + [positive] * (copies - int(with_uncond))
    return torch.cat([p.expand(batch, *p.shape[1:]) for p in parts])


@torch.no_grad()
def embed(encoder, adapter: AdapterFile, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embeddings; several reference images are averaged."""
    param = next(encoder.parameters())
    size = encoder.config.image_size
    pixels = torch.cat([clip_pixels(image, size) for image in images]).to(param.device, param.dtype)
    zeros = torch.zeros_like(pixels[:1])
    if adapter.uses_hidden_states:
        positive = encoder(pixels, output_hidden_states=True).hidden_states[-2].mean(0, keepdim=True)
        negative = encoder(zeros, output_hidden_states=True).hidden_states[-2]
    else:
        positive = encoder(pixels).image_embeds.mean(0, keepdim=True)
        negative = torch.zeros_like(positive)
    # (batch, images, ...) as diffusers' image projection expects: one (averaged) image per adapter
    return positive[:, None], negative[:, None]


class _EmptyFp32Notice(logging.Filter):
    """diffusers' `ModelMixin.to()` warns that modules "should be kept in float32: []" even when that
    list is empty, once per batch here; only that meaningless message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def _quiet_empty_fp32_notice() -> None:
    """Attach the filter to that one diffusers logger (idempotent); its verbosity is left as it is."""
    target = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFp32Notice) for f in target.filters):
        target.addFilter(_EmptyFp32Notice())


class IPAdapterPatch:
    """Installs IP-Adapter attention processors on the UNet for one request and removes them after."""

    def __init__(self, unet, applications: list[IPAdapterApplication]):
        self.unet = unet
        self.applications = applications
        self._original = None
        self._embeds: dict[tuple, list[torch.Tensor]] = {}
        self._clip: dict[tuple, dict[int, torch.Tensor]] = {}
        self.notes: list[str] = []   # for the result's warnings ("3 faces found ...")

    def __enter__(self) -> "IPAdapterPatch":
        self._original = dict(self.unet.attn_processors)
        self._original_proj = self.unet.encoder_hid_proj
        self._original_type = self.unet.config.encoder_hid_dim_type
        _quiet_empty_fp32_notice()
        self.unet._load_ip_adapter_weights([a.adapter.state for a in self.applications], low_cpu_mem_usage=False)
        self._processors = [p for p in self.unet.attn_processors.values() if isinstance(getattr(p, "scale", None), list)]
        for index, app in enumerate(self.applications):
            if app.clip_positive is not None:
                configure_projection(self.unet.encoder_hid_proj.image_projection_layers[index], app.shortcut)
        self._scales: list[float] | None = None
        return self

    def __exit__(self, *exc) -> None:
        # the projection first: a Resampler ("plus", InstantID) has attention layers of its own
        self.unet.encoder_hid_proj = self._original_proj
        self.unet.config.encoder_hid_dim_type = self._original_type
        self.unet.set_attn_processor(self._original)

    def set_step(self, fraction: float) -> None:
        """Unit weights inside each unit's start/end fraction of the steps, zero outside."""
        scales = [a.weight if a.start <= fraction <= a.end else 0.0 for a in self.applications]
        if scales != self._scales:
            for processor in self._processors:
                processor.scale = scales
            self._scales = scales

    def image_embeds(self, batch: int, copies: int, with_uncond: bool, dtype, device) -> list[torch.Tensor]:
        """One tensor per adapter, laid out like the denoiser's batch: [uncond, cond, cond...] x batch."""
        key = (batch, copies, with_uncond, dtype, device)

        def layout(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
            return batch_layout(positive, negative, batch, copies, with_uncond).to(device, dtype)

        if key not in self._embeds:
            self._embeds[key] = [layout(app.positive, app.negative) for app in self.applications]
            self._clip[key] = {i: layout(app.clip_positive, app.clip_negative)
                               for i, app in enumerate(self.applications) if app.clip_positive is not None}
        # FaceID Plus projections read the face crop's CLIP states from an attribute, in the same layout
        for index, states in self._clip[key].items():
            self.unet.encoder_hid_proj.image_projection_layers[index].clip_embeds = states
        return self._embeds[key]


def prepare_adapters(units: list, model, library: IPAdapterLibrary, fallback: Image.Image | None
                     ) -> tuple[IPAdapterPatch | None, dict[str, str]]:
    """The request's enabled IP-Adapter units as one patch for the model's UNet, and their infotext."""
    applications, params, notes = [], {}, []
    for index, unit in enumerate(units):
        if not unit.enabled or not unit.is_ip_adapter:
            continue
        image = unit.image if unit.image is not None else fallback
        if image is None:
            raise IPAdapterError(f"ControlNet unit {index} (IP-Adapter): give it a reference image")
        if unit.model in ("", "None"):
            raise IPAdapterError(f"ControlNet unit {index} (IP-Adapter): choose an IP-Adapter model")
        adapter = library.load(unit.model)
        if adapter.variant == "unknown":
            keys = ", ".join(sorted(adapter.state["image_proj"])[:4])
            raise IPAdapterError(f"ControlNet unit {index}: {adapter.name} has an IP-Adapter image projection "
                                 f"this version does not know (image_proj keys {keys}, ...)")
        cross = model.configs["unet"]["cross_attention_dim"]
        if adapter.cross_attention_width != cross:
            raise IPAdapterError(f"ControlNet unit {index}: IP-Adapter {adapter.name} is for another model family "
                                 f"(cross-attention {adapter.cross_attention_width}, this checkpoint {cross})")
        if adapter.is_faceid:
            applications.append(_faceid_application(unit, index, image, adapter, model, library, notes))
        else:
            encoder = library.encoder_for(adapter, model.device.device, model.device.dtype)
            positive, negative = embed(encoder, adapter, [image])
            applications.append(IPAdapterApplication(adapter, positive, negative, unit.weight, unit.guidance_start,
                                                     unit.guidance_end))
        params[f"ControlNet {index}"] = unit.infotext(f"{adapter.name} [{legacy_short_hash(adapter.path)}]")
    if not applications:
        return None, params
    patch = IPAdapterPatch(model.unet, applications)
    patch.notes = notes
    return patch, params


def _faceid_application(unit, index: int, image: Image.Image, adapter: AdapterFile, model,
                        library: IPAdapterLibrary, notes: list[str]) -> IPAdapterApplication:
    """A FaceID unit: the face's embedding, and for Plus the CLIP hidden states of its aligned crop."""
    face = unit_face(library.faces, image, index, adapter.name)
    if face.note:
        notes.append(face.note)
    positive, negative = face_embedding(face)
    application = IPAdapterApplication(adapter, positive, negative, unit.weight, unit.guidance_start,
                                       unit.guidance_end)
    if adapter.uses_hidden_states:
        encoder = library.encoder_for(adapter, model.device.device, model.device.dtype)
        clip_positive, clip_negative = embed(encoder, adapter, [aligned_crop(image, face.kps)])
        application.clip_positive, application.clip_negative = clip_positive, clip_negative
        application.shortcut = adapter.variant == "faceid-plusv2"
    return application


def write_test_adapter(path: Path, unet, embedding_width: int, seed: int = 0, variant: str = "plain") -> Path:
    """A random IP-Adapter for `unet` in the published key layout (tests, benchmarks).

    plain: projects the image embedding to 4 tokens; full-face: projects every hidden state
    of the encoder (`embedding_width` is then the encoder's hidden size).
    """
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    cross, tokens = unet.config.cross_attention_dim, 4  # plain adapters have 4 image tokens
    if variant == "full-face":
        width = embedding_width
        tensors = {"image_proj.proj.0.weight": torch.randn(width, width, generator=generator) * 0.2,
                   "image_proj.proj.0.bias": torch.zeros(width),
                   "image_proj.proj.2.weight": torch.randn(cross, width, generator=generator) * 0.2,
                   "image_proj.proj.2.bias": torch.zeros(cross),
                   "image_proj.proj.3.weight": torch.ones(cross), "image_proj.proj.3.bias": torch.zeros(cross)}
    else:
        tensors = {"image_proj.proj.weight": torch.randn(tokens * cross, embedding_width, generator=generator) * 0.1,
                   "image_proj.proj.bias": torch.zeros(tokens * cross),
                   "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1  # the published numbering: the index among all attention processors, cross ones are odd
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.5
        key_id += 2
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_test_encoder(path: Path, projection_dim: int, hidden_size: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIP vision encoder (.safetensors + .json config sidecar) for tests."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = {"hidden_size": hidden_size, "intermediate_size": hidden_size * 2, "num_hidden_layers": 2,
              "num_attention_heads": 2, "patch_size": 14, "image_size": 56, "projection_dim": projection_dim,
              "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(config))
    return path
