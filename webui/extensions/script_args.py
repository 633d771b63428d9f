"""A script's arguments as a dataclass: one declaration serves the UI, the API and `run()`.

A script names its arguments once, as the fields of a dataclass (`Script.Args`), each with a
default and, through `arg(...)`, how to show it. From that:
- `ui(tab)` builds one Gradio control per field (or lays them out itself with `Script.control`);
- the API reads names, order and defaults from the fields (AUTOMATIC1111's positional
  `script_args` are mapped onto them in field order) without building any UI;
- `run()` receives an instance of the dataclass, already checked, instead of a dict.
No Gradio import here except inside `build_control`, so the API never needs one.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import gradio as gr

_META = "easel"
Kind = Literal["bool", "int", "float", "str", "choice", "any"]
WIDGETS = ("checkbox", "number", "slider", "textbox", "textarea", "dropdown", "radio")


@dataclass(frozen=True)
class ArgSpec:
    """Everything the UI and the API know about one script argument (read from its dataclass field)."""

    name: str
    default: Any
    kind: Kind
    label: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str | None = None
    placeholder: str | None = None
    elem_id: str | None = None  # suffix: the control's elem_id is f"script_{tab}_{elem_id}"
    widget: str | None = None

    def describe(self) -> dict[str, Any]:
        """The argument as /sdapi/v1/script-info lists it (AUTOMATIC1111's keys plus `name`)."""
        default = self.default if _jsonable(self.default) else None
        return {"name": self.name, "label": self.label, "value": default, "minimum": self.minimum,
                "maximum": self.maximum, "step": self.step, "choices": list(self.choices) if self.choices else None}


class ScriptArgsError(ValueError):
    """A script argument has a value its dataclass field cannot take; `name` is the argument ("" for the list)."""

    user_facing = True

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.message = message


@dataclass(frozen=True)
class NoArgs:
    """The arguments of a script that takes none."""


def arg(default: Any, *, label: str | None = None, choices: Sequence[str] | None = None,
        minimum: float | None = None, maximum: float | None = None, step: float | None = None,
        info: str | None = None, placeholder: str | None = None, elem_id: str | None = None,
        widget: str | None = None) -> Any:
    """A field of a script's Args dataclass, with what `ui()` and /sdapi/v1/script-info show for it.

    `choices` makes the value one of those strings (a dropdown; `widget="radio"` for radio
    buttons). `minimum`/`maximum` on a number give a slider. `elem_id` is the part after
    `script_{tab}_` (default: `{script name}_{field name}`).
    """
    if widget is not None and widget not in WIDGETS:
        raise ValueError(f"widget must be one of {', '.join(WIDGETS)} (got {widget!r})")
    meta = {"label": label, "choices": tuple(str(c) for c in choices) if choices is not None else None,
            "minimum": minimum, "maximum": maximum, "step": step, "info": info, "placeholder": placeholder,
            "elem_id": elem_id, "widget": widget}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


def check_args_type(args_type: type) -> None:
    """Raise TypeError unless `args_type` is a dataclass whose every field has a default.

    Defaults are what let a client send only some arguments, or a short positional list.
    """
    if not (isinstance(args_type, type) and dataclasses.is_dataclass(args_type)):
        raise TypeError(f"Args must be a dataclass (got {args_type!r})")
    missing = [f.name for f in dataclasses.fields(args_type) if f.init and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"every field of {args_type.__name__} needs a default; {', '.join(missing)} has none")


@functools.lru_cache(maxsize=None)
def arg_specs(args_type: type) -> tuple[ArgSpec, ...]:
    """The fields of an Args dataclass as ArgSpecs, in declaration order (= positional order); cached."""
    check_args_type(args_type)
    try:
        hints = typing.get_type_hints(args_type)
    except Exception:  # annotations that cannot be resolved: fall back to the defaults' types
        hints = {}
    specs = []
    for f in dataclasses.fields(args_type):
        if not f.init:
            continue
        meta = dict(f.metadata.get(_META, {}))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind, literal_choices = _kind(hints.get(f.name), default, meta.get("choices"))
        choices = meta.get("choices") or literal_choices
        specs.append(ArgSpec(
            name=f.name, default=default, kind=kind, label=meta.get("label") or f.name.replace("_", " ").capitalize(),
            choices=choices, minimum=meta.get("minimum"), maximum=meta.get("maximum"), step=meta.get("step"),
            info=meta.get("info"), placeholder=meta.get("placeholder"), elem_id=meta.get("elem_id"),
            widget=meta.get("widget")))
    return tuple(specs)


def _kind(hint: Any, default: Any, choices: tuple[str, ...] | None) -> tuple[Kind, tuple[str, ...] | None]:
    if typing.get_origin(hint) is Literal:
        return "choice", tuple(str(v) for v in typing.get_args(hint))
    if choices:
        return "choice", None
    for kind, python_type in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if hint is python_type:
            return kind, None
    if hint is None:  # no usable annotation: the default's type decides
        for kind, python_type in (("bool", bool), ("int", int), ("float", float), ("str", str)):
            if type(default) is python_type:
                return kind, None
    return "any", None


def positional(specs: Sequence[ArgSpec], values: Sequence[Any], script_title: str) -> dict[str, Any]:
    """AUTOMATIC1111's positional script_args -> {name: value}, in field order."""
    if len(values) > len(specs):
        names = ", ".join(s.name for s in specs) or "none"
        raise ScriptArgsError("", f"{script_title} takes {len(specs)} arguments ({names}); "
                                  f"got {len(values)}")
    return {spec.name: value for spec, value in zip(specs, values)}


def parse_args(args_type: type, specs: Sequence[ArgSpec], values: Mapping[str, Any] | Sequence[Any] | None,
               script_title: str = "the script") -> Any:
    """Named (a mapping) or positional (a list) values -> an instance of `args_type`.

    Missing names take their defaults, None means "the default" (an empty UI control); unknown
    names and values of the wrong type raise ScriptArgsError naming the argument.
    """
    if values is None:
        values = {}
    if isinstance(values, (list, tuple)):
        values = positional(specs, values, script_title)
    if not isinstance(values, Mapping):
        raise ScriptArgsError("", "must be a list (in the order script-info gives) or an object")
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in values if name not in by_name]
    if unknown:
        raise ScriptArgsError(str(unknown[0]), f"{script_title} has no such argument "
                                               f"(it takes {', '.join(by_name) or 'none'})")
    checked = {name: _check(by_name[name], value) for name, value in values.items() if value is not None}
    return args_type(**checked)


