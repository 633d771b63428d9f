"""`<lora:name:weight>` and friends: extra-network tags inside prompts, as AUTOMATIC1111 writes them.

Tags are removed from the text before it is encoded and returned as calls. For LoRA
the positional numbers follow AUTOMATIC1111: `<lora:name:te>` or `<lora:name:te:unet>`
(one number sets both), and named `te=`/`unet=` override them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r"<(\w+):([^>]+)>")
_SPACED_TAG = re.compile(r"[ \t]*<(\w+):([^>]+)>")


@dataclass(frozen=True)
class NetworkCall:
    kind: str
    name: str
    te: float = 1.0
    unet: float = 1.0
    raw: str = ""


def _parse(kind: str, body: str, raw: str) -> NetworkCall:
    items = body.split(":")
    name = items[0].strip()
    positional: list[float] = []
    named: dict[str, float] = {}
    for item in items[1:]:
        key, sep, value = item.partition("=")
        try:
            if sep:
                named[key.strip()] = float(value)
            else:
                positional.append(float(item))
        except ValueError:
            continue  # an unreadable number is ignored, like AUTOMATIC1111 does
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    return NetworkCall(kind, name, te, unet, raw)


def extract(prompt: str) -> tuple[str, list[NetworkCall]]:
    """(prompt without tags, tags in order of appearance)."""
    calls: list[NetworkCall] = []

    def take(match: re.Match) -> str:
        calls.append(_parse(match.group(1).lower(), match.group(2), match.group(0).lstrip(" \t")))
        return ""

    text = _SPACED_TAG.sub(take, prompt)
    if calls and not prompt[:_TAG.search(prompt).start()].strip():  # the prompt began with a tag
        text = text.lstrip(" \t")
    # a tag takes the spaces before it with it: "a cat <lora:x:1>" is "a cat", not "a cat " (AUTOMATIC1111 leaves
    # the space, which CLIP ignores; word-level encoders such as Z-Image's Qwen3 would read it)
    return text, calls
