"""The one module extensions import: `from webui.extensions import api as easel`.

Everything an extension needs is here, under names that stay stable within a major
API_VERSION: the hook marker, the script base class, setting specs, the request/result
types, infotext helpers, seed resolution and grid drawing. Anything else in Easel may change.

API versions (a minor bump only adds names; docs/extensions.md keeps the list):
- 1.0: hooks, Script, SettingSpec, request/result types, infotext helpers, draw_grid.
- 1.1: resolve_seed and MAX_SEED, so scripts can fix one seed for many generations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from ..core.hooks import GenerationContext, StepContext
from ..core.infotext import Infotext, format_infotext, parse_infotext
from ..core.request import GenerationRequest, Result
from ..core.seeds import MAX_SEED
from ..core.seeds import resolve_seed as _resolve_seed
from .hookspecs import HOOK_API_VERSION, PROJECT

if TYPE_CHECKING:
    import gradio as gr

API_VERSION = HOOK_API_VERSION
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["API_VERSION", "hookimpl", "Script", "SettingSpec", "GenerationRequest", "Result", "GenerationContext",
           "StepContext", "Infotext", "format_infotext", "parse_infotext", "draw_grid", "resolve_seed", "MAX_SEED"]


class Script:
    """A script shown under the generation controls.

    - kind "selectable": chosen in the Script dropdown; `run` replaces the normal generation
      (it may call `context.generate(request)` any number of times).
    - kind "alwayson": an accordion that is always there; its control values reach the
      extension's hooks through `context.script_args(script.name)`.
    `ui(tab)` returns the script's controls by name; those names are the keys of `args`.
    """

    name: str = "script"
    title: str = "Script"
    kind: str = "selectable"
    tabs: tuple[str, ...] = ("txt2img", "img2img")
    extension: str = ""  # set by Easel: the extension that registered it

    def ui(self, tab: str) -> dict[str, "gr.components.Component"]:
        return {}

    def run(self, request: GenerationRequest, args: dict[str, Any], context: GenerationContext) -> Result:
        raise NotImplementedError(f"{self.title} does not implement run()")


@dataclass
class SettingSpec:
    """One extension setting: saved in config.json under `key`, shown in Settings under `section`."""

    key: str
    default: Any
    label: str
    section: str = "Extensions"
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


def draw_grid(images, row_labels=None, column_labels=None, title: str | None = None):
    """A labelled grid image (rows x columns), as the X/Y/Z plot draws it."""
    from ..core.grids import draw_grid as _draw

    return _draw(images, row_labels, column_labels, title)


def resolve_seed(seed: int | None) -> int:
    """The seed a generation will use: -1 (or None) becomes a random one, others stay.

    A script that makes many generations from one request (a grid, a matrix) resolves the
    seed once, so every cell shares it and the value can be recorded.
    """
    return _resolve_seed(seed)