def _check(spec: ArgSpec, value: Any) -> Any:
    """The value as the field's kind, or ScriptArgsError; integral floats pass as ints (Gradio sliders)."""
    kind = spec.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ScriptArgsError(spec.name, f"must be true or false (got {value!r})")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScriptArgsError(spec.name, f"must be a number (got {value!r})")
        if kind == "int":
            if value != int(value):
                raise ScriptArgsError(spec.name, f"must be a whole number (got {value!r})")
            value = int(value)
        else:
            value = float(value)
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            raise ScriptArgsError(spec.name, f"must be from {spec.minimum} to {spec.maximum} (got {value!r})")
        return value
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ScriptArgsError(spec.name, f"must be text (got {value!r})")
    if kind == "choice":
        if isinstance(value, str) and value in (spec.choices or ()):
            return value
        raise ScriptArgsError(spec.name, f"must be one of {', '.join(spec.choices or ())} (got {value!r})")
    return value


def build_control(spec: ArgSpec, tab: str, default_elem_id: str, **overrides: Any) -> "gr.components.Component":
    """The Gradio control for one argument (kind and metadata decide which); `overrides` go to it as is."""
    import gradio as gr

    widget = spec.widget or _default_widget(spec)
    options: dict[str, Any] = {"label": spec.label, "elem_id": f"script_{tab}_{spec.elem_id or default_elem_id}"}
    if spec.info:
        options["info"] = spec.info
    value = spec.default
    if widget == "checkbox":
        options.update(overrides)
        return gr.Checkbox(value=bool(value), **options)
    if widget in ("dropdown", "radio"):
        options.update(overrides)
        make = gr.Dropdown if widget == "dropdown" else gr.Radio
        return make(list(spec.choices or ()), value=value, **options)
    if widget == "slider":
        step = spec.step if spec.step is not None else (1 if spec.kind == "int" else 0.01)
        options.update(overrides)
        return gr.Slider(spec.minimum if spec.minimum is not None else 0, spec.maximum if spec.maximum is not None
                         else 100, value=value, step=step, **options)
    if widget == "number":
        if spec.kind == "int":
            options["precision"] = 0
        options.update({k: v for k, v in (("minimum", spec.minimum), ("maximum", spec.maximum)) if v is not None})
        options.update(overrides)
        return gr.Number(value=value, **options)
    if spec.placeholder:
        options["placeholder"] = spec.placeholder
    if widget == "textarea":
        options["lines"] = 3
    options.update(overrides)
    return gr.Textbox(value="" if value is None else str(value), **options)


def _default_widget(spec: ArgSpec) -> str:
    if spec.kind == "bool":
        return "checkbox"
    if spec.kind == "choice":
        return "dropdown"
    if spec.kind in ("int", "float"):
        return "slider" if spec.minimum is not None and spec.maximum is not None else "number"
    return "textbox"


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
