"""DPM fast: DPM-Solver-fast (Lu et al. 2022, "DPM-Solver", section 3.4 and Algorithms 1-2) as
AUTOMATIC1111 runs it through k-diffusion.

The sampler ignores the schedule type: it spends `steps` model calls between the model's smallest and
largest trained sigma (img2img: the schedule's first and last positive sigma), on steps evenly spaced in
lambda = -log(sigma), of order 3 (DPM-Solver-3, r1 = 1/3, r2 = 2/3) but the last one or two (order 2 with
r1 = 1/2, or 1), so that the orders add up to the number of calls. With eta > 0 (AUTOMATIC1111's default
eta is 1) each step ends below its target at the ancestral sigma_down (but not below the smallest sigma)
and adds fresh noise up to it, from the image's own stream. It ends at the smallest sigma, not at 0.
"""
from __future__ import annotations

import math

import torch

from .k_samplers import Denoiser, NoiseSource, SamplerOptions, StepCallback, ancestral_step


def orders(calls: int) -> list[int]:
    """Orders of the steps for a number of model calls (DPM-Solver-fast's rule)."""
    steps = calls // 3 + 1
    if calls % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [calls % 3]


@torch.no_grad()
def sample_dpm_fast(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                    o: SamplerOptions = SamplerOptions(), span: tuple[float, float, int] | None = None):
    sigma_min, sigma_max, calls = span if span is not None else (float(sigmas[-2]), float(sigmas[0]),
                                                                 len(sigmas) - 1)
    plan = orders(calls)
    lam_end = -math.log(sigma_min)
    lams = torch.linspace(-math.log(sigma_max), lam_end, len(plan) + 1).tolist()
    sigma = lambda lam: math.exp(-lam)  # noqa: E731

    def eps(x_at: torch.Tensor, lam: float) -> torch.Tensor:
        return (x_at - denoise(x_at, sigma(lam))) / sigma(lam)

    for i, order in enumerate(plan):
        lam, lam_next = lams[i], lams[i + 1]
        if o.eta:
            down, _ = ancestral_step(sigma(lam), sigma(lam_next), o.eta)
            lam_to = min(lam_end, -math.log(down))
            up = math.sqrt(max(sigma(lam_next) ** 2 - sigma(lam_to) ** 2, 0.0))
        else:
            lam_to, up = lam_next, 0.0
        e0 = eps(x, lam)
        denoised = x - sigma(lam) * e0
        h = lam_to - lam
        to = sigma(lam_to)
        if order == 1:
            x = x - to * math.expm1(h) * e0
        elif order == 2:
            r1 = 0.5
            s1 = lam + r1 * h
            e1 = eps(x - sigma(s1) * math.expm1(r1 * h) * e0, s1)
            x = x - to * math.expm1(h) * e0 - to / (2 * r1) * math.expm1(h) * (e1 - e0)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = lam + r1 * h, lam + r2 * h
            e1 = eps(x - sigma(s1) * math.expm1(r1 * h) * e0, s1)
            u2 = (x - sigma(s2) * math.expm1(r2 * h) * e0
                  - sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e0))
            e2 = eps(u2, s2)
            x = x - to * math.expm1(h) * e0 - to / r2 * (math.expm1(h) / h - 1) * (e2 - e0)
        x = x + noise.next() * (up * o.s_noise)  # drawn every step, as there (times 0 without eta)
        replaced = callback(i, x, denoised)
        x = x if replaced is None else replaced
    return x
