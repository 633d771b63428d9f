"""Read-only views of the engine's objects: what hooks and scripts receive instead of the objects.

The engine's request, result and loaded model are shared, mutable state. An extension that
edits them in place changes what the engine does in ways nobody can follow (and, once the
engine's request is frozen, cannot work at all). So extensions get:

- the request and the result as read-only copies (`RequestView`, `ResultView`: still
  `GenerationRequest` / `Result` instances, with lists and dicts frozen); to change one, a
  hook returns `dataclasses.replace(request, ...)` and the runtime hands the engine a plain
  value again (`to_request`, `to_result`);
- the loaded model as `ModelView` (name, hash, family, device, dtype ... no modules);
- the plan as `PlanView` (seed, sampler, schedule);
- `GenerationContext`: those facts plus the channels an extension may write to
  (`extra_params`, `warnings`) and, in a selectable script, `generate` and `save_grid`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..core.hooks import GenerationContext as EngineContext
from ..core.jobs import Interrupted, Skipped
from ..core.request import GenerationRequest, Result

if TYPE_CHECKING:
    from PIL import Image

    from ..model_manager.loader import LoadedModel
    from .scripts import RegisteredScript


class FrozenList(tuple):
    """A list inside a view: read-only (a tuple), and a list again when handed back to the engine."""

    __slots__ = ()


def freeze(value: Any) -> Any:
    """Lists and dicts (nested) as read-only FrozenList / MappingProxyType; anything else as it is."""
    if isinstance(value, list):
        return FrozenList(freeze(item) for item in value)
    if isinstance(value, dict):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    return value


def thaw(value: Any) -> Any:
    """The inverse of `freeze`: what the engine expects (lists and dicts) again."""
    if isinstance(value, FrozenList):
        return [thaw(item) for item in value]
    if isinstance(value, MappingProxyType):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thaw(item) for item in value]
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    return value


class _ReadOnly:
    """Mixin for a dataclass subclass: fields frozen and assignment refused once constructed.

    `dataclasses.replace(view, ...)` builds another sealed view, which is how a hook says
    "use this instead".
    """

    _noun = "value"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(
                f"the {self._noun} is read-only: return dataclasses.replace({self._noun}, {name}=...) instead")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"the {self._noun} is read-only")


class RequestView(_ReadOnly, GenerationRequest):
    """A GenerationRequest an extension may read but not change in place."""

    _noun = "request"

    def __post_init__(self) -> None:
        to_request(self)  # constructing validates: the engine's request built from the (maybe frozen) values


class ResultView(_ReadOnly, Result):
    """A Result an extension may read but not change in place."""

    _noun = "result"


def _copy_into(cls: type, value: Any) -> Any:
    """`value`'s init fields as a new `cls` (thawed for the engine when `cls` is the engine's type)."""
    engine = not issubclass(cls, _ReadOnly)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        item = getattr(value, f.name)
        if engine:
            item = thaw(item)
            if f.default_factory is list and isinstance(item, tuple):  # e.g. styles=request.styles + ("x",)
                item = list(item)
            elif f.default_factory is dict and isinstance(item, Mapping) and not isinstance(item, dict):
                item = dict(item)
        values[f.name] = item
    return cls(**values)


def request_view(request: GenerationRequest) -> GenerationRequest:
    """A read-only copy of the engine's request."""
    return request if isinstance(request, RequestView) else _copy_into(RequestView, request)


def result_view(result: Result) -> Result:
    """A read-only copy of the engine's result."""
    return result if isinstance(result, ResultView) else _copy_into(ResultView, result)


def to_request(value: Any) -> GenerationRequest:
    """What an extension handed back (a view or a request it built) as a plain engine request."""
    if not isinstance(value, GenerationRequest):
        raise TypeError(f"expected a GenerationRequest (e.g. dataclasses.replace(request, ...)), "
                        f"got {type(value).__name__}")
    return _copy_into(GenerationRequest, value)


def to_result(value: Any) -> Result:
    """What an extension handed back as a plain engine result."""
    if not isinstance(value, Result):
        raise TypeError(f"expected a Result, got {type(value).__name__}")
    return value if type(value) is Result else _copy_into(Result, value)


def write_back(target: Any, value: Any) -> bool:
    """Copy `value`'s fields into the engine's own mutable `target`; False if `target` is frozen.

    Lets a hook's replacement reach an engine that still holds on to its original object.
    """
    if getattr(type(target), "__dataclass_params__").frozen:
        return False
    for f in dataclasses.fields(target):
        setattr(target, f.name, getattr(value, f.name))
    return True


