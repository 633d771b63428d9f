"""The generation-parameters text stored in images, in AUTOMATIC1111's exact layout.

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

Keys appear in AUTOMATIC1111's order; a value containing a comma, colon or newline is
written as a JSON string. Every tool in this family reads and writes this text, so
`parse` accepts what they write and `format` writes what they read.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# AUTOMATIC1111's order for the keys it knows; anything else follows, then Version/User.
KEY_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Image CFG scale", "Seed",
    "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Init image hash", "RNG", "NGMS", "Tiling", "Token merging ratio", "Token merging ratio hr",
    "Noise multiplier", "Eta",
)
TRAILING_KEYS = ("Version", "User")
NEGATIVE_PREFIX = "Negative prompt:"

_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


@dataclass
class Infotext:
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    return str(value)


def quote(text: str) -> str:
    plain = "," not in text and ":" not in text and "\n" not in text and not text.startswith('"')
    if plain and text == text.strip():
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def ordered_params(params: dict[str, Any]) -> list[tuple[str, str]]:
    known = [k for k in KEY_ORDER if k in params]
    trailing = [k for k in TRAILING_KEYS if k in params]
    others = [k for k in params if k not in KEY_ORDER and k not in TRAILING_KEYS]
    return [(k, format_value(params[k])) for k in known + others + trailing if params[k] is not None]


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    line = ", ".join(f"{k}: {quote(v)}" for k, v in ordered_params(params))
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def parse_params_line(line: str) -> dict[str, str]:
    return {key.strip(): unquote(value.strip()) for key, value in _PARAM.findall(line)}


def parse_infotext(text: str) -> Infotext:
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        params = parse_params_line(lines.pop())
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX) and not in_negative:
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)


def format_parsed(info: Infotext) -> str:
    return format_infotext(info.prompt, info.negative_prompt, info.params)
