"""Which models a job will want, and which a worker has loaded: the keys model affinity compares.

A checkpoint is named by its name and sha256 (messages.CheckpointRef); LoRAs and ControlNets by
`lora:<file stem>` and `controlnet:<file stem>`, lower-cased, because that is what both sides can
say without reading a file: the head reads the names out of the request (`<lora:name:w>` tags,
the ControlNet units' `model`, which AUTOMATIC1111 writes as "name [hash]"), a worker out of
its model store's keys (the file path of each loaded LoRA and ControlNet). Workers on other
machines may keep the files under other folders; the stem is the same.
"""
from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, Iterable

from ..core.extra_networks import extract

_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,}\]\s*$")
CONTROL_KINDS = ("controlnet", "t2i_adapter")


def _stem(name: str) -> str:
    return PurePath(str(name).replace("\\", "/")).stem.lower() if name else ""


def request_keys(request: Any) -> set[str]:
    """The LoRAs and ControlNets a request names."""
    keys = set()
    for prompt in (getattr(request, "prompt", ""), getattr(request, "negative_prompt", "")):
        for call in extract(prompt or "")[1]:
            if call.kind in ("lora", "lyco") and call.name:
                keys.add(f"lora:{_stem(call.name)}")
    scripts = getattr(request, "alwayson_scripts", None) or {}
    units = (scripts.get("controlnet") or {}).get("args") if isinstance(scripts, dict) else None
    for unit in units if isinstance(units, list) else ():
        if not isinstance(unit, dict) or unit.get("enabled", True) is False:
            continue
        model = _HASH_SUFFIX.sub("", str(unit.get("model") or ""))
        if model and model.lower() != "none":
            keys.add(f"controlnet:{_stem(model)}")
    return keys


def loaded_keys(store: Any) -> list[str]:
    """The LoRAs and ControlNets in a model store now (their keys start with the file's path)."""
    keys = []
    for entry in store.entries():
        key = entry.key[0] if isinstance(entry.key, tuple) and entry.key else entry.key
        if entry.kind == "lora":
            keys.append(f"lora:{_stem(key)}")
        elif entry.kind in CONTROL_KINDS:
            keys.append(f"controlnet:{_stem(key)}")
    return keys


def score(wanted_checkpoint: set[str], wanted_networks: set[str], loaded: Iterable[str]) -> tuple[bool, int]:
    """Checkpoint first (switching it costs most), then how many of the job's LoRAs/ControlNets are there."""
    have = set(loaded)
    return bool(wanted_checkpoint & have), len(wanted_networks & have)
