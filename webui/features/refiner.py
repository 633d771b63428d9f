"""The refiner handoff: sampling continues with another checkpoint from a chosen point (AUTOMATIC1111's).

`refiner_checkpoint` / `refiner_switch_at` (or alwayson_scripts["refiner"] = [enabled, checkpoint,
switch_at], as AUTOMATIC1111's Refiner script takes them). As in AUTOMATIC1111, the switch is by
noise level: at each model call the current sigma's timestep t (the nearest of the model's 1000)
counts as (999 - t) / 1000 of the way; from the first call where that reaches `switch_at`, the
pass's remaining calls go to the refiner's denoiser. So 1.0 never switches. The refiner is any
checkpoint (an SDXL refiner, or another SD 1.x model), loaded beside the active one through the
model manager (`get_companion`: the base stays loaded for the next batch) when the first switch
comes; it gets its own conditioning: the same prompts through its own text encoders, and its
family's extra conditioning (the SDXL refiner's aesthetic score). Features that patch the base's
UNet (ControlNet, FreeU, PAG, SAG) end at the switch; NGMS goes on. With hires fix, the setting
`hires_fix_refiner_pass` picks the pass (AUTOMATIC1111's default: the second). Infotext
`Refiner: <name> [<hash>]`, `Refiner switch at: 0.8` (and `Hires refiner` unless "second pass"),
written when a switch happened, as AUTOMATIC1111 writes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..core.denoiser import SigmaSpace
from ..core.pipeline import Feature, Pass, Run
from ..core.request import FieldError, is_number, script_args
from .guidance.args import find_entry, number

if TYPE_CHECKING:
    from ..model_manager.manager import ModelManager

ALWAYSON = "refiner"
SECOND_PASS = "second pass"


@dataclass(frozen=True)
class RefinerSettings:
    checkpoint: str      # the registry name
    switch_at: float


@dataclass
class RefinerState:
    settings: RefinerSettings
    model: Any = None                       # loaded at the first switch
    plans: dict[str, Any] = field(default_factory=dict)  # the refiner's plan per pass
    switched: bool = False
    hires_mode: str | None = None           # `hires_fix_refiner_pass` when hires fix runs


class RefinerSwitch(SigmaSpace):
    """The base denoiser until the switch point, then the refiner's (made when the switch comes)."""

    def __init__(self, base: SigmaSpace, switch_at: float, make_refiner: Callable[[], SigmaSpace]):
        self.base, self.current = base, base
        self.schedule, self.parameterisation = base.schedule, base.parameterisation
        self.switch_at, self.make_refiner = switch_at, make_refiner

    @property
    def step(self) -> int:
        return self.base.step

    @step.setter
    def step(self, value: int) -> None:
        self.base.step = value
        if self.current is not self.base:
            self.current.step = value

    def inner_denoisers(self):
        return self.base.inner_denoisers()

    def completed(self, sigma: float) -> float:
        """AUTOMATIC1111's measure: (999 - the nearest trained timestep) / 1000."""
        timestep = int(torch.argmin(torch.abs(self.schedule.sigmas - sigma)))
        return (999 - timestep) / 1000

    def _follow(self, sigma: float) -> None:
        if self.current is self.base and self.switch_at < 1 and self.completed(sigma) >= self.switch_at:
            refiner = self.make_refiner()
            refiner.step = self.base.step
            self.current = refiner

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self._follow(float(sigma))
        return self.current.denoise(x, sigma)

    def predict(self, x_in: torch.Tensor, t) -> torch.Tensor:
        self._follow(self.sigma_at(t))
        return self.current.predict(x_in, t)


def _carry_over(base: SigmaSpace, refiner: SigmaSpace) -> None:
    """What the pass set on the base's denoiser that is not about its UNet: guidance settings, hooks, NGMS."""
    first = base.inner_denoisers()[0]
    for inner in refiner.inner_denoisers():
        inner.cfg_rescale, inner.cfg_interval, inner.total_steps = first.cfg_rescale, first.cfg_interval, \
            first.total_steps
        inner.hooks, inner.calls = first.hooks, first.calls
        inner.guidance.extend(g for g in first.guidance if g.portable)


