"""The one module extensions import: `from webui.extensions import api as easel`.

Everything an extension needs is here, under names that stay stable within a major
API_VERSION: the hook marker, the script base class and its argument fields, setting specs,
the request/result types and the read-only views hooks receive, infotext helpers, seed
resolution and grid drawing. Anything else in Easel may change.

API versions (a minor bump only adds names; docs/extensions.md keeps the list):
- 1.0: hooks, Script, SettingSpec, request/result types, infotext helpers, draw_grid.
- 1.1: resolve_seed and MAX_SEED, so scripts can fix one seed for many generations.
- 2.0: typed hooks with read-only views (ModelView, PlanView, a read-only request/result that
  hooks replace by returning `dataclasses.replace(...)`); script arguments as an Args
  dataclass (`arg`, `ArgSpec`); Skip and Interrupt distinct for scripts.
- 2.1: engine features (`register_features` hook): `Feature` and what it sees (`Run`, `Pass`,
  `Batch`, `Sampling`, `FieldError`), the same protocol img2img, hires fix and ControlNet use.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pluggy

from ..core.hooks import StepContext
from ..core.pipeline import Batch, Feature, Pass, Run, Sampling
from ..core.request import FieldError
from ..core.infotext import Infotext, format_infotext, parse_infotext
from ..core.request import GenerationRequest, Result
from ..core.seeds import MAX_SEED
from ..core.seeds import resolve_seed as _resolve_seed
from .hookspecs import HOOK_API_VERSION, PROJECT
from .script_args import ArgSpec, NoArgs, ScriptArgsError, arg, arg_specs, build_control, parse_args
from .views import GenerationContext, ModelView, PlanView

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

API_VERSION = HOOK_API_VERSION
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["API_VERSION", "hookimpl", "Script", "arg", "ArgSpec", "NoArgs", "ScriptArgsError", "SettingSpec",
           "GenerationRequest", "Result", "GenerationContext", "StepContext", "ModelView", "PlanView", "Infotext",
           "format_infotext", "parse_infotext", "draw_grid", "resolve_seed", "MAX_SEED", "Feature", "Run", "Pass",
           "Batch", "Sampling", "FieldError"]


class Script:
    """A script shown under the generation controls.

    - kind "selectable": chosen in the Script dropdown; `run` replaces the normal generation
      (it may call `context.generate(request)` any number of times).
    - kind "alwayson": an accordion that is always there; its arguments reach the
      extension's hooks through `context.script_args(script.name)`.
    `Args` is a dataclass (fields made with `arg(...)`, each with a default): its fields are the
    script's arguments, in AUTOMATIC1111's positional order; `run` receives an instance.
    """

    name: str = "script"
    title: str = "Script"
    kind: str = "selectable"
    tabs: tuple[str, ...] = ("txt2img", "img2img")
    Args: ClassVar[type] = NoArgs
    extension: str = ""  # set by Easel: the extension that registered it

    @classmethod
    def arg_specs(cls) -> tuple[ArgSpec, ...]:
        """The fields of `Args`: names, order, defaults and how to show them (the API reads these)."""
        return arg_specs(cls.Args)

    def parse_args(self, values: Mapping[str, Any] | Sequence[Any] | None) -> Any:
        """Named (Easel) or positional (AUTOMATIC1111) values as an `Args`; ScriptArgsError names a bad one."""
        return parse_args(self.Args, self.arg_specs(), values, self.title)

    def ui(self, tab: str) -> dict[str, "gr.components.Component"]:
        """One control per field of `Args`, in order. Override to arrange them yourself (rows,
        accordions) with `self.control(name, tab)`; return {field name: component}."""
        return {spec.name: self.control(spec.name, tab) for spec in self.arg_specs()}

    def control(self, name: str, tab: str, **overrides: Any) -> "gr.components.Component":
        """The Gradio control for the `Args` field `name` (call inside `ui`); `overrides` go to Gradio."""
        for spec in self.arg_specs():
            if spec.name == name:
                return build_control(spec, tab, f"{self.name}_{name}", **overrides)
        raise KeyError(f"{self.Args.__name__} has no field {name!r}")

    def run(self, request: GenerationRequest, args: Any, context: GenerationContext) -> Result:
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


def draw_grid(images: Sequence[Sequence["Image.Image | None"]], row_labels: Sequence[str] | None = None,
              column_labels: Sequence[str] | None = None, title: str | None = None) -> "Image.Image":
    """A labelled grid image (rows x columns), as the X/Y/Z plot draws it.

    A None cell (a skipped generation) is left blank, so the other cells keep their places.
    """
    from PIL import Image as PILImage

    from ..core.grids import BACKGROUND
    from ..core.grids import draw_grid as _draw

    present = [image for row in images for image in row if image is not None]
    if not present:
        raise ValueError("draw_grid needs at least one image")
    size = (max(i.width for i in present), max(i.height for i in present))
    rows = [[image if image is not None else PILImage.new("RGB", size, BACKGROUND) for image in row] for row in images]
    return _draw(rows, list(row_labels) if row_labels else None, list(column_labels) if column_labels else None, title)


def resolve_seed(seed: int | None) -> int:
    """The seed a generation will use: -1 (or None) becomes a random one, others stay.

    A script that makes many generations from one request (a grid, a matrix) resolves the
    seed once, so every cell shares it and the value can be recorded.
    """
    return _resolve_seed(seed)
