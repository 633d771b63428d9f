"""Choices remembered per checkpoint, one JSON file per kind of choice in the cache folder.

A checkpoint's preferred VAE (vae.py), its VAE / text encoder files (module_choice.py) and its
weight storage (manager.py) each mean something for one checkpoint only: an fp8 choice made for a
Flux transformer should not quantize the SD 1.5 model switched to next. Each lives in its own
file (`vae_preferences.json`, `module_preferences.json`, `weight_storage_preferences.json`), keyed
by the checkpoint's name, written atomically so a crash never leaves half a file; an unreadable
file reads as no preferences rather than stopping a load.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_text


class CheckpointPreferences:
    """One kind of per-checkpoint choice: checkpoint name -> value (a string, or a list of strings)."""

    def __init__(self, path: Path, accept: Callable[[Any], bool] = lambda value: isinstance(value, str)):
        self.path = path
        self._accept = accept  # what a value read back must look like; anything else is skipped
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if self._accept(v)}

    def all(self) -> dict[str, Any]:
        with self._lock:
            return self._read()

    def get(self, checkpoint: str) -> Any:
        """The remembered value, or None when none is."""
        with self._lock:
            return self._read().get(checkpoint)

    def set(self, checkpoint: str, value: Any) -> None:
        """Remember `value` for `checkpoint`; None forgets it."""
        with self._lock:
            data = self._read()
            if value is None:
                data.pop(checkpoint, None)
            else:
                data[checkpoint] = value
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))


def is_name_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