class Refiner(Feature):
    name = "refiner"

    def __init__(self, models: "ModelManager | None" = None):
        self.models = models

    def parse(self, request: Any) -> tuple[RefinerSettings | None, list[FieldError]]:
        name, switch_at = request.refiner_checkpoint, request.refiner_switch_at
        name_field, switch_field = "refiner_checkpoint", "refiner_switch_at"
        entry = find_entry(request, (ALWAYSON,))
        if entry is not None:  # [enabled, checkpoint, switch_at]
            key, value = entry
            args = script_args(value)
            where = f"alwayson_scripts.{key}.args"
            if not isinstance(args, list) or len(args) > 3:
                return None, [FieldError(where, "must be a list [enabled, checkpoint, switch_at]")]
            if args and args[0] is True:
                name_field, switch_field = f"{where}[1]", f"{where}[2]"
                name = args[1] if len(args) > 1 else ""
                switch_at = args[2] if len(args) > 2 else 0.8
            elif args and not isinstance(args[0], bool):
                return None, [FieldError(f"{where}[0]", "must be true or false")]
        if name is None or (isinstance(name, str) and name.strip() in ("", "None")):
            return None, []
        if not isinstance(name, str):
            return None, [FieldError(name_field, "must be a checkpoint name")]
        if not is_number(switch_at) or not 0 <= switch_at <= 1:
            return None, [FieldError(switch_field, "must be a number from 0 to 1")]
        if self.models is None:
            return None, [FieldError(name_field, "no model manager to load a refiner with")]
        try:
            info = self.models.find(name.strip())
        except LookupError as exc:
            return None, [FieldError(name_field, str(exc))]
        return RefinerSettings(info.name, float(switch_at)), []

    def begin(self, run: Run) -> None:
        settings = run.args.get(self.name)
        if settings is None or settings.checkpoint == run.model.info.name:  # the same model: nothing to switch
            run.state[self.name] = None
            return
        state = RefinerState(settings)
        if run.pass_named("hires") is not None:
            state.hires_mode = str(run.first.plan.options.get("hires_fix_refiner_pass") or SECOND_PASS)
        run.state[self.name] = state

    def begin_pass(self, run: Run, p: Pass) -> None:
        state: RefinerState | None = run.state.get(self.name)
        if state is None:
            return
        if state.hires_mode is not None:
            hires = p.name == "hires"
            if (hires and state.hires_mode == "first pass") or (not hires and state.hires_mode == SECOND_PASS):
                return
        p.plan.prompts.denoiser_edits.append(lambda base: self._wrap(run, p, state, base))

    def _wrap(self, run: Run, p: Pass, state: RefinerState, base: SigmaSpace) -> SigmaSpace:
        batch = base.inner_denoisers()[0].batch_size

        def make_refiner() -> SigmaSpace:
            run.job.report(text="switching to the refiner")
            if state.model is None:
                state.model = self.models.get_companion(state.settings.checkpoint,
                                                        progress=lambda msg: run.job.report(text=msg))
            if p.name not in state.plans:
                state.plans[p.name] = run.plan_for(p.request, state.model)
            plan = state.plans[p.name]
            with plan.prompts.patches_applied():  # the refiner's own LoRA set, on its own weights
                pass
            width, height = p.size
            refiner = plan.prompts.denoiser(batch, *state.model.architecture.adapter.extra_conditioning(width, height))
            _carry_over(base, refiner)
            state.switched = True
            return refiner

        return RefinerSwitch(base, state.settings.switch_at, make_refiner)

    def infotext(self, run: Run) -> dict[str, Any]:
        state: RefinerState | None = run.state.get(self.name)
        if state is None or not state.switched:
            return {}
        model = state.model
        title = f"{model.info.model_name} [{model.short_hash}]" if model.short_hash else model.info.model_name
        params: dict[str, Any] = {"Refiner": title, "Refiner switch at": state.settings.switch_at}
        if state.hires_mode is not None and state.hires_mode != SECOND_PASS:
            params["Hires refiner"] = state.hires_mode
        return params


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    if not params.get("Refiner"):
        return {}
    fields: dict[str, Any] = {"refiner_checkpoint": params["Refiner"]}
    switch_at = number(params.get("Refiner switch at"))
    if switch_at is not None:
        fields["refiner_switch_at"] = switch_at
    return fields
