"""Extensions' engine features (the `register_features` hook), guarded like hooks are.

An extension's feature takes part in every generation through the same protocol as
Easel's own (core/pipeline.Feature). A step that raises is recorded on the extension
(shown once in the UI, listed with the result's warnings) and that step is skipped, so a
broken extension never stops a generation; a `parse` that raises leaves the feature off
for that request.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

from ..core.pipeline import Batch, Feature, Pass, Run
from .runtime import HookRunner


class GuardedFeature(Feature):
    """One extension's feature, each step in a try/except that reports and skips."""

    def __init__(self, inner: Feature, extension: str, hooks: HookRunner):
        self.inner = inner
        self.extension = extension
        self.hooks = hooks
        self.name = inner.name

    def _guard(self, step: str, call, default):
        try:
            return call()
        except Exception as exc:  # an extension's bug: reported, skipped
            self.hooks.record(self.extension, f"feature {self.name}.{step}", exc)
            return default

    def parse(self, request) -> tuple[Any, list]:
        return self._guard("parse", lambda: self.inner.parse(request), (None, []))

    def begin(self, run: Run) -> None:
        self._guard("begin", lambda: self.inner.begin(run), None)

    def begin_pass(self, run: Run, p: Pass) -> None:
        self._guard("begin_pass", lambda: self.inner.begin_pass(run, p), None)

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        return self._guard("installed", lambda: self.inner.installed(run, p), nullcontext())

    def prepare_batch(self, run: Run, batch: Batch) -> None:
        self._guard("prepare_batch", lambda: self.inner.prepare_batch(run, batch), None)

    def finish_images(self, run: Run, batch: Batch, images, latents):
        return self._guard("finish_images", lambda: self.inner.finish_images(run, batch, images, latents), images)

    def infotext(self, run: Run) -> dict[str, Any]:
        return self._guard("infotext", lambda: self.inner.infotext(run), {})

    def image_prompts(self, prepared, seed: int, count: int):
        return self._guard("image_prompts", lambda: self.inner.image_prompts(prepared, seed, count), None)


def collect_features(hooks: HookRunner, taken: set[str]) -> list[Feature]:
    """Every extension's features, guarded; a name already taken (or not a Feature) is reported and left out."""
    features: list[Feature] = []
    for extension, returned in hooks.call_named("register_features"):
        for feature in returned if isinstance(returned, (list, tuple)) else [returned]:
            if not isinstance(feature, Feature) or not getattr(feature, "name", ""):
                hooks.record(extension, "register_features", TypeError(f"{feature!r} is not a named easel Feature"))
                continue
            if feature.name in taken:
                hooks.record(extension, "register_features", ValueError(f"feature name {feature.name!r} is taken"))
                continue
            taken.add(feature.name)
            features.append(GuardedFeature(feature, extension, hooks))
    return features
