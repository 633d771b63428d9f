"""Model families as adapters (see base.Family); look them up with `registry.get(name)`."""
from .base import Family, LatentFormat, LayerChoice
from .registry import all_families, get, names

__all__ = ["Family", "LatentFormat", "LayerChoice", "all_families", "get", "names"]
