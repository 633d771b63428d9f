"""Token merging as a generation feature: which ratio each pass uses, the hooks while it samples, infotext.

The ratios are AUTOMATIC1111's settings, read per request (saved settings with the request's
override_settings on top), and chosen per pass as AUTOMATIC1111 chooses them:

- txt2img: `token_merging_ratio`;
- img2img: `token_merging_ratio_img2img` when non-zero (unless the request overrides
  `token_merging_ratio` itself), else `token_merging_ratio`;
- the hires pass: `token_merging_ratio_hr` when non-zero, else the first pass's.

Infotext keys as AUTOMATIC1111 writes them, only when non-zero: `Token merging ratio` and
`Token merging ratio hr`; Forge's two further settings are written only when they differ from the
defaults (`Token merging downsample`, `Token merging no rand`), so a pasted image is made again.
Only SD 1.x/2.x/SDXL UNets are merged (the paper's method is for their transformer blocks); for
another family the ratio is ignored with a warning on the job and no key in the infotext.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ContextManager

from ...core.pipeline import Batch, Feature, Pass, Run
from ..guidance.args import number, truthy
from .patch import MergeOptions, TokenMerging, transformer_levels

log = logging.getLogger(__name__)
UNET_FAMILIES = frozenset({"sd1", "sd2", "sdxl", "sdxl-refiner"})
RATIO_KEY, RATIO_HR_KEY = "Token merging ratio", "Token merging ratio hr"
DOWNSAMPLE_KEY, NO_RAND_KEY = "Token merging downsample", "Token merging no rand"
INFOTEXT_KEYS = (RATIO_KEY, RATIO_HR_KEY, DOWNSAMPLE_KEY, NO_RAND_KEY)


@dataclass
class MergeState:
    ratios: dict[str, float]      # pass name -> ratio used (0: off)
    downsample: int
    random: bool
    seed: int = 0                 # the running batch's first seed (the destination grids' generator)
    unsupported: str = ""         # the family's label when the ratio was ignored


def pass_ratio(options: dict[str, Any], mode: str, overrides: dict[str, Any], hires: bool = False) -> float:
    """AUTOMATIC1111's get_token_merging_ratio for a pass."""
    base = float(options.get("token_merging_ratio") or 0.0)
    if mode == "img2img" and "token_merging_ratio" not in overrides:
        base = float(options.get("token_merging_ratio_img2img") or 0.0) or base
    if hires:
        return float(options.get("token_merging_ratio_hr") or 0.0) or base
    return base


class TokenMergingFeature(Feature):
    name = "token_merging"

    def begin(self, run: Run) -> None:
        options = run.first.plan.options
        overrides = run.request.override_settings if isinstance(run.request.override_settings, dict) else {}
        first = pass_ratio(options, run.request.mode, overrides)
        state = MergeState({"first": first, "hires": pass_ratio(options, run.request.mode, overrides, hires=True)},
                           int(options.get("token_merging_downsample") or 1),
                           not options.get("token_merging_no_rand"))
        family = run.model.architecture
        if family.family not in UNET_FAMILIES and any(state.ratios.values()):
            state.unsupported = family.label
            note = f"token merging ignored: {family.label} has no UNet (ToMe is for SD 1.x/2.x/SDXL)"
            log.info(note)
            run.context.warnings.append(note)
        elif first and not any(level <= state.downsample for level in transformer_levels(run.model.unet)):
            note = (f"token merging had no effect: {family.label} has no transformer block downsampled by at most "
                    f"{state.downsample} (raise the setting token_merging_downsample to "
                    f"{min(transformer_levels(run.model.unet) or {2})})")
            log.info(note)
            run.context.warnings.append(note)
        run.state[self.name] = state

    def prepare_batch(self, run: Run, batch: Batch) -> None:
        state: MergeState | None = run.state.get(self.name)
        if state is not None:
            state.seed = int(batch.seeds[0])

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        state: MergeState | None = run.state.get(self.name)
        ratio = state.ratios.get(p.name, state.ratios["first"]) if state is not None else 0.0
        if not ratio or state is None or state.unsupported:
            return super().installed(run, p)
        if p.plan.model.architecture.family not in UNET_FAMILIES:
            return super().installed(run, p)
        options = MergeOptions(ratio=ratio, max_downsample=state.downsample, random=state.random, seed=state.seed)
        return TokenMerging(p.plan.model.unet, options).installed()

    def infotext(self, run: Run) -> dict[str, Any]:
        state: MergeState | None = run.state.get(self.name)
        if state is None or state.unsupported:
            return {}
        first, hires = state.ratios["first"], state.ratios["hires"] if run.pass_named("hires") else 0.0
        if not first and not hires:
            return {}
        return {RATIO_KEY: first or None, RATIO_HR_KEY: hires or None,
                DOWNSAMPLE_KEY: state.downsample if state.downsample != 1 else None,
                NO_RAND_KEY: True if not state.random else None}


def pasted_overrides(params: dict[str, str]) -> dict[str, Any]:
    """The settings an infotext's token-merging keys restore (AUTOMATIC1111's two, Forge's two)."""
    out: dict[str, Any] = {}
    for key, setting in ((RATIO_KEY, "token_merging_ratio"), (RATIO_HR_KEY, "token_merging_ratio_hr")):
        value = number(params.get(key))
        if value is not None and 0 <= value <= 0.9:
            out[setting] = value
    downsample = number(params.get(DOWNSAMPLE_KEY))
    if downsample is not None and downsample.is_integer() and 1 <= downsample <= 8:
        out["token_merging_downsample"] = int(downsample)
    if truthy(params.get(NO_RAND_KEY)):
        out["token_merging_no_rand"] = True
    return out
