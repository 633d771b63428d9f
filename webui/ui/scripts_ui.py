"""Extension scripts under a tab's generation controls.

A "Script" dropdown picks one selectable script (its controls show below it); always-on
scripts get an accordion each. Control values are collected by argument name (the fields of
the script's Args dataclass) into the request: `script_name` + `script_args`, and
`alwayson_scripts[name]["args"]`. A script whose `ui()` raises is reported and left out; the
page still builds.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..extensions.scripts import RegisteredScript, scripts_for
from .common import error_html
from .generation_controls import GenerationControls

NONE = "None"
PREFIX = "script::"


def _controls_of(easel: Easel, script: RegisteredScript, tab: str) -> dict[str, Any] | None:
    try:
        return script.build_ui(tab)
    except Exception as exc:  # a broken extension UI must not break the page
        easel.engine.hooks.record(script.extension or script.name, "ui", exc)
        gr.HTML(error_html(f"{script.title}: its controls failed to build ({exc})"))
        return None


def build_scripts(easel: Easel, controls: GenerationControls, tab: str) -> None:
    scripts = easel.engine.scripts
    selectable = scripts_for(scripts, tab, "selectable")
    always_on = scripts_for(scripts, tab, "alwayson")
    for script in always_on:
        with gr.Accordion(script.title, open=False, elem_id=f"{controls.prefix}_script_{script.name}"):
            for arg, component in (_controls_of(easel, script, tab) or {}).items():
                controls.inputs[f"{PREFIX}alwayson::{script.name}::{arg}"] = component
    if not selectable:
        return
    titles = {script.title: script.name for script in selectable}
    chooser = gr.Dropdown([NONE, *titles], value=NONE, label="Script", elem_id=f"{controls.prefix}_script")
    controls.inputs[f"{PREFIX}chosen"] = chooser
    groups = []
    for script in selectable:
        with gr.Group(visible=False, elem_id=f"{controls.prefix}_script_{script.name}") as group:
            for arg, component in (_controls_of(easel, script, tab) or {}).items():
                controls.inputs[f"{PREFIX}selectable::{script.name}::{arg}"] = component
        groups.append((script.title, group))

    def show(title: str):
        return [gr.update(visible=title == name) for name, _ in groups]

    chooser.change(show, chooser, [group for _, group in groups], api_name=False, show_progress="hidden")
    controls.script_titles = titles


def script_request_fields(fields: dict[str, Any], titles: dict[str, str] | None) -> dict[str, Any]:
    """script_name, script_args and alwayson_scripts from the collected control values."""
    chosen = (titles or {}).get(fields.get(f"{PREFIX}chosen") or NONE, "")
    script_args: dict[str, Any] = {}
    always_on: dict[str, dict[str, Any]] = {}
    for key, value in fields.items():
        if not key.startswith(PREFIX) or key == f"{PREFIX}chosen":
            continue
        _, kind, name, arg = key.split("::", 3)
        if kind == "selectable" and name == chosen:
            script_args[arg] = value
        elif kind == "alwayson":
            always_on.setdefault(name, {"args": {}})["args"][arg] = value
    return {"script_name": chosen, "script_args": script_args, "alwayson_scripts": always_on}
