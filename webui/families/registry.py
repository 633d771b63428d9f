"""Families by name. Every module in `webui/families/` that defines `FAMILIES` registers them.

Discovery happens on first use, not on import, so importing the package stays inert;
a new family module is found without editing this file or any list elsewhere.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading

from .base import Family, Shapes

_lock = threading.Lock()
_families: dict[str, Family] = {}


def _discover() -> dict[str, Family]:
    with _lock:
        if not _families:
            package = importlib.import_module(__package__)
            found: dict[str, Family] = {}
            for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if module_info.name in ("base", "registry"):
                    continue
                module = importlib.import_module(f"{__package__}.{module_info.name}")
                for family in getattr(module, "FAMILIES", ()):
                    if family.name in found:
                        raise RuntimeError(f"model family {family.name!r} is registered twice")
                    found[family.name] = family
            _families.update(found)
        return _families


def names() -> tuple[str, ...]:
    """Every registered family's name, in registration order (module name, then order in FAMILIES)."""
    return tuple(_discover())


def get(name: str) -> Family:
    families = _discover()
    if name not in families:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(families)}")
    return families[name]


def all_families() -> list[Family]:
    return list(_discover().values())


def family_by_marker(shapes: Shapes) -> Family | None:
    """The family whose marker tensor the file has (single files in the original layout)."""
    for family in all_families():
        if any(key in shapes for key in family.marker_keys):
            return family
    return None


def family_by_context_width(width: int | None) -> Family | None:
    return next((f for f in all_families() if width and f.context_width == width), None)


def family_of_folder(index: dict, components: dict[str, dict]) -> Family | None:
    return next((f for f in all_families() if f.matches_folder(index, components)), None)


def refine_by_name(family: str, name: str) -> str:
    """A variant whose tensors equal its parent's (SD 3.5 Large Turbo) when the file or folder name says so."""
    parent = get(family)
    lowered = name.lower()
    for candidate in all_families():
        if candidate is not parent and isinstance(candidate, type(parent)) and \
                any(hint in lowered for hint in candidate.name_hints):
            return candidate.name
    return family
