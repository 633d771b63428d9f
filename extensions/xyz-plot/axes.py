"""Axis types and value parsing for the X/Y/Z plot (no Gradio, no model: easy to test)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from webui.extensions import api as easel

_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*(?:\(\s*([+-]?\d+(?:\.\d+)?)\s*\)|"
                    r"\[\s*(\d+)\s*\])?\s*$")
_LORA = re.compile(r"<lora:([^:>]+):[^>]*>")


def _split(text: str) -> list[str]:
    """Comma-separated values; a value may be quoted to contain commas."""
    items, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_numbers(text: str, integer: bool) -> list[float | int]:
    """`1, 3, 5`, `1-5`, `1-10 (+2)`, `10-1 (-3)`, `5-10 [3]` (3 evenly spaced values)."""
    values: list[float] = []
    for item in _split(text):
        match = _RANGE.match(item)
        if not match:
            try:
                values.append(float(item))
            except ValueError:
                raise ValueError(f"{item!r} is not a number or a range like 1-5, 1-10 (+2) or 5-10 [3]") from None
            continue
        start, end = float(match.group(1)), float(match.group(2))
        if match.group(4):  # [count]
            count = int(match.group(4))
            if count < 1:
                raise ValueError(f"{item!r}: the count must be at least 1")
            values += [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        else:
            step = float(match.group(3)) if match.group(3) else (1.0 if end >= start else -1.0)
            if step == 0 or (end - start) * step < 0:
                raise ValueError(f"{item!r}: the step goes the wrong way")
            value = start
            while (value <= end + 1e-9) if step > 0 else (value >= end - 1e-9):
                values.append(value)
                value += step
                if len(values) > 1000:
                    raise ValueError(f"{item!r} gives more than 1000 values")
    return [int(round(v)) if integer else round(v, 6) for v in values]


@dataclass
class Axis:
    label: str
    kind: str                          # "int", "float", "str"
    apply: Callable[[easel.GenerationRequest, Any], easel.GenerationRequest]
    choices: Callable[[], list[str]] | None = None

    def parse(self, text: str) -> list[Any]:
        if self.kind == "int":
            return parse_numbers(text, integer=True)
        if self.kind == "float":
            return parse_numbers(text, integer=False)
        return _split(text)

    def caption(self, value: Any) -> str:
        return f"{self.label}: {value}"


def _prompt_sr(request, value: str, search: list[str]):
    return replace(request, prompt=request.prompt.replace(search[0], value),
                   negative_prompt=request.negative_prompt.replace(search[0], value))


def _size(request, value: str):
    width, _, height = str(value).lower().partition("x")
    return replace(request, width=int(width), height=int(height or width))


def _lora_weight(request, value: float):
    return replace(request, prompt=_LORA.sub(lambda m: f"<lora:{m.group(1)}:{value}>", request.prompt))


def _override(key: str):
    return lambda request, value: replace(request, override_settings={**request.override_settings, key: value})


def _plain(value: Any) -> Any:
    """A request's (maybe read-only) nested always-on value as plain dicts and lists, to rebuild."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _entry(request, name: str) -> tuple[dict, str | None]:
    """(plain always-on scripts, the key naming `name` in any case, or None)."""
    scripts = _plain(request.alwayson_scripts or {})
    return scripts, next((k for k in scripts if isinstance(k, str) and k.strip().lower() == name), None)


def _adetailer(field: str, convert: Callable[[Any], Any] = lambda v: v):
    """ADetailer's own axes: the value goes into the 1st pass (added, with ADetailer on, when there is none)."""
    def apply(request, value):
        scripts, key = _entry(request, "adetailer")
        entry = scripts.pop(key) if key else {"args": [True, False]}
        args = entry.get("args", []) if isinstance(entry, dict) else entry
        args = list(args) if isinstance(args, list) else [True, False]
        first = next((i for i, a in enumerate(args) if isinstance(a, dict)), None)
        if first is None:
            args.append({})
            first = len(args) - 1
        args[first] = {**args[first], field: convert(value)}
        return replace(request, alwayson_scripts={**scripts, key or "ADetailer": {"args": args}})
    return apply


