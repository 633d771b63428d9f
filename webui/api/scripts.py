"""Extension scripts at the API edge: AUTOMATIC1111's script fields onto Easel's named arguments.

AUTOMATIC1111 clients name a script by its title ("X/Y/Z plot", any case) and pass
`script_args` as a positional list; Easel's scripts take named arguments (the keys of
`Script.ui(tab)`). A list is mapped onto those names in order; an object is passed as is.
The same holds for `alwayson_scripts[name]["args"]`. /sdapi/v1/scripts and script-info
list exactly the scripts the extension system has registered.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from ..extensions.scripts import scripts_for
from .errors import invalid

log = logging.getLogger(__name__)
TABS = ("txt2img", "img2img")
_lock = threading.Lock()
_controls: dict[tuple[int, str], dict[str, Any]] = {}


def controls(script, tab: str) -> dict[str, Any]:
    """The script's named controls for a tab (built once; {} if its ui() fails).

    Their order is the order of AUTOMATIC1111's positional script_args; their labels,
    defaults and ranges are what script-info reports.
    """
    key = (id(script), tab)
    with _lock:
        if key not in _controls:
            try:
                import gradio as gr

                with gr.Blocks():  # components need a page to belong to; this one is never served
                    made = script.ui(tab) or {}
                _controls[key] = made if isinstance(made, dict) else {}
            except Exception:  # a broken extension UI must not break the API
                log.warning("script %s: ui() failed", script.name, exc_info=True)
                _controls[key] = {}
        return _controls[key]


def find(scripts: dict[str, Any], name: str, tab: str, kind: str) -> Any | None:
    """A script of this kind for this tab by name or title, case-insensitively."""
    wanted = name.strip().lower()
    for script in scripts_for(scripts, tab, kind):
        if wanted in (script.name.lower(), script.title.lower()):
            return script
    return None


def named_args(script, tab: str, args: Any, field: str) -> dict[str, Any]:
    """Positional (A1111) or named (Easel) arguments -> named; 422 naming `field` otherwise."""
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    if not isinstance(args, list):
        raise invalid(field, "must be a list of values (in the order /sdapi/v1/script-info gives) or an object")
    names = list(controls(script, tab))
    if len(args) > len(names):
        raise invalid(field, f"{script.title} takes {len(names)} arguments ({', '.join(names)}); got {len(args)}")
    return dict(zip(names, args))


def _arg_info(component: Any) -> dict[str, Any]:
    choices = getattr(component, "choices", None)
    if choices is not None:
        choices = [str(c[1] if isinstance(c, (tuple, list)) else c) for c in choices]
    value = getattr(component, "value", None)
    return {"label": getattr(component, "label", None), "value": value if _jsonable(value) else None,
            "minimum": getattr(component, "minimum", None), "maximum": getattr(component, "maximum", None),
            "step": getattr(component, "step", None), "choices": choices}


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def script_list(scripts: dict[str, Any]) -> dict[str, list[str]]:
    """/sdapi/v1/scripts: selectable scripts' titles in lower case, per tab (AUTOMATIC1111's form)."""
    return {tab: [s.title.lower() for s in scripts_for(scripts, tab, "selectable")] for tab in TABS}


def script_info(scripts: dict[str, Any]) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info: every script per tab with its arguments, in the order a list must give them."""
    items = []
    for tab in TABS:
        for kind in ("selectable", "alwayson"):
            for script in scripts_for(scripts, tab, kind):
                args = [dict(_arg_info(c), name=n) for n, c in controls(script, tab).items()]
                items.append({"name": script.title.lower(), "is_alwayson": kind == "alwayson",
                              "is_img2img": tab == "img2img", "args": args})
    return items
