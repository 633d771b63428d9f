"""Scripts contributed by extensions (through the register_scripts hook), by name.

The engine, the UI and the API hold `RegisteredScript`s: the extension's `Script` plus the
adapter between the engine's plain values and the typed extension API (arguments parsed into
the script's Args dataclass, the request and context as read-only views).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.hooks import GenerationContext as EngineContext
from ..core.request import GenerationRequest, Result
from .api import Script
from .runtime import HookRunner
from .script_args import ArgSpec, ScriptArgsError, check_args_type
from .views import GenerationContext, request_view, to_result

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RegisteredScript:
    """An extension's Script as Easel runs it."""

    script: Script
    extension: str
    registry: Mapping[str, "RegisteredScript"] = field(repr=False)  # all of them (for context.script_args)

    @property
    def name(self) -> str:
        return self.script.name

    @property
    def title(self) -> str:
        return self.script.title

    @property
    def kind(self) -> str:
        return self.script.kind

    @property
    def tabs(self) -> tuple[str, ...]:
        return tuple(self.script.tabs)

    @property
    def arg_specs(self) -> tuple[ArgSpec, ...]:
        """Names, order (AUTOMATIC1111's positional order), defaults and UI hints of the arguments."""
        return self.script.arg_specs()

    def parse_args(self, values: Mapping[str, Any] | Sequence[Any] | None) -> Any:
        """Named or positional values -> the script's Args; ScriptArgsError names a bad argument."""
        return self.script.parse_args(values)

    def build_ui(self, tab: str) -> dict[str, "gr.components.Component"]:
        """The script's controls by argument name (raises if ui() returns something else)."""
        made = self.script.ui(tab) or {}
        if not isinstance(made, dict):
            raise TypeError("ui() must return a dict of argument name -> component")
        known = {spec.name for spec in self.arg_specs}
        unknown = [name for name in made if name not in known]
        if unknown:
            raise TypeError(f"ui() returned controls for {', '.join(map(repr, unknown))}, which are not fields of "
                            f"{self.script.Args.__name__}")
        return made

    def run(self, request: GenerationRequest, args: Mapping[str, Any] | Sequence[Any],
            context: EngineContext) -> Result:
        """What the engine calls: plain request, named values and its context in; a plain Result out."""
        try:
            parsed = self.parse_args(args)
        except ScriptArgsError as exc:
            raise ScriptArgsError(f"script_args.{exc.name}" if exc.name else "script_args", exc.message) from None
        returned = self.script.run(request_view(request), parsed, GenerationContext(context, self.registry))
        return to_result(returned)


def collect_scripts(hooks: HookRunner) -> dict[str, RegisteredScript]:
    """Every extension's scripts by name; a bad one is reported on its extension and left out.

    The same dict is kept as `hooks.scripts`, so hook contexts can read always-on scripts' arguments.
    """
    scripts = hooks.scripts
    scripts.clear()
    for extension, returned in hooks.call_named("register_scripts"):
        for script in returned if isinstance(returned, (list, tuple)) else [returned]:
            if not isinstance(script, Script):
                hooks.record(extension, "register_scripts", TypeError(f"{script!r} is not an easel Script"))
                continue
            if script.name in scripts:
                hooks.record(extension, "register_scripts", ValueError(f"script name {script.name!r} already taken"))
                continue
            try:
                check_args_type(script.Args)
                script.arg_specs()
            except Exception as exc:
                hooks.record(extension, "register_scripts", exc)
                continue
            script.extension = extension
            scripts[script.name] = RegisteredScript(script, extension, scripts)
    return scripts


def scripts_for(scripts: Mapping[str, RegisteredScript], tab: str, kind: str) -> list[RegisteredScript]:
    return [s for s in scripts.values() if s.kind == kind and tab in s.tabs]
