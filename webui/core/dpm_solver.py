"""DPM fast and DPM adaptive: DPM-Solver (Lu et al. 2022) as AUTOMATIC1111 runs it through k-diffusion.

Both ignore the schedule type: they work between the model's smallest and largest trained sigma
(img2img: the schedule's first and last positive sigma) in lambda = -log(sigma), with the DPM-Solver-1/2/3
steps in noise-prediction form (r1 = 1/2 for a lone second-order step; r1 = 1/3, r2 = 2/3 for third order).
With eta > 0 (AUTOMATIC1111's default eta is 1) a step aims at the ancestral sigma_down (not below the
smallest sigma) and adds fresh noise up to its sigma, from each image's own stream. Both end at the
smallest sigma, not at 0.

- DPM fast (DPM-Solver-fast, section 3.4): `steps` model calls, steps evenly spaced in lambda, order 3 but
  the last one or two (then 2, 1 / 2 / 1) so the orders add up to the number of calls.
- DPM adaptive (section 3.4's adaptive step size): an embedded pair (orders 2 and 3) estimates the error,
  scaled per value by max(atol, rtol * max(|x_low|, |x_prev|)) (atol 0.0078, rtol 0.05) and taken as the
  root mean square over the whole batch; the step size follows Söderlind's digital PID controller (2003)
  with its arctan limiter, integral gain 1 / (order: 3, or 1.5 with eta), first step 0.05 in lambda, a step
  kept when the limited factor is at least 0.81. The number of steps is its own (the steps setting is unused).
diffusers' DPMSolverSinglestepScheduler walks its own timesteps and has no ancestral steps, hence our loop.
"""
from __future__ import annotations

import math

import torch

from .k_samplers import Denoiser, NoiseSource, SamplerOptions, StepCallback, ancestral_step


def orders(calls: int) -> list[int]:
    """Orders of DPM fast's steps for a number of model calls (DPM-Solver-fast's rule)."""
    steps = calls // 3 + 1
    if calls % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [calls % 3]


def _sigma(lam: float) -> float:
    return math.exp(-lam)


class _Solver:
    """DPM-Solver steps from lambda s to t on a denoiser; the model output at s is computed once per step."""

    def __init__(self, denoise: Denoiser):
        self.denoise = denoise

    def eps(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        return (x - self.denoise(x, _sigma(lam))) / _sigma(lam)

    @staticmethod
    def _cached(cache: dict, key: float, compute):
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def step(self, x, e0, s: float, t: float, order: int, r1: float = 0.5, cache: dict | None = None):
        """x at t from x at s (eps e0 there), of order 1, 2 (midpoint at r1) or 3; `cache` keeps the
        intermediate model outputs, so the embedded lower-order step reuses them."""
        cache = {} if cache is None else cache
        h, to = t - s, _sigma(t)
        first = x - to * math.expm1(h) * e0
        if order == 1:
            return first
        if order == 2:
            s1 = s + r1 * h
            e1 = self._cached(cache, r1, lambda: self.eps(x - _sigma(s1) * math.expm1(r1 * h) * e0, s1))
            return first - to / (2 * r1) * math.expm1(h) * (e1 - e0)
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = s + r1 * h, s + r2 * h
        e1 = self._cached(cache, r1, lambda: self.eps(x - _sigma(s1) * math.expm1(r1 * h) * e0, s1))
        u2 = (x - _sigma(s2) * math.expm1(r2 * h) * e0
              - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e0))
        e2 = self.eps(u2, s2)
        return first - to / r2 * (math.expm1(h) / h - 1) * (e2 - e0)


def _ancestral_target(s: float, t: float, lam_end: float, eta: float) -> tuple[float, float]:
    """(lambda actually stepped to, noise to add) for a step from s to t."""
    if not eta:
        return t, 0.0
    down, _ = ancestral_step(_sigma(s), _sigma(t), eta)
    target = min(lam_end, -math.log(down))
    return target, math.sqrt(max(_sigma(t) ** 2 - _sigma(target) ** 2, 0.0))


def _span(sigmas, span):
    return span if span is not None else (float(sigmas[-2]), float(sigmas[0]), len(sigmas) - 1)


@torch.no_grad()
def sample_dpm_fast(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                    o: SamplerOptions = SamplerOptions(), span: tuple[float, float, int] | None = None):
    sigma_min, sigma_max, calls = _span(sigmas, span)
    plan = orders(calls)
    lam_end = -math.log(sigma_min)
    lams = torch.linspace(-math.log(sigma_max), lam_end, len(plan) + 1).tolist()
    solver = _Solver(denoise)
    for i, order in enumerate(plan):
        lam = lams[i]
        target, up = _ancestral_target(lam, lams[i + 1], lam_end, o.eta)
        e0 = solver.eps(x, lam)
        denoised = x - _sigma(lam) * e0
        x = solver.step(x, e0, lam, target, order)
        x = x + noise.next() * (up * o.s_noise)  # drawn every step, as there (times 0 without eta)
        replaced = callback(i, x, denoised)
        x = x if replaced is None else replaced
    return x


class _PIDController:
    """Söderlind's PID step size controller on 1 / error, with the arctan limiter 1 + atan(f - 1)."""

    def __init__(self, h: float, order: float, p: float = 0.0, i: float = 1.0, d: float = 0.0,
                 accept_safety: float = 0.81):
        self.h = h
        self.b = ((p + i + d) / order, -(p + 2 * d) / order, d / order)
        self.accept_safety = accept_safety
        self.inverse_errors: list[float] = []

    def propose(self, error: float) -> bool:
        inverse = 1 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        e = self.inverse_errors
        factor = 1 + math.atan(e[0] ** self.b[0] * e[1] ** self.b[1] * e[2] ** self.b[2] - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors = [e[0], e[0], e[1]]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                        o: SamplerOptions = SamplerOptions(), span: tuple[float, float, int] | None = None,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, max_steps: int = 10_000):
    sigma_min, sigma_max, _ = _span(sigmas, span)
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    solver = _Solver(denoise)
    pid = _PIDController(h_init, 1.5 if o.eta else 3)
    x_prev, step = x, 0
    for _ in range(max_steps):
        if lam >= lam_end - 1e-5:
            break
        t = min(lam_end, lam + pid.h)
        target, up = _ancestral_target(lam, t, lam_end, o.eta)
        e0 = solver.eps(x, lam)
        denoised = x - _sigma(lam) * e0
        cache: dict = {}
        x_low = solver.step(x, e0, lam, target, 2, r1=1 / 3, cache=cache)
        x_high = solver.step(x, e0, lam, target, 3, cache=cache)
        scale = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / scale)) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = x_high + noise.next() * (up * o.s_noise)
            lam = t
            replaced = callback(step, x, denoised)
            x = x if replaced is None else replaced
            step += 1
    return x
