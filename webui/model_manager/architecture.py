"""Model architectures Easel knows, and the offline configs that build them.

Each family has diffusers component configs in `configs/<family>/*.json`, shipped with the
project. Variants (inpainting, v-prediction) are small overrides on top of them; a sidecar
file beside a checkpoint can replace any component config (that is how the tests' tiny
models declare their sizes).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Components each family has, in the order their text encoders are used.
TEXT_ENCODERS = {
    "sd1": ("text_encoder",),
    "sd2": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sdxl-refiner": ("text_encoder_2",),
}


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint is: family, prediction type, and whether it is an inpainting model."""

    family: str
    prediction_type: str = "epsilon"
    inpainting: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type!r}")

    @property
    def label(self) -> str:
        text = FAMILY_LABELS[self.family]
        if self.prediction_type == "v_prediction":
            text += " (v-prediction)"
        if self.inpainting:
            text += " inpainting"
        return text

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl-refiner")

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return TEXT_ENCODERS[self.family]

    @property
    def default_size(self) -> int:
        if self.is_sdxl:
            return 1024
        return 768 if self.family == "sd2" and self.prediction_type == "v_prediction" else 512


@dataclass
class ModelConfigs:
    """Diffusers configs for every component of one checkpoint."""

    architecture: Architecture
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.components[name]


@lru_cache(maxsize=None)
def _family_configs(family: str) -> dict[str, dict[str, Any]]:
    folder = CONFIG_ROOT / family
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def configs_for(arch: Architecture, overrides: dict[str, dict[str, Any]] | None = None) -> ModelConfigs:
    """Shipped configs for the family, adjusted for the variant, then any sidecar overrides."""
    components = copy.deepcopy(_family_configs(arch.family))
    if arch.inpainting:
        components["unet"]["in_channels"] = 9
    components["scheduler"]["prediction_type"] = arch.prediction_type
    for name, cfg in (overrides or {}).items():
        if name == "scheduler":
            components.setdefault(name, {}).update(cfg)
        else:
            components[name] = copy.deepcopy(cfg)
    return ModelConfigs(arch, components)
