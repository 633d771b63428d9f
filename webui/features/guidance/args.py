"""Always-on script arguments as AUTOMATIC1111 / Forge clients send them: positional or by name.

A client sends `alwayson_scripts["<script title>"] = {"args": [enabled, ...]}` in the order of the
original script's UI, or (Easel's own UI, readable clients) an object keyed by argument name.
Titles are matched case-insensitively, as AUTOMATIC1111 does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.pipeline import Feature
from ...core.request import FieldError, is_number, script_args


@dataclass(frozen=True)
class Arg:
    name: str
    default: Any
    low: float | None = None      # numbers: the range; None: a switch (bool) or a choice
    high: float | None = None
    choices: tuple[Any, ...] = ()


def find_entry(request: Any, titles: tuple[str, ...]) -> tuple[str, Any] | None:
    """(the title as sent, its value) of the first always-on entry named by one of `titles` (lower case)."""
    for key, value in request.alwayson().items():
        if isinstance(key, str) and key.strip().lower() in titles:
            return key, value
    return None


def parse_args(value: Any, spec: tuple[Arg, ...], where: str) -> tuple[dict[str, Any], list[FieldError]]:
    """The arguments by name (defaults for missing ones) and an error naming each invalid one."""
    args = script_args(value)
    args = [] if args is None else args
    names = [a.name for a in spec]
    if isinstance(args, dict):
        unknown = [k for k in args if k not in names]
        if unknown:
            return {}, [FieldError(f"{where}.args", f"unknown argument {unknown[0]!r} (known: {', '.join(names)})")]
        given = dict(args)
    elif isinstance(args, (list, tuple)):
        if len(args) > len(spec):
            return {}, [FieldError(f"{where}.args", f"takes at most {len(spec)} args ({', '.join(names)}); "
                                                    f"got {len(args)}")]
        given = dict(zip(names, args))
    else:
        return {}, [FieldError(f"{where}.args", f"must be a list [{', '.join(names)}] or an object")]
    out, errors = {}, []
    for arg in spec:
        v = given.get(arg.name, arg.default)
        field = f"{where}.args.{arg.name}"
        if arg.choices:
            if v not in arg.choices:
                errors.append(FieldError(field, f"must be one of {', '.join(map(str, arg.choices))}"))
        elif isinstance(arg.default, str):  # text (a list of numbers); the feature reads it
            if not isinstance(v, str):
                errors.append(FieldError(field, "must be text"))
        elif arg.low is None:
            if not isinstance(v, bool):
                errors.append(FieldError(field, "must be true or false"))
        elif not is_number(v) or not arg.low <= v <= arg.high:
            errors.append(FieldError(field, f"must be a number from {arg.low} to {arg.high}"))
        out[arg.name] = v
    return out, errors


def in_window(denoiser: Any, start: float, end: float) -> bool:
    """Forge's step window: step / (steps - 1) within [start, end] (the sampler's step, 0-based)."""
    if start <= 0 and end >= 1:
        return True
    fraction = denoiser.step / max(1, denoiser.total_steps - 1)
    return start <= fraction <= end


def number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def truthy(text: str | None) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


class ScriptFeature(Feature):
    """A feature whose arguments arrive as one always-on script's args, with `enabled` first.

    `title` is the always-on name Easel's UI sends (the original script's title, lower case);
    `titles` every name accepted; `prefix` names the UI controls and pasted fields
    (`<prefix>_<argument>`), so the UI, paste and the API share one list of arguments.
    """

    title: str = ""
    titles: tuple[str, ...] = ()
    spec: tuple[Arg, ...] = ()
    prefix: str = ""

    def parse(self, request: Any) -> tuple[Any, list[FieldError]]:
        """The typed settings when the script is switched on (None when off or absent), parsed once."""
        entry = find_entry(request, self.titles)
        if entry is None:
            return None, []
        key, value = entry
        args, errors = parse_args(value, self.spec, f"alwayson_scripts.{key}")
        if errors or not args.get("enabled"):
            return None, errors
        return self.settings(args), []

    def settings(self, args: dict[str, Any]) -> Any:
        return args

    @classmethod
    def ui_fields(cls) -> list[str]:
        return [f"{cls.prefix}_{arg.name}" for arg in cls.spec]

    @classmethod
    def alwayson_from_fields(cls, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The always-on entry for the UI's values by field name (None when the checkbox is off)."""
        if not fields.get(f"{cls.prefix}_enabled"):
            return None
        values = {arg.name: fields.get(f"{cls.prefix}_{arg.name}", arg.default) for arg in cls.spec}
        for arg in cls.spec:  # sliders hand back floats; keep whole numbers and choices as they are
            if arg.low is not None and values[arg.name] is not None:
                values[arg.name] = float(values[arg.name])
        values["enabled"] = True
        return {"args": values}
