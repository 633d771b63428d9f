"""ControlNet units as requests carry them: the sd-webui-controlnet extension's field names.

A request holds them at `alwayson_scripts["controlnet"]["args"]` (a list of unit dicts),
so API clients written for AUTOMATIC1111 + ControlNet work unchanged. Each unit is checked
field by field; problems are reported as `alwayson_scripts.controlnet.args[i].<field>`.
Infotext records each enabled unit as `ControlNet i: "Module: canny, Model: ..., ..."`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...core.image_input import ImageInputError, decode_base64_image
from ...core.request import FieldError, script_args

SCRIPT = "controlnet"
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
_RESIZE_ALIASES = {"envelope (outer fit)": 2, "scale to fit (inner fit)": 1, "inner fit": 1, "outer fit": 2,
                   "just resize": 0, "crop and resize": 1, "resize and fill": 2}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
DEFAULTS = {"enabled": True, "module": "none", "model": "None", "weight": 1.0, "image": None, "resize_mode": 1,
            "processor_res": 512, "threshold_a": None, "threshold_b": None, "guidance_start": 0.0,
            "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": False, "lowvram": False,
            "union_control_type": "Unknown"}


@dataclass
class ControlUnit:
    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Image.Image | None = None
    resize_mode: int = 1
    processor_res: int = 512
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: int = 0
    pixel_perfect: bool = False
    union_control_type: str = "Unknown"  # a Union ControlNet's control type (features/controlnet/flux.py)

    @property
    def is_ip_adapter(self) -> bool:
        return self.module.lower().startswith("ip-adapter")

    def infotext(self, model_title: str) -> str:
        parts = [("Module", self.module), ("Model", model_title), ("Weight", _num(self.weight)),
                 ("Resize Mode", RESIZE_MODES[self.resize_mode]), ("Processor Res", self.processor_res)]
        if self.threshold_a is not None:
            parts.append(("Threshold A", _num(self.threshold_a)))
        if self.threshold_b is not None:
            parts.append(("Threshold B", _num(self.threshold_b)))
        parts += [("Guidance Start", _num(self.guidance_start)), ("Guidance End", _num(self.guidance_end)),
                  ("Pixel Perfect", self.pixel_perfect), ("Control Mode", CONTROL_MODES[self.control_mode])]
        if self.union_control_type.strip().lower() not in ("", "unknown"):
            parts.append(("Union Control Type", self.union_control_type))
        return ", ".join(f"{k}: {v}" for k, v in parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(round(float(value), 6))


def _index(value: Any, names: tuple[str, ...], aliases: dict[str, int] | None = None) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        for i, name in enumerate(names):
            if lowered == name.lower():
                return i
        if aliases and lowered in aliases:
            return aliases[lowered]
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_units(alwayson: dict[str, Any]) -> tuple[list[ControlUnit], list[FieldError]]:
    """Units from a request's alwayson_scripts; images must already be PIL images."""
    entry = alwayson.get(SCRIPT) or alwayson.get("ControlNet") or {}
    raw = script_args(entry)
    units, errors = [], []
    if not isinstance(raw, list):
        return [], [FieldError(f"alwayson_scripts.{SCRIPT}.args", "must be a list of units")]
    for i, data in enumerate(raw):
        where = f"alwayson_scripts.{SCRIPT}.args[{i}]"
        if not isinstance(data, dict):
            errors.append(FieldError(where, "must be an object"))
            continue
        problem = _decode_images(data)
        if problem:
            errors.append(FieldError(f"{where}.{problem[0]}", problem[1]))
            continue
        # fields Easel does not use (lowvram, ...) are accepted and ignored
        values = {**DEFAULTS, **{k: v for k, v in data.items() if k in DEFAULTS}}
        if "input_image" in data and values["image"] is None:
            values["image"] = data["input_image"]
        problems = _check(values)
        errors += [FieldError(f"{where}.{field}", message) for field, message in problems]
        if not problems:
            units.append(ControlUnit(
                enabled=bool(values["enabled"]), module=str(values["module"]), model=str(values["model"]),
                weight=float(values["weight"]), image=values["image"],
                resize_mode=_index(values["resize_mode"], RESIZE_MODES, _RESIZE_ALIASES),
                processor_res=int(values["processor_res"]),
                threshold_a=None if values["threshold_a"] in (None, -1) else float(values["threshold_a"]),
                threshold_b=None if values["threshold_b"] in (None, -1) else float(values["threshold_b"]),
                guidance_start=float(values["guidance_start"]), guidance_end=float(values["guidance_end"]),
                control_mode=_index(values["control_mode"], CONTROL_MODES), pixel_perfect=bool(values["pixel_perfect"]),
                union_control_type=str(values["union_control_type"])))
    return units, errors


