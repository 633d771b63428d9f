"""FLUX.1 Redux as the image prompt of a Flux checkpoint (an IP-Adapter unit, `ip-adapter-auto`).

Redux is not an adapter in the transformer: a SigLIP vision encoder reads the image, a small MLP (BFL's
`flux1-redux-dev.safetensors`, diffusers' `ReduxImageEncoder`: `redux_up` / `redux_down`) maps its
hidden states to T5's width, and those tokens are appended to the prompt's T5 sequence, as
FluxPriorReduxPipeline does before handing its embeddings to FluxPipeline. So it needs no attention
patch, only a changed conditioning: a denoiser edit appends the tokens (times the unit's weight) to
every positive conditioning, and zeros of the same length to the negative one so the CFG batch keeps
one shape. Several Redux units concatenate their tokens (ComfyUI's style-model chaining).

Files, offline only: the Redux file in models/ipadapter (listed for Flux checkpoints only), or diffusers'
`black-forest-labs/FLUX.1-Redux-dev` folder there (`image_embedder/` ReduxImageEncoder, `image_encoder/`
SiglipVisionModel, `feature_extractor/` SiglipImageProcessor, read with their own from_pretrained; the
folder's name is the model name); for the single file the SigLIP
vision encoder (ComfyUI's `sigclip_vision_patch14_384.safetensors`, transformers' SiglipVisionModel
names) in models/clip_vision or models/ipadapter; its config is SigLIP so400m-patch14-384's unless a
same-named .json sidecar gives another. Pixels go through transformers' SiglipImageProcessor at the
encoder's size, as the Redux pipeline's feature extractor does. XLabs' Flux IP-Adapter, the other image
prompt of a Flux checkpoint, is flux_ip_adapter.py (units naming one are skipped here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from ...core.conditioning import Conditioning, StepConditioning
from ...core.request import FieldError, ValidationError
from .flux_ip_adapter import is_xlabs_ip_adapter
from .units import SCRIPT, ControlUnit

# google/siglip-so400m-patch14-384, the encoder FLUX.1 Redux was trained with
SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                 "image_size": 384, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
_PREFIX = "vision_model."
FOLDER_PARTS = ("image_embedder", "image_encoder")


class ReduxError(ValueError):
    user_facing = True


def _keys(path: Path) -> list[str]:
    if path.suffix != ".safetensors" or not path.is_file():
        return []
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def is_redux_folder(path: Path) -> bool:
    """diffusers' FluxPriorReduxPipeline folder: the Redux MLP and its SigLIP encoder in subfolders."""
    return path.is_dir() and all((path / part / "config.json").is_file() for part in FOLDER_PARTS)


def is_redux(path: Path) -> bool:
    return is_redux_folder(path) or "redux_up.weight" in _keys(path)


def redux_folders(folders: list[Path]) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if is_redux_folder(p)]


def find_folder(name: str, folders: list[Path]) -> Path | None:
    """A Redux folder by its name (or `name [hash]`, as the infotext writes it), case-insensitive."""
    wanted = name.strip().split(" [")[0].lower()
    return next((p for p in redux_folders(folders) if p.name.lower() == wanted), None)


def weights_file(path: Path) -> Path:
    """The file that names the model in the infotext's hash: the MLP's weights in a folder."""
    if not path.is_dir():
        return path
    return next(iter(sorted((path / "image_embedder").glob("*.safetensors"))), path / "image_embedder" / "config.json")


def _is_siglip(keys: list[str]) -> bool:
    """SigLIP's vision tower: patch embedding and no class token (CLIP's has one)."""
    return any(k.endswith("embeddings.patch_embedding.weight") for k in keys) and \
        not any(k.endswith("class_embedding") for k in keys)


def names(library) -> list[str]:
    """Redux files among the IP-Adapter models (what a Flux checkpoint's image-prompt unit can pick)."""
    return [p.stem for p in library._candidates() if is_redux(p)] + [p.name for p in redux_folders(library.adapter_folders)]


# ---- loading --------------------------------------------------------------------------------------


