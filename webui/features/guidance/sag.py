"""Self-Attention Guidance (Hong et al. 2023), with the A1111 "Self Attention Guidance" script's arguments.

While the negative prompt is evaluated, the middle block's self-attention probabilities are
kept (`attention.RecordingSelfAttention`). Where the attention a token receives, averaged over
heads and summed over queries, exceeds `mask_threshold`, the negative prompt's clean-latent
estimate x0 is blurred (Gaussian, kernel 9, `blur_sigma`); that degraded estimate is noised
back to the step's noise level, the negative prompt is evaluated on it, and the step moves away
from what the model makes of it:

    x0' = cfg_x0 + scale * (degraded - x0(degraded, noised))

computed in clean-latent space through the family's parameterisation and returned as a
prediction. It needs the negative prompt in the call (CFG scale above 1, not an NGMS-skipped
call) and latents larger than 4x4; otherwise the call is left as it is. One more model call per
step. The recording layer belongs to the pass's model: with a refiner, SAG stops at the switch.
Arguments: alwayson_scripts["self attention guidance"] = [enabled, scale, mask_threshold] (the
A1111 extension's), plus Easel's blur_sigma; infotext `SAG Guidance Scale`, `SAG Mask
Threshold` (and `SAG Blur Sigma` when not 1) as the extension writes them.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ...core.denoiser import CFGDenoiser, Guidance, GuidedStep
from ...core.pipeline import Pass, Run
from .args import Arg, ScriptFeature, number
from .attention import RecordingSelfAttention, processor_swapped, self_attention

KERNEL = 9


def attention_mask(probabilities: torch.Tensor, batch: int, size: tuple[int, int], threshold: float
                   ) -> torch.Tensor | None:
    """(batch, 1, h, w) 0/1 mask at latent size from the negative rows' probabilities; None if the grid is unclear."""
    rows, tokens, _ = probabilities.shape
    heads = rows // batch
    received = probabilities[:batch * heads].reshape(batch, heads, tokens, tokens).mean(1).sum(1)
    height, width = size
    side = math.sqrt(tokens)
    grid_h, grid_w = int(round(side * math.sqrt(height / width))), int(round(side * math.sqrt(width / height)))
    if grid_h * grid_w != tokens:
        return None
    mask = (received > threshold).to(probabilities.dtype).reshape(batch, 1, grid_h, grid_w)
    return torch.nn.functional.interpolate(mask, size=(height, width))


def blurred(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(latents, [KERNEL, KERNEL], [sigma, sigma])


class SelfAttentionGuide(Guidance):
    def __init__(self, settings: dict[str, Any], recorder: RecordingSelfAttention):
        self.scale = float(settings["scale"])
        self.threshold = float(settings["mask_threshold"])
        self.blur_sigma = float(settings["blur_sigma"])
        self.recorder = recorder

    def before_call(self, denoiser: CFGDenoiser) -> None:
        self.recorder.armed = True

    def after_cfg(self, denoiser: CFGDenoiser, step: GuidedStep) -> torch.Tensor:
        probabilities, self.recorder.probabilities, self.recorder.armed = self.recorder.probabilities, None, False
        negative = step.parts[0]
        if not step.with_uncond or probabilities is None or self.scale == 0 or min(negative.shape[-2:]) <= KERNEL // 2:
            return step.out
        mask = attention_mask(probabilities.float(), negative.shape[0], tuple(negative.shape[-2:]), self.threshold)
        if mask is None:
            return step.out
        sigma, param = denoiser.sigma_at(step.t), denoiser.parameterisation
        x_in = step.x_in.to(negative.device, negative.dtype)
        x0 = param.clean_from_output(x_in, sigma, negative)
        degraded = blurred(x0, self.blur_sigma) * mask + x0 * (1 - mask)
        degraded_in = x_in + param.model_input(degraded - x0, sigma)
        seen = param.clean_from_output(degraded_in, sigma, denoiser.evaluate(degraded_in, step.t, negative=True))
        guided = param.clean_from_output(x_in, sigma, step.out) + self.scale * (degraded - seen)
        return param.output_for_clean(x_in, sigma, guided)


class SAG(ScriptFeature):
    name = "sag"
    title = "self attention guidance"
    titles = (title,)
    prefix = "sag"
    spec = (Arg("enabled", False), Arg("scale", 0.75, -2, 10), Arg("mask_threshold", 1.0, 0, 2),
            Arg("blur_sigma", 1.0, 0.01, 10))

    def begin_pass(self, run: Run, p: Pass) -> None:
        settings = run.args.get(self.name)
        if settings is None or p.request.cfg_scale <= 1:
            # no negative prompt in the call, nothing to look at: leave the attention processor alone too (its
            # plain-bmm copy differs from the fused one in the last float bits, enough to move a pixel)
            return
        recorder = RecordingSelfAttention()
        run.state[(self.name, p.name)] = recorder
        p.plan.prompts.denoiser_edits.append(lambda d: d.add_guidance(SelfAttentionGuide(settings, recorder)))

    def installed(self, run: Run, p: Pass):
        recorder = run.state.get((self.name, p.name))
        if recorder is None:
            return super().installed(run, p)
        return processor_swapped(self_attention(p.plan.model.unet), recorder)

    def infotext(self, run: Run) -> dict[str, Any]:
        s = run.args.get(self.name)
        if s is None:
            return {}
        return {"SAG Guidance Scale": s["scale"], "SAG Mask Threshold": s["mask_threshold"],
                "SAG Blur Sigma": s["blur_sigma"] if s["blur_sigma"] != 1.0 else None}


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    """The A1111 extension's keys (and Forge's `sag_*` ones)."""
    keys = (("scale", "SAG Guidance Scale", "sag_scale"), ("mask_threshold", "SAG Mask Threshold", "sag_threshold"),
            ("blur_sigma", "SAG Blur Sigma", "sag_blur_sigma"))
    fields: dict[str, Any] = {}
    for name, a1111, forge in keys:
        value = number(params.get(a1111, params.get(forge)))
        if value is not None:
            fields[f"sag_{name}"] = value
    if fields:
        fields["sag_enabled"] = True
    return fields
