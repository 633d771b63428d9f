"""Perturbed-Attention Guidance (Ahn et al. 2024), as Forge's built-in script runs it.

Each step, after classifier-free guidance, the positive prompt is evaluated once more with the
self-attention of the UNet's middle block replaced by the identity (`attention.IdentitySelfAttention`),
and the result is pushed away from that degraded prediction:

    out = cfg_out + scale * (cond - perturbed)

(Forge writes it for denoised latents; the prediction is linear in them at a fixed noise level,
so it is the same step.) Forge's options: `attenuation` lowers the scale by that percentage of
its starting value after every use; `start_step`/`end_step` bound the step window as a fraction
of step / (steps - 1). The patch lives on the denoiser of the pass's model only: with a refiner,
PAG stops at the switch. One more model call per step while it is on. Arguments as Forge's
always-on "PerturbedAttentionGuidance Integrated" sends them ([enabled, scale, attenuation,
start_step, end_step]); infotext keys as Forge writes them (`pagi_enabled`, `pagi_scale`, ...).
"""
from __future__ import annotations

from typing import Any

from ...core.denoiser import CFGDenoiser, Guidance, GuidedStep
from ...core.pipeline import Pass, Run
from .args import Arg, ScriptFeature, in_window, number, truthy
from .attention import IdentitySelfAttention, processor_swapped, self_attention

import torch


class PerturbedAttention(Guidance):
    def __init__(self, settings: dict[str, Any]):
        self.initial = self.scale = float(settings["scale"])
        self.attenuation = float(settings["attenuation"])
        self.start, self.end = float(settings["start_step"]), float(settings["end_step"])

    def after_cfg(self, denoiser: CFGDenoiser, step: GuidedStep) -> torch.Tensor:
        if self.scale <= 0 or not in_window(denoiser, self.start, self.end):
            return step.out
        cond = step.parts[1] if step.with_uncond else step.parts[0]
        with processor_swapped(self_attention(denoiser.unet), IdentitySelfAttention()):
            perturbed = denoiser.evaluate(step.x_in, step.t)
        out = step.out + self.scale * (cond - perturbed)
        self.scale -= self.initial * self.attenuation / 100.0
        return out


class PAG(ScriptFeature):
    name = "pag"
    title = "perturbedattentionguidance integrated"
    titles = (title, "perturbed attention guidance integrated",
              "perturbedattentionguidance integrated (sd1.x, sd2.x, sdxl)", "perturbed-attention guidance")
    prefix = "pag"
    spec = (Arg("enabled", False), Arg("scale", 3.0, 0, 100), Arg("attenuation", 0.0, 0, 100),
            Arg("start_step", 0.0, 0, 1), Arg("end_step", 1.0, 0, 1))

    def begin_pass(self, run: Run, p: Pass) -> None:
        settings = run.args.get(self.name)
        if settings is not None:
            p.plan.prompts.denoiser_edits.append(lambda d: d.add_guidance(PerturbedAttention(settings)))

    def infotext(self, run: Run) -> dict[str, Any]:
        s = run.args.get(self.name)
        if s is None:
            return {}
        return {"pagi_enabled": True, "pagi_scale": s["scale"], "pagi_attenuation": s["attenuation"],
                "pagi_start_step": s["start_step"], "pagi_end_step": s["end_step"]}


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    """Forge's keys, its older `PerturbedAttentionGuidance_*` ones, and SD.Next's `PAG scale`."""
    if truthy(params.get("pagi_enabled")):
        fields: dict[str, Any] = {"pag_enabled": True}
        for name in ("scale", "attenuation", "start_step", "end_step"):
            value = number(params.get(f"pagi_{name}"))
            if value is not None:
                fields[f"pag_{name}"] = value
        return fields
    if truthy(params.get("PerturbedAttentionGuidance_enabled")):
        scale = number(params.get("PerturbedAttentionGuidance_scale"))
        return {"pag_enabled": True, **({"pag_scale": scale} if scale is not None else {})}
    scale = number(params.get("PAG scale"))  # SD.Next's key (its adaptive scale has no counterpart here)
    if scale:
        return {"pag_enabled": True, "pag_scale": scale}
    return {}