def load_redux(path: Path, device: torch.device, dtype: torch.dtype):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    tensors = load_file(str(path))
    up = tensors["redux_up.weight"]
    model = ReduxImageEncoder(redux_dim=up.shape[1], txt_in_features=up.shape[0] // 3)
    model.load_state_dict(tensors)
    return model.to(device, dtype).eval().requires_grad_(False)


def siglip_config(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        data = json.loads(sidecar.read_text())
        return {k: v for k, v in data.get("vision_config", data).items() if not k.startswith("_") and k not in (
            "architectures", "model_type", "transformers_version", "torch_dtype")}
    return dict(SIGLIP_SO400M)


def load_siglip(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    # published files carry transformers' `vision_model.` prefix, which its SiglipVisionModel state dict lacks
    tensors = {k.removeprefix(_PREFIX): v for k, v in load_file(str(path)).items()}
    config = SiglipVisionConfig(**siglip_config(path), vision_use_head="head.probe" in tensors)
    model = SiglipVisionModel(config)
    missing, _ = model.load_state_dict({k: v for k, v in tensors.items() if not k.endswith("position_ids")},
                                       strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ReduxError(f"{path.name}: {len(missing)} SigLIP tensors missing (first: {missing[0]})")
    return model.to(device, dtype).eval().requires_grad_(False)


def find_siglip(library, width: int) -> Path:
    """A SigLIP vision encoder whose hidden width is the Redux file's input width."""
    for folder in library.encoder_folders:
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            keys = _keys(path)
            if _is_siglip(keys) and siglip_config(path)["hidden_size"] == width:
                return path
    raise ReduxError(f"FLUX.1 Redux needs its SigLIP vision encoder ({width} wide, e.g. "
                     f"sigclip_vision_patch14_384.safetensors) in {' or '.join(map(str, library.encoder_folders))}")


def siglip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """The Redux pipeline's preprocessing: SiglipImageProcessor at the encoder's size (bicubic, [-1, 1])."""
    from transformers import SiglipImageProcessor

    processor = SiglipImageProcessor(size={"height": size, "width": size})
    return processor.preprocess(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]


@torch.no_grad()
def image_tokens(library, path: Path, image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, tokens, T5 width): SigLIP's last hidden state through the Redux MLP."""
    store = library.store
    if path.is_dir():
        return _folder_tokens(store, path, image, device, dtype)
    redux = store.get("clip_vision", (str(path), str(device), str(dtype)), lambda: load_redux(path, device, dtype))
    encoder_path = find_siglip(library, redux.config.redux_dim)
    encoder = store.get("clip_vision", (str(encoder_path), str(device), str(dtype)),
                        lambda: load_siglip(encoder_path, device, dtype))
    pixels = siglip_pixels(image, encoder.config.image_size).to(device, dtype)
    return redux(encoder(pixel_values=pixels).last_hidden_state).image_embeds.float()


def _folder_tokens(store, path: Path, image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A diffusers Redux folder: each part with its own from_pretrained, pixels by its feature extractor."""
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionModel

    def part(cls, name: str):
        return lambda: cls.from_pretrained(str(path / name), local_files_only=True, torch_dtype=dtype).to(device) \
            .eval().requires_grad_(False)

    redux = store.get("clip_vision", (str(path / "image_embedder"), str(device), str(dtype)),
                      part(ReduxImageEncoder, "image_embedder"))
    encoder = store.get("clip_vision", (str(path / "image_encoder"), str(device), str(dtype)),
                        part(SiglipVisionModel, "image_encoder"))
    if (path / "feature_extractor" / "preprocessor_config.json").is_file():
        processor = SiglipImageProcessor.from_pretrained(str(path / "feature_extractor"), local_files_only=True)
        pixels = processor.preprocess(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
    else:
        pixels = siglip_pixels(image, encoder.config.image_size)
    return redux(encoder(pixel_values=pixels.to(device, dtype)).last_hidden_state).image_embeds.float()


# ---- requests --------------------------------------------------------------------------------------


@dataclass
class ReduxEdit:
    """A denoiser edit: the image tokens after every positive conditioning, zeros after the negative."""
    tokens: torch.Tensor

    def _extend(self, schedule: StepConditioning, tokens: torch.Tensor) -> StepConditioning:
        def one(c: Conditioning) -> Conditioning:
            return Conditioning(torch.cat([c.embeds, tokens.to(c.embeds.device, c.embeds.dtype)], dim=1), c.pooled)

        return StepConditioning([([(end, one(c)) for end, c in part], weight) for part, weight in schedule.parts])

    def __call__(self, denoiser) -> None:
        for inner in denoiser.inner_denoisers():
            inner.uncond = self._extend(inner.uncond, torch.zeros_like(self.tokens))
            inner.set_conditioning(self._extend(inner.cond, self.tokens))


def prepare(units: list[ControlUnit], model, library, fallback: Image.Image | None
            ) -> tuple[ReduxEdit | None, dict[str, str]]:
    """The enabled image-prompt units on a Flux checkpoint as one Redux edit, and their infotext."""
    from ...model_manager.hashing import legacy_short_hash

    found, params = [], {}
    for index, unit in enumerate(units):
        if not unit.enabled or not unit.is_ip_adapter:
            continue
        image = unit.image if unit.image is not None else fallback
        if image is None:
            raise ReduxError(f"ControlNet unit {index} (Redux): give it a reference image")
        path = library.find(unit.model)
        if is_xlabs_ip_adapter(path):  # XLabs' Flux IP-Adapter: flux_ip_adapter.py
            continue
        if not is_redux(path):
            raise ValidationError([FieldError(f"alwayson_scripts.{SCRIPT}.args[{index}].model",
                                              f"{path.stem} is not a FLUX.1 Redux file; {model.architecture.label} "
                                              f"takes Redux (flux1-redux-dev.safetensors) or XLabs' Flux "
                                              f"IP-Adapter as its image prompt")])
        tokens = image_tokens(library, path, image, model.device.device, model.device.dtype)
        found.append(tokens * unit.weight)
        name = path.name if path.is_dir() else path.stem
        params[f"ControlNet {index}"] = unit.infotext(f"{name} [{legacy_short_hash(weights_file(path))}]")
    if not found:
        return None, params
    return ReduxEdit(torch.cat(found, dim=1)), params


def refuse_on_other_families(units: list[ControlUnit], library) -> None:
    """A Redux file named in a unit of a UNet checkpoint: a 422 on the unit's model field."""
    for index, unit in enumerate(units):
        if not (unit.enabled and unit.is_ip_adapter and unit.model not in ("", "None")):
            continue
        path = library.find(unit.model)
        if is_redux(path) or is_xlabs_ip_adapter(path):
            kind = "FLUX.1 Redux" if is_redux(path) else "XLabs' Flux IP-Adapter"
            raise ValidationError([FieldError(f"alwayson_scripts.{SCRIPT}.args[{index}].model",
                                              f"{unit.model} is {kind}: it needs a Flux checkpoint")])


# ---- test files ----------------------------------------------------------------------------------


def write_test_redux(folder: Path, encoder_folder: Path, text_width: int, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random SigLIP (with its .json sidecar) and Redux MLP, in the published single-file layouts."""
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 56, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    encoder = SiglipVisionModel(SiglipVisionConfig(**config, vision_use_head=False))
    encoder_folder.mkdir(parents=True, exist_ok=True)
    encoder_path = encoder_folder / "sigclip_vision_tiny.safetensors"
    save_file({_PREFIX + k: v.contiguous() for k, v in encoder.state_dict().items()}, str(encoder_path))
    encoder_path.with_suffix(".json").write_text(json.dumps(config))
    redux = ReduxImageEncoder(redux_dim=32, txt_in_features=text_width)
    with torch.no_grad():  # signal strong enough to change a tiny model's image
        redux.redux_down.weight.normal_(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flux1-redux-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in redux.state_dict().items()}, str(path))
    return path, encoder_path


def write_test_redux_folder(folder: Path, redux_file: Path, encoder_file: Path) -> Path:
    """The same tiny weights as diffusers' FLUX.1-Redux-dev folder (model_index.json, image_embedder/,
    image_encoder/, feature_extractor/; no text encoders, as published)."""
    from transformers import SiglipImageProcessor

    cpu = torch.device("cpu")
    load_redux(redux_file, cpu, torch.float32).save_pretrained(str(folder / "image_embedder"))
    encoder = load_siglip(encoder_file, cpu, torch.float32)
    encoder.save_pretrained(str(folder / "image_encoder"))
    size = encoder.config.image_size
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(str(folder / "feature_extractor"))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPriorReduxPipeline", "feature_extractor": ["transformers", "SiglipImageProcessor"],
        "image_embedder": ["flux", "ReduxImageEncoder"], "image_encoder": ["transformers", "SiglipVisionModel"],
        "text_encoder": [None, None], "text_encoder_2": [None, None], "tokenizer": [None, None],
        "tokenizer_2": [None, None]}))
    return folder
