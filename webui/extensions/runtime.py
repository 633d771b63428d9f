"""Calling extension hooks so that a broken extension can never take the app down.

pluggy validates the implementations against hookspecs.py (names, arguments) and
orders them; we then call each implementation ourselves, one by one, so an exception
in one extension is caught, logged, recorded for the UI (once per extension and hook)
and the others still run.
"""
from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger(__name__)


@dataclass
class HookError:
    extension: str
    hook: str
    message: str
    details: str


class HookRunner:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._errors: dict[tuple[str, str], HookError] = {}
        self._unseen: list[HookError] = []
        self._lock = threading.Lock()

    def register(self, plugin: Any, name: str) -> None:
        """Register an extension's entry module; raises pluggy's error if a hook signature is wrong."""
        self.pm.register(plugin, name=name)

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def has(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Each implementation's non-None return value, in pluggy's order; failures are recorded."""
        return [value for _, value in self.call_named(hook, **kwargs)]

    def call_named(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(extension name, return value) for each implementation that returned something."""
        caller = getattr(self.pm.hook, hook)
        results = []
        for impl in reversed(caller.get_hookimpls()):
            args = {name: kwargs[name] for name in impl.argnames if name in kwargs}
            try:
                value = impl.function(**args)
            except Exception as exc:
                self._record(impl.plugin_name, hook, exc)
                continue
            if value is not None:
                results.append((impl.plugin_name, value))
        return results

    def record(self, extension: str, hook: str, exc: BaseException) -> None:
        self._record(extension, hook, exc)

    def _record(self, extension: str, hook: str, exc: BaseException) -> None:
        key = (extension, hook)
        with self._lock:
            if key in self._errors:
                return
            error = HookError(extension, hook, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            self._errors[key] = error
            self._unseen.append(error)
        log.error("extension %s failed in %s: %s", extension, hook, error.message)

    def errors(self) -> list[HookError]:
        with self._lock:
            return list(self._errors.values())

    def take_new_errors(self) -> list[HookError]:
        """Errors not shown to the user yet (each is reported once)."""
        with self._lock:
            unseen, self._unseen = self._unseen, []
            return unseen
