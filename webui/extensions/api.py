"""The one module extensions import: `from webui.extensions import api as easel`.

Everything an extension needs is here, under names that stay stable within a major
API_VERSION: the hook marker, the script base class, setting specs, the request/result
types, infotext helpers and grid drawing. Anything else in Easel may change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from ..core.hooks import GenerationContext, StepContext
from ..core.infotext import Infotext, format_infotext, parse_infotext
from ..core.request import GenerationRequest, Result
from .hookspecs import HOOK_API_VERSION, PROJECT

if TYPE_CHECKING:
    import gradio as gr

API_VERSION = HOOK_API_VERSION
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["API_VERSION", "hookimpl", "Script", "SettingSpec", "GenerationRequest", "Result", "GenerationContext",
           "StepContext", "Infotext", "format_infotext", "parse_infotext", "draw_grid"]


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
