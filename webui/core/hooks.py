"""What generation hands to extension hooks: a per-request context and a per-step context.

Core code depends only on the tiny `Hooks` protocol below; the extension runtime
(webui/extensions) implements it and turns the engine's objects into the read-only views
extensions see (webui/extensions/views.py). With no extensions, `NO_HOOKS` costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import torch

    from .jobs import Job
    from .request import GenerationRequest, Result


class Hooks(Protocol):
    def call(self, hook: str, **kwargs: Any) -> list[Any]: ...

    def call_replacing(self, hook: str, **kwargs: Any) -> Any:
        """A hook that replaces a value (before_process: `request`, postprocess: `result`): the value to use."""
        ...

    def has(self, hook: str) -> bool: ...


class _NoHooks:
    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        return []

    def call_replacing(self, hook: str, **kwargs: Any) -> Any:
        return kwargs.get({"before_process": "request", "postprocess": "result"}.get(hook, ""))

    def has(self, hook: str) -> bool:
        return False


NO_HOOKS: Hooks = _NoHooks()


@dataclass
class GenerationContext:
    """One request's state as the engine keeps it (extensions get a read-only view of it)."""

    request: "GenerationRequest"
    job: "Job"
    model: Any = None
    plan: Any = None
    # infotext keys every image of this request gets (always-on scripts write here)
    extra_params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # run another generation inside this job (selectable scripts such as the X/Y/Z plot)
    generate: Callable[["GenerationRequest"], "Result"] | None = None
    save_grid: Callable[..., str] | None = None


@dataclass
class StepContext:
    """One UNet evaluation inside a sampling step; hooks may replace x, embeds, prediction or latents."""

    index: int                      # 0-based sampler step
    timestep: "float | torch.Tensor | None"  # the UNet timestep (None in step_end)
    x: "torch.Tensor | None" = None           # model input (uncond and cond copies stacked)
    embeds: "torch.Tensor | None" = None      # text conditioning for that batch
    prediction: "torch.Tensor | None" = None  # after CFG
    latents: "torch.Tensor | None" = None     # after the step (step_end)
    denoised: "torch.Tensor | None" = None    # the step's clean-latent estimate (step_end)
    cfg_scale: float = 0.0
