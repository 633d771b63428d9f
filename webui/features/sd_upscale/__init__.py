"""Upscaling by redrawing tiles: Ultimate SD upscale (usdu.py) and AUTOMATIC1111's SD upscale (a1111.py).

Both are img2img scripts that run ordinary img2img requests inside the job (`context.generate`), so
every feature of the engine applies to each tile. `register(engine, upscalers)` adds them to the
engine's scripts next to the extensions' (the app calls it once, in build()).
"""
from __future__ import annotations

from typing import Any

from .common import ScriptServices


def register(engine: Any, upscalers: Any) -> None:
    from ...extensions.scripts import RegisteredScript
    from .a1111 import SDUpscale
    from .usdu import UltimateSDUpscale

    services = ScriptServices(upscalers.list_upscalers, upscalers.upscale, engine)
    for script in (UltimateSDUpscale(services), SDUpscale(services)):
        if script.name not in engine.scripts:
            script.extension = "easel"
            engine.scripts[script.name] = RegisteredScript(script, "easel", engine.scripts)