@dataclass(frozen=True)
class ModelView:
    """The loaded checkpoint as extensions see it: what it is and where it runs, not its modules."""

    name: str               # registry name, e.g. "sdxl/juggernaut.safetensors"
    model_name: str         # the stem infotext writes as `Model:`
    hash: str               # AutoV2 short hash (first 10 hex of the sha256), "" if not hashed
    sha256: str
    family: str             # "sd1", "sd2", "sdxl", "sdxl-refiner", ...
    architecture: str       # human label, e.g. "SD 2.x (v-prediction)"
    prediction_type: str    # "epsilon", "v_prediction", ...
    inpainting: bool
    format: str             # "safetensors", "diffusers", "gguf", "pickle"
    device: str             # e.g. "cuda", "cpu"
    dtype: str              # e.g. "float16"
    latent_channels: int
    vae_scale_factor: int
    demo: bool              # random weights: images are noise

    @classmethod
    def of(cls, model: "LoadedModel") -> "ModelView":
        architecture = model.architecture
        return cls(name=model.info.name, model_name=model.info.model_name, hash=model.short_hash,
                   sha256=model.sha256, family=architecture.family, architecture=architecture.label,
                   prediction_type=architecture.prediction_type, inpainting=architecture.inpainting,
                   format=model.info.format, device=str(model.device.device),
                   dtype=str(model.device.dtype).removeprefix("torch."),
                   latent_channels=model.architecture.adapter.latent.channels,
                   vae_scale_factor=model.vae_scale_factor, demo=model.demo)


def model_view(model: Any) -> ModelView:
    return model if isinstance(model, ModelView) else ModelView.of(model)


@dataclass(frozen=True)
class PlanView:
    """What was resolved before sampling: the seeds, sampler and schedule this generation uses."""

    seed: int
    subseed: int            # -1 when no variation seed is used
    sampler: str
    schedule: str


class GenerationContext:
    """One generation as a hook or a script sees it: read-only facts, plus channels it may write to.

    - `request`, `model`, `plan`: read-only views (`model`/`plan` are None before they exist).
    - `extra_params`: infotext keys every image of this generation gets; write to it.
    - `warnings`: messages shown with the result; append to it.
    - `script_args(name)`: an always-on script's arguments (its Args dataclass) for this request.
    - `generate(request)` / `save_grid(...)`: only in a selectable script's `run()`.
    - `interrupted`: the user pressed Interrupt; a script making many generations stops.
    """

    __slots__ = ("_engine", "_scripts")

    def __init__(self, engine: EngineContext, scripts: Mapping[str, "RegisteredScript"] | None = None):
        self._engine = engine
        self._scripts = scripts if scripts is not None else {}

    @property
    def request(self) -> GenerationRequest:
        return request_view(self._engine.request)

    @property
    def model(self) -> ModelView | None:
        return None if self._engine.model is None else model_view(self._engine.model)

    @property
    def plan(self) -> PlanView | None:
        plan = self._engine.plan
        if plan is None:
            return None
        return PlanView(seed=plan.seed, subseed=plan.subseed, sampler=plan.sampler.name, schedule=plan.schedule)

    @property
    def extra_params(self) -> dict[str, Any]:
        return self._engine.extra_params

    @property
    def warnings(self) -> list[str]:
        return self._engine.warnings

    @property
    def interrupted(self) -> bool:
        return self._engine.job.interrupted

    def script_args(self, name: str) -> Any | None:
        """The always-on script `name`'s arguments in this request (an instance of its Args), or None
        when the request does not mention it. KeyError if no script has that name."""
        script = self._scripts.get(name)
        if script is None:
            raise KeyError(f"no script named {name!r}")
        entries = self._engine.request.alwayson_scripts
        entry = entries.get(name) if isinstance(entries, Mapping) else None
        if entry is None:
            return None
        return script.parse_args(entry.get("args", entry) if isinstance(entry, Mapping) else entry)

    def generate(self, request: GenerationRequest) -> Result:
        """Run one generation inside this job (selectable scripts only) and return its result.

        The result says how it ended: `interrupted` (Interrupt was pressed: stop and keep what
        is finished) or `skipped_batches` > 0 with no images (Skip was pressed: that generation
        is dropped; go on with the next one).
        """
        if self._engine.generate is None:
            raise RuntimeError("context.generate is only available in a selectable script's run()")
        try:
            return self._engine.generate(to_request(request))
        except Interrupted:  # pressed before sampling started (e.g. while the model loaded)
            return Result(interrupted=True)
        except Skipped:
            return Result(skipped_batches=1)

    def save_grid(self, image: "Image.Image", infotext: str, seed: int = 0) -> str:
        """Save a grid image (with infotext) where this tab's grids go; returns its path."""
        if self._engine.save_grid is None:
            raise RuntimeError("context.save_grid is only available in a selectable script's run()")
        return self._engine.save_grid(image, infotext, seed)
