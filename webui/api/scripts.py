"""Extension scripts at the API edge: AUTOMATIC1111's script fields onto Easel's named arguments.

AUTOMATIC1111 clients name a script by its title ("X/Y/Z plot", any case) and pass
`script_args` as a positional list; Easel's scripts declare their arguments as the fields of a
dataclass (`Script.Args`). A list is mapped onto those fields in order; an object is taken by
name. Either is checked against the fields here (422 naming the argument) and passed on by name.
The same holds for `alwayson_scripts[name]["args"]`. /sdapi/v1/scripts and script-info list
exactly the scripts the extension system has registered, with arguments read from the fields
(no UI is built for that).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..extensions.script_args import ScriptArgsError
from ..extensions.scripts import RegisteredScript, scripts_for
from .errors import invalid

TABS = ("txt2img", "img2img")


def find(scripts: Mapping[str, RegisteredScript], name: str, tab: str, kind: str) -> RegisteredScript | None:
    """A script of this kind for this tab by name or title, case-insensitively."""
    wanted = name.strip().lower()
    for script in scripts_for(scripts, tab, kind):
        if wanted in (script.name.lower(), script.title.lower()):
            return script
    return None


def named_args(script: RegisteredScript, args: Any, field: str) -> dict[str, Any]:
    """Positional (A1111) or named (Easel) arguments -> named; 422 naming `field` (and the argument)."""
    if args is None:
        return {}
    if not isinstance(args, (list, dict)):
        raise invalid(field, "must be a list of values (in the order /sdapi/v1/script-info gives) or an object")
    named = dict(args) if isinstance(args, dict) else {spec.name: value for spec, value in
                                                        zip(script.arg_specs, args)}
    try:
        script.parse_args(args)
    except ScriptArgsError as exc:
        raise invalid(f"{field}.{exc.name}" if exc.name else field, exc.message) from None
    return named


def script_list(scripts: Mapping[str, RegisteredScript]) -> dict[str, list[str]]:
    """/sdapi/v1/scripts: selectable scripts' titles in lower case, per tab (AUTOMATIC1111's form)."""
    return {tab: [s.title.lower() for s in scripts_for(scripts, tab, "selectable")] for tab in TABS}


def script_info(scripts: Mapping[str, RegisteredScript]) -> list[dict[str, Any]]:
    """/sdapi/v1/script-info: every script per tab with its arguments, in the order a list must give them."""
    items = []
    for tab in TABS:
        for kind in ("selectable", "alwayson"):
            for script in scripts_for(scripts, tab, kind):
                items.append({"name": script.title.lower(), "is_alwayson": kind == "alwayson",
                              "is_img2img": tab == "img2img", "args": [s.describe() for s in script.arg_specs]})
    return items
