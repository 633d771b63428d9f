"""AUTOMATIC1111's "NGMS" (`s_min_uncond`): skip the negative prompt at low noise levels.

Below the noise level `s_min_uncond`, on every other model call (every call with the setting
`s_min_uncond_all`), the denoiser runs only the positive prompt and uses its prediction as is
(guidance scale 1): fewer model evaluations late in sampling, where the negative prompt changes
little. The alternation counts model calls within a pass, as AUTOMATIC1111's CFGDenoiser.step
does (so a Heun step's two calls alternate too). Infotext `NGMS: <sigma>` (and `NGMS all steps:
True`), written only when a call was skipped, as AUTOMATIC1111 writes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.denoiser import CFGDenoiser, Guidance
from ...core.pipeline import Feature, Pass, Run
from ...core.request import FieldError, is_number
from .args import number, truthy

MAX_SIGMA = 100.0


@dataclass
class NgmsState:
    sigma: float
    all_steps: bool
    used: bool = False   # some call skipped the negative prompt (then the infotext says so)


class SkipNegative(Guidance):
    portable = True  # a refiner taking over mid-pass keeps skipping, as AUTOMATIC1111's one denoiser does

    def __init__(self, state: NgmsState):
        self.state = state

    def skip_uncond(self, denoiser: CFGDenoiser, t: torch.Tensor | float) -> bool:
        if not (denoiser.calls % 2 or self.state.all_steps):
            return False
        if denoiser.sigma_at(t) < self.state.sigma:
            self.state.used = True
            return True
        return False


class NegativeGuidanceMinimumSigma(Feature):
    name = "ngms"

    def parse(self, request: Any) -> tuple[float | None, list[FieldError]]:
        """The request's s_min_uncond (None: the setting's)."""
        value = getattr(request, "s_min_uncond", None)
        if value is not None and (not is_number(value) or not 0 <= value <= MAX_SIGMA):
            return None, [FieldError("s_min_uncond", f"must be empty or a number from 0 to {MAX_SIGMA:g}")]
        return value, []

    def begin(self, run: Run) -> None:
        options = run.first.plan.options
        sigma = run.args.get(self.name)
        sigma = float(options.get("s_min_uncond") or 0.0) if sigma is None else float(sigma)
        run.state[self.name] = NgmsState(sigma, bool(options.get("s_min_uncond_all"))) if sigma > 0 else None

    def begin_pass(self, run: Run, p: Pass) -> None:
        state = run.state.get(self.name)
        if state is not None:
            p.plan.prompts.denoiser_edits.append(lambda denoiser: denoiser.add_guidance(SkipNegative(state)))

    def infotext(self, run: Run) -> dict[str, Any]:
        state = run.state.get(self.name)
        if state is None or not state.used:
            return {}
        return {"NGMS": state.sigma, "NGMS all steps": True if state.all_steps else None}


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    value = number(params.get("NGMS"))
    return {"s_min_uncond": value} if value is not None else {}


def pasted_overrides(params: dict[str, str]) -> dict[str, Any]:
    return {"s_min_uncond_all": True} if truthy(params.get("NGMS all steps")) else {}