def _regional(position: int):
    """Regional Prompter's ratio strings (its args by position); a request without Regional Prompter is unchanged."""
    def apply(request, value):
        scripts, key = _entry(request, "regional prompter")
        if key is None:
            return request
        entry = scripts[key]
        args = list(entry.get("args", []) if isinstance(entry, dict) else entry)
        args += [None] * max(0, position + 1 - len(args))
        args[position] = str(value)
        scripts[key] = {"args": args}
        return replace(request, alwayson_scripts=scripts)
    return apply


def _true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


AXES: dict[str, Axis] = {
    "Nothing": Axis("", "str", lambda request, value: request),
    "Seed": Axis("Seed", "int", lambda r, v: replace(r, seed=v)),
    "Steps": Axis("Steps", "int", lambda r, v: replace(r, steps=v)),
    "CFG Scale": Axis("CFG Scale", "float", lambda r, v: replace(r, cfg_scale=v)),
    "Distilled CFG Scale": Axis("Distilled CFG Scale", "float", lambda r, v: replace(r, distilled_cfg_scale=v)),
    "Sampler": Axis("Sampler", "str", lambda r, v: replace(r, sampler_name=v)),
    "Schedule type": Axis("Schedule type", "str", lambda r, v: replace(r, scheduler=v)),
    "Checkpoint name": Axis("Checkpoint", "str", lambda r, v: replace(r, checkpoint=v)),
    "Prompt S/R": Axis("Prompt S/R", "str", None),  # needs the search term: see apply_value
    "Denoising": Axis("Denoising", "float", lambda r, v: replace(r, denoising_strength=v)),
    "Clip skip": Axis("Clip skip", "int", _override("CLIP_stop_at_last_layers")),
    "Size": Axis("Size", "str", _size),
    "LoRA weight": Axis("LoRA weight", "float", _lora_weight),
    "Refiner checkpoint": Axis("Refiner", "str", lambda r, v: replace(r, refiner_checkpoint=v)),
    "Refiner switch at": Axis("Refiner switch at", "float", lambda r, v: replace(r, refiner_switch_at=v)),
    "Negative Guidance minimum sigma": Axis("NGMS", "float", lambda r, v: replace(r, s_min_uncond=v)),
    # ADetailer's own axis names (they set its 1st pass)
    "[ADetailer] ADetailer model 1st": Axis("ADetailer model", "str", _adetailer("ad_model")),
    "[ADetailer] ADetailer prompt 1st": Axis("ADetailer prompt", "str", _adetailer("ad_prompt")),
    "[ADetailer] ADetailer negative prompt 1st": Axis("ADetailer negative prompt", "str",
                                                      _adetailer("ad_negative_prompt")),
    "[ADetailer] Mask erosion / dilation 1st": Axis("ADetailer dilate erode", "int", _adetailer("ad_dilate_erode")),
    "[ADetailer] Inpaint denoising strength 1st": Axis("ADetailer denoising strength", "float",
                                                       _adetailer("ad_denoising_strength")),
    "[ADetailer] Inpaint only masked 1st": Axis("ADetailer inpaint only masked", "str",
                                                _adetailer("ad_inpaint_only_masked", _true)),
    "[ADetailer] Inpaint only masked padding 1st": Axis("ADetailer inpaint padding", "int",
                                                        _adetailer("ad_inpaint_only_masked_padding")),
    # Regional Prompter's divide and base ratios (named by its infotext keys; it defines no axes of its own)
    "RP Ratios": Axis("RP Ratios", "str", _regional(6)),
    "RP Base Ratios": Axis("RP Base Ratios", "str", _regional(7)),
}


def apply_value(name: str, request, value: Any, values: list[Any]):
    if name == "Prompt S/R":
        return _prompt_sr(request, value, values)
    return AXES[name].apply(request, value)
