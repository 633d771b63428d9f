"""Scripts contributed by extensions (through the register_scripts hook), by name."""
from __future__ import annotations

import logging

from .api import Script
from .runtime import HookRunner

log = logging.getLogger(__name__)


def collect_scripts(hooks: HookRunner) -> dict[str, Script]:
    scripts: dict[str, Script] = {}
    for extension, returned in hooks.call_named("register_scripts"):
        for script in returned if isinstance(returned, (list, tuple)) else [returned]:
            if not isinstance(script, Script):
                hooks.record(extension, "register_scripts", TypeError(f"{script!r} is not an easel Script"))
                continue
            if script.name in scripts:
                hooks.record(extension, "register_scripts", ValueError(f"script name {script.name!r} already taken"))
                continue
            script.extension = extension
            scripts[script.name] = script
    return scripts


def scripts_for(scripts: dict[str, Script], tab: str, kind: str) -> list[Script]:
    return [s for s in scripts.values() if s.kind == kind and tab in s.tabs]