def _decode_images(data: dict[str, Any]) -> tuple[str, str] | None:
    """Base64 images (as API clients send them) become PIL images, in place, so they are decoded once.

    Never a path: a string is only ever read as base64 (optionally a data: URL).
    """
    for name in ("image", "input_image"):
        value = data.get(name)
        if isinstance(value, dict):  # the extension's {"image": ..., "mask": ...} form
            value = value.get("image")
        if not isinstance(value, str):
            continue
        try:
            data[name] = decode_base64_image(value, name)
        except ImageInputError as exc:
            return name, f"must be a base64-encoded image ({str(exc).removeprefix(f'{name}: ')})"
    return None


def _check(v: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    if not _finite(v["weight"]) or not 0 <= v["weight"] <= 2:
        problems.append(("weight", "must be a number from 0 to 2"))
    for name in ("guidance_start", "guidance_end"):
        if not _finite(v[name]) or not 0 <= v[name] <= 1:
            problems.append((name, "must be a number from 0 to 1"))
    if _finite(v["guidance_start"]) and _finite(v["guidance_end"]) and v["guidance_start"] > v["guidance_end"]:
        problems.append(("guidance_end", "must not be before guidance_start"))
    if _index(v["resize_mode"], RESIZE_MODES, _RESIZE_ALIASES) is None:
        problems.append(("resize_mode", f"must be one of {', '.join(RESIZE_MODES)}"))
    if _index(v["control_mode"], CONTROL_MODES) is None:
        problems.append(("control_mode", f"must be one of {', '.join(CONTROL_MODES)}"))
    if not _finite(v["processor_res"]) or not 64 <= v["processor_res"] <= 4096:
        problems.append(("processor_res", "must be a whole number from 64 to 4096"))
    for name in ("threshold_a", "threshold_b"):
        if v[name] is not None and not _finite(v[name]):
            problems.append((name, "must be a number"))
    image = v["image"]
    if isinstance(image, dict):
        image = image.get("image")
        v["image"] = image
    if image is not None and not isinstance(image, Image.Image):
        problems.append(("image", "must be an image"))
    if not isinstance(v["union_control_type"], str):
        problems.append(("union_control_type", "must be text"))
    if not isinstance(v["module"], str) or not isinstance(v["model"], str):
        problems.append(("module" if not isinstance(v["module"], str) else "model", "must be text"))
    return problems


def parse_infotext_unit(text: str) -> dict[str, Any]:
    """`Module: canny, Model: x [h], Weight: 1, ...` -> unit fields (for pasting)."""
    fields: dict[str, Any] = {}
    for part in text.split(", "):
        key, _, value = part.partition(": ")
        key, value = key.strip(), value.strip()
        name = {"Module": "module", "Model": "model", "Weight": "weight", "Resize Mode": "resize_mode",
                "Processor Res": "processor_res", "Threshold A": "threshold_a", "Threshold B": "threshold_b",
                "Guidance Start": "guidance_start", "Guidance End": "guidance_end", "Pixel Perfect": "pixel_perfect",
                "Control Mode": "control_mode", "Union Control Type": "union_control_type"}.get(key)
        if name is None:
            continue
        if name in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            fields[name] = float(value)
        elif name == "processor_res":
            fields[name] = int(float(value))
        elif name == "pixel_perfect":
            fields[name] = value == "True"
        else:
            fields[name] = value
    return fields
