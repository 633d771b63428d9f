"""Sidecar files beside a checkpoint that override detection, as in AUTOMATIC1111.

`<name>.yaml` is the original inference config (LDM/SGM). It is translated into the
family, prediction type and diffusers configs of the UNet and VAE.
`<name>.json` is Easel's form: any of `architecture` (sd1, sd2, sdxl, sdxl-refiner),
`prediction_type` (epsilon, v_prediction), `inpainting` (bool) and `components`
(diffusers configs by component name). Unrelated keys (AUTOMATIC1111's user metadata:
description, notes, ...) are ignored. The JSON applies on top of the YAML.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .architecture import PREDICTION_TYPES, Architecture, ModelConfigs, configs_for, family_names
from .detect import Detection, DetectionError, detect


class SidecarError(ValueError):
    """A sidecar file exists but cannot be used; the message names the file and field."""


@dataclass
class SidecarOverrides:
    family: str | None = None
    prediction_type: str | None = None
    inpainting: bool | None = None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    demo: bool = False  # written by --demo-model: its images are noise, and the UI says so
    sources: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.family is None and self.prediction_type is None and self.inpainting is None and not self.components


def sidecar_paths(checkpoint: Path) -> list[Path]:
    base = checkpoint.with_suffix("") if checkpoint.is_file() else checkpoint
    return [p for p in (base.with_name(base.name + ".yaml"), base.with_name(base.name + ".json")) if p.is_file()]


def read_sidecars(checkpoint: Path) -> SidecarOverrides:
    result = SidecarOverrides()
    for path in sidecar_paths(checkpoint):
        if path.suffix == ".yaml":
            _apply_yaml(path, result)
        else:
            _apply_json(path, result)
        result.sources.append(path)
    return result


def file_configs(shapes: dict[str, tuple[int, ...]], sidecar: SidecarOverrides,
                 name: str = "") -> tuple[ModelConfigs, bool]:
    """Configs for a single-file checkpoint: the architecture detected from its tensors, overridden by its
    sidecars; and whether the prediction type is still a guess (SD 2.x files do not say; the loader probes).

    Raises DetectionError when the tensors are no known architecture.
    """
    try:
        detection = detect(shapes)
    except DetectionError:
        if not sidecar.family:
            raise
        detection = Detection(Architecture(sidecar.family))  # the sidecar says what its tensors cannot
    found = detection.architecture
    from ..families.registry import refine_by_name

    arch = Architecture(sidecar.family or refine_by_name(found.family, name), sidecar.prediction_type or found.prediction_type,
                        found.inpainting if sidecar.inpainting is None else sidecar.inpainting)
    uncertain = detection.prediction_uncertain and not sidecar.prediction_type
    return configs_for(arch, sidecar.components), uncertain


def _apply_json(path: Path, out: SidecarOverrides) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SidecarError(f"{path.name}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SidecarError(f"{path.name}: expected a JSON object")
    if "architecture" in data:
        if data["architecture"] not in family_names():
            raise SidecarError(f"{path.name}: architecture must be one of {', '.join(family_names())}")
        out.family = data["architecture"]
    if "prediction_type" in data:
        if data["prediction_type"] not in PREDICTION_TYPES:
            raise SidecarError(f"{path.name}: prediction_type must be one of {', '.join(PREDICTION_TYPES)}")
        out.prediction_type = data["prediction_type"]
    if "inpainting" in data:
        if not isinstance(data["inpainting"], bool):
            raise SidecarError(f"{path.name}: inpainting must be true or false")
        out.inpainting = data["inpainting"]
    out.demo = bool(data.get("easel_demo", out.demo))
    components = data.get("components", {})
    if not isinstance(components, dict) or not all(isinstance(v, dict) for v in components.values()):
        raise SidecarError(f"{path.name}: components must map component names to config objects")
    out.components.update(components)


def _apply_yaml(path: Path, out: SidecarOverrides) -> None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = data["model"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SidecarError(f"{path.name}: not an LDM/SGM inference config ({exc})") from exc

    unet = params.get("unet_config") or params.get("network_config") or {}
    unet_params = unet.get("params", {})
    if "conditioner_config" in params:
        embedders = params["conditioner_config"].get("params", {}).get("emb_models", [])
        text_targets = [e.get("target", "") for e in embedders if "Text" in e.get("target", "") or "CLIP" in e.get("target", "")]
        out.family = "sdxl" if len(text_targets) >= 2 else "sdxl-refiner"
    else:
        target = params.get("cond_stage_config", {}).get("target", "")
        out.family = "sd2" if "OpenCLIP" in target else "sd1"

    denoiser = str(params.get("denoiser_config", {}))
    if params.get("parameterization") == "v" or "VScaling" in denoiser:
        out.prediction_type = "v_prediction"
    elif "parameterization" in params or "EpsScaling" in denoiser:
        out.prediction_type = "epsilon"

    if unet_params:
        out.components["unet"] = _unet_from_ldm(unet_params, sdxl=out.family in ("sdxl", "sdxl-refiner"))
        out.inpainting = unet_params.get("in_channels", 4) == 9
    ddconfig = params.get("first_stage_config", {}).get("params", {}).get("ddconfig")
    if ddconfig:
        out.components["vae"] = _vae_from_ldm(ddconfig, params.get("scale_factor"))


def _unet_from_ldm(p: dict[str, Any], sdxl: bool) -> dict[str, Any]:
    """LDM UNetModel params -> diffusers UNet2DConditionModel config."""
    channels = [p["model_channels"] * m for m in p["channel_mult"]]
    attention_at = set(p.get("attention_resolutions", []))
    with_attention = [2 ** i in attention_at for i in range(len(channels))]
    head_channels = p.get("num_head_channels", -1)
    heads = [c // head_channels for c in channels] if head_channels and head_channels > 0 else p.get("num_heads", 8)
    depth = p.get("transformer_depth", 1)
    if isinstance(depth, list):
        depth = [max(int(d), 1) for d in depth]  # SGM writes 0 for levels without attention
    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True,
        "freq_shift": 0, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        # LDM hard-codes 32 groups; the key lets tests describe tiny models in the same format
        "norm_num_groups": p.get("norm_num_groups", 32),
        "in_channels": p.get("in_channels", 4), "out_channels": p.get("out_channels", 4),
        "layers_per_block": p["num_res_blocks"], "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attention)],
        "attention_head_dim": heads, "cross_attention_dim": p.get("context_dim", 768),
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": depth,
    }
    if sdxl or p.get("adm_in_channels"):
        config.update({"addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
                       "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": p["adm_in_channels"]})
    return config


def _vae_from_ldm(dd: dict[str, Any], scale_factor: float | None) -> dict[str, Any]:
    blocks = len(dd["ch_mult"])
    config = {
        "_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": dd.get("in_channels", 3),
        "out_channels": dd.get("out_ch", 3), "latent_channels": dd.get("z_channels", 4),
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]], "layers_per_block": dd["num_res_blocks"],
        "down_block_types": ["DownEncoderBlock2D"] * blocks, "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "norm_num_groups": dd.get("norm_num_groups", 32), "sample_size": dd.get("resolution", 256),
    }
    if scale_factor is not None:
        config["scaling_factor"] = float(scale_factor)
    return config
