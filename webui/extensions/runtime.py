"""Calling extension hooks so that a broken extension can never take the app down.

pluggy validates the implementations against hookspecs.py (names, arguments) and
orders them; we then call each implementation ourselves, one by one, so an exception
in one extension is caught, logged, recorded for the UI (once per extension and hook)
and the others still run.

This is also where the engine's objects become the extension API's read-only views
(views.py): an argument named `model`, `request`, `result` or `context` is handed over as
a view, built only when some extension implements the hook (no cost otherwise). For the
hooks that replace a value (`before_process` -> request, `postprocess` -> result) each
implementation sees the previous one's replacement.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from ..core.hooks import GenerationContext as EngineContext
from . import hookspecs
from .views import GenerationContext, model_view, request_view, result_view, to_request, to_result, write_back

if TYPE_CHECKING:
    from .scripts import RegisteredScript

log = logging.getLogger(__name__)
# hook -> (the argument it replaces, turning a returned value into the engine's type)
REPLACING: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "before_process": ("request", to_request),
    "postprocess": ("result", to_result),
}


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
        # scripts by name, filled by scripts.collect_scripts (hook contexts read always-on arguments)
        self.scripts: dict[str, RegisteredScript] = {}

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
        """(extension name, return value) for each implementation that returned something.

        For a replacing hook, a replacement is also written into the engine's own (mutable)
        object, so an engine that keeps using it sees the change.
        """
        return self._run(hook, kwargs)[0]

    def call_replacing(self, hook: str, **kwargs: Any) -> Any:
        """Call a replacing hook (before_process, postprocess); the engine's value after every
        implementation had its turn (the original object when none replaced it)."""
        return self._run(hook, kwargs)[1]

    def _run(self, hook: str, kwargs: dict[str, Any]) -> tuple[list[tuple[str, Any]], Any]:
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        replaced, convert = REPLACING.get(hook, (None, None))
        current = kwargs.get(replaced) if replaced else None
        if not impls:
            return [], current
        public = {name: self._view(name, value) for name, value in kwargs.items()}
        results = []
        for impl in reversed(impls):
            args = {name: public[name] for name in impl.argnames if name in public}
            try:
                value = impl.function(**args)
                if value is not None and convert is not None:
                    replacement = convert(value)  # TypeError for a wrong type: recorded like any failure
                    if not write_back(kwargs[replaced], replacement):
                        current = replacement
                    public[replaced] = self._view(replaced, replacement)
            except Exception as exc:
                self._record(impl.plugin_name, hook, exc)
                continue
            if value is not None:
                results.append((impl.plugin_name, value))
        return results, current

    def _view(self, name: str, value: Any) -> Any:
        """The engine's value as extensions get it (a read-only view for the engine's own objects)."""
        if value is None:
            return None
        if name == "request":
            return request_view(value)
        if name == "result":
            return result_view(value)
        if name == "model":
            return model_view(value)
        if name == "context" and isinstance(value, EngineContext):
            return GenerationContext(value, self.scripts)
        return value

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
