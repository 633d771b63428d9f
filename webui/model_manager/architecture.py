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

from .. import families
from ..families import Family

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
PREDICTION_TYPES = ("epsilon", "v_prediction")


def family_names() -> tuple[str, ...]:
    """Every family Easel can load (webui/families), e.g. for a sidecar's "architecture"."""
    return families.names()


def family_label(name: str) -> str:
    try:
        return families.get(name).label
    except ValueError:
        return name


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint is: family, prediction type, and whether it is an inpainting model."""

    family: str
    prediction_type: str = "epsilon"
    inpainting: bool = False

    def __post_init__(self) -> None:
        families.get(self.family)  # raises for an unknown family, naming the known ones
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type!r}")

    @property
    def adapter(self) -> Family:
        """The family adapter: everything family-specific the engine asks about."""
        return families.get(self.family)

    @property
    def label(self) -> str:
        text = self.adapter.label
        if self.prediction_type == "v_prediction":
            text += " (v-prediction)"
        if self.inpainting:
            text += " inpainting"
        return text

    @property
    def is_sdxl(self) -> bool:
        """SDXL-based (base or refiner): add-ons such as ControlNets and IP-Adapters are made per base."""
        return self.adapter.sdxl_like

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return self.adapter.text_encoders

    @property
    def default_size(self) -> int:
        return self.adapter.default_size(self.prediction_type)


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
        arch.adapter.configure_inpainting(components)
    components.setdefault("scheduler", {})["prediction_type"] = arch.prediction_type
    for name, cfg in (overrides or {}).items():
        if name == "scheduler":
            components.setdefault(name, {}).update(cfg)
        else:
            components[name] = copy.deepcopy(cfg)
    return ModelConfigs(arch, components)
