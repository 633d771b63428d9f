"""Sampling loops in sigma space (the k-diffusion family AUTOMATIC1111 uses), from the papers.

Every sampler takes a denoiser D(x, sigma) -> estimate of the clean latent, the start
latent x (noise already scaled by sigmas[0]), the decreasing sigma schedule ending in 0
(a CPU tensor: reading it never waits on the GPU), a per-image noise source for
stochastic steps, a per-step callback (which may raise to stop, or return new latents),
and the sampler options (eta, churn, noise scale).

- Euler, Heun: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
  Generative Models", Algorithm 2 (churn gamma = min(s_churn/N, sqrt(2)-1) inside
  [s_tmin, s_tmax]; Heun adds the trapezoidal correction except on the last step).
- DPM2: the same with the derivative taken at the log-space midpoint (DPM-Solver-2).
- LMS: linear multistep of order 4 on dx/dsigma, with coefficients that integrate the
  Lagrange polynomial through the previous derivatives exactly over [sigma_i, sigma_i+1].
- Ancestral variants (Euler a, DPM2 a, DPM++ 2S a): step to sigma_down, then add fresh
  noise of size sigma_up with sigma_up^2 + sigma_down^2 = sigma_next^2, scaled by eta.
- DPM++ 2M, 2S, SDE, 2M SDE (midpoint/Heun), 3M SDE: Lu et al. 2022, "DPM-Solver++",
  data-prediction form in lambda = -log(sigma), first to third order, with the SDE
  variants' noise injection exp(-eta*h) / sqrt(1 - exp(-2*eta*h)).
- Restart: Xu et al. 2023, "Restart Sampling": Heun steps, and once the schedule passes
  a low sigma, jump back up with fresh noise and run a short Karras segment again, K times
  (AUTOMATIC1111's plan: none under 20 steps; see `restart_plan`).

Stochastic samplers draw Gaussian noise from the per-image streams, so image i of a batch
equals generating its seed alone. The SDE samplers (DPM++ SDE, 2M SDE, 3M SDE) ask the noise
source for the increment between two sigmas (`_increment`): a Brownian-tree source
(`brownian.BrownianNoise`, AUTOMATIC1111's convention) answers from each image's Brownian
motion; a plain per-image stream answers with its next independent draw (faster).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

# D(x, sigma): sigma is a Python float, so no sampler step ever waits on the GPU
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
# called after each step with (index, latents, denoised); may return new latents to continue from
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class NoiseSource(Protocol):
    def next(self) -> torch.Tensor: ...


def _increment(noise: NoiseSource, sigma: float, sigma_next: float) -> torch.Tensor:
    """Standard-normal noise for an SDE step from sigma to sigma_next: the Brownian increment
    when the source keeps a Brownian motion (`between`), else the stream's next draw."""
    between = getattr(noise, "between", None)
    return between(sigma, sigma_next) if between is not None else noise.next()


@dataclass(frozen=True)
class SamplerOptions:
    eta: float = 1.0            # ancestral / SDE noise amount
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    solver: str = "midpoint"    # DPM++ 2M SDE: "midpoint" or "heun"
    sde_noise: str = "Brownian tree"  # SDE samplers: "Brownian tree" (AUTOMATIC1111's) or "Per-step"
    # UniPC (AUTOMATIC1111's settings uni_pc_*): B(h) variant, time grid, order, lower order on the last steps
    unipc_variant: str = "bh1"
    unipc_skip_type: str = "time_uniform"
    unipc_order: int = 3
    unipc_lower_order_final: bool = True


def _after_step(callback: StepCallback, i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    replaced = callback(i, x, denoised)
    return x if replaced is None else replaced


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for a step from sigma to sigma_next with ancestral noise."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)
    return sigma_down, sigma_up


def _churn(x: torch.Tensor, sigma: float, steps: int, noise: NoiseSource, o: SamplerOptions) -> tuple[torch.Tensor, float]:
    """Karras' stochastic churn: raise the noise level a little before the step."""
    gamma = min(o.s_churn / steps, math.sqrt(2) - 1) if o.s_tmin <= sigma <= o.s_tmax and o.s_churn > 0 else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise.next() * o.s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2)
    return x, sigma_hat


def _sigmas(sigmas: torch.Tensor) -> list[float]:
    return [float(s) for s in sigmas]


def _karras_loop(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback, o: SamplerOptions,
                 step: Callable[[Denoiser, torch.Tensor, torch.Tensor, float, float], torch.Tensor]):
    """Karras et al.'s Algorithm 2 frame: churn, derivative at sigma_hat, then `step` to sigma_next."""
    s = _sigmas(sigmas)
    for i in range(len(s) - 1):
        x, sigma_hat = _churn(x, s[i], len(s) - 1, noise, o)
        denoised = denoise(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x = step(denoise, x, d, sigma_hat, s[i + 1]) if s[i + 1] > 0 else x + d * (s[i + 1] - sigma_hat)
        x = _after_step(callback, i, x, denoised)
    return x


def _euler_step(denoise, x, d, sigma, sigma_next):
    return x + d * (sigma_next - sigma)


def _heun_step(denoise, x, d, sigma, sigma_next):
    dt = sigma_next - sigma
    x_next = x + d * dt
    d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
    return x + (d + d_next) / 2 * dt


def _dpm2_step(denoise, x, d, sigma, sigma_next):
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_next)) / 2)
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = (x_mid - denoise(x_mid, sigma_mid)) / sigma_mid
    return x + d_mid * (sigma_next - sigma)


@torch.no_grad()
def sample_euler(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                 o: SamplerOptions = SamplerOptions()):
    return _karras_loop(denoise, x, sigmas, noise, callback, o, _euler_step)


@torch.no_grad()
def sample_heun(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                o: SamplerOptions = SamplerOptions()):
    return _karras_loop(denoise, x, sigmas, noise, callback, o, _heun_step)


@torch.no_grad()
def sample_dpm2(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                o: SamplerOptions = SamplerOptions()):
    return _karras_loop(denoise, x, sigmas, noise, callback, o, _dpm2_step)


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                           o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], o.eta)
        x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + noise.next() * o.s_noise * sigma_up
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpm2_ancestral(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                          o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], o.eta)
        d = (x - denoised) / s[i]
        if sigma_down == 0:
            x = x + d * (sigma_down - s[i])
        else:
            sigma_mid = math.exp((math.log(s[i]) + math.log(sigma_down)) / 2)
            x_mid = x + d * (sigma_mid - s[i])
            d_mid = (x_mid - denoise(x_mid, sigma_mid)) / sigma_mid
            x = x + d_mid * (sigma_down - s[i])
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + noise.next() * o.s_noise * sigma_up
        x = _after_step(callback, i, x, denoised)
    return x


def lms_coefficient(sigmas: list[float], i: int, j: int, order: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial for point i-j."""
    nodes = [sigmas[i - k] for k in range(order)]
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly *= np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
    antiderivative = poly.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@torch.no_grad()
def sample_lms(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
               o: SamplerOptions = SamplerOptions(), order: int = 4):
    s = _sigmas(sigmas)
    derivatives: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        derivatives.insert(0, (x - denoised) / s[i])
        del derivatives[order:]
        current = min(i + 1, order)
        coefficients = [lms_coefficient(s, i, j, current) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, derivatives))
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                    o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised  # the last step lands on the model's estimate
        else:
            h = math.log(sigma) - math.log(sigma_next)  # lambda_next - lambda
            if previous is None:
                estimate = denoised  # first step: DPM-Solver++(1), i.e. DDIM
            else:
                r = h_previous / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
            h_previous = h
        previous = denoised
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                              o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], o.eta)
        if sigma_down == 0:
            x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        else:
            # DPM-Solver++(2S) with the intermediate point halfway in lambda
            lam, lam_down = -math.log(s[i]), -math.log(sigma_down)
            h = lam_down - lam
            sigma_mid = math.exp(-(lam + h / 2))
            x_mid = (sigma_mid / s[i]) * x - math.expm1(-h / 2) * denoised
            denoised_mid = denoise(x_mid, sigma_mid)
            x = (sigma_down / s[i]) * x - math.expm1(-h) * denoised_mid
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + noise.next() * o.s_noise * sigma_up
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                     o: SamplerOptions = SamplerOptions(), r: float = 0.5):
    """DPM-Solver++ stochastic, second order: an SDE half step to an intermediate point, then a full one."""
    s = _sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        if s[i + 1] == 0:
            x = x + (x - denoised) / s[i] * (s[i + 1] - s[i])
        else:
            lam, lam_next = -math.log(s[i]), -math.log(s[i + 1])
            h = lam_next - lam
            sigma_mid = math.exp(-(lam + h * r))
            down, up = ancestral_step(s[i], sigma_mid, o.eta)
            x_mid = (down / s[i]) * x - math.expm1(lam + math.log(down)) * denoised
            if up > 0:
                x_mid = x_mid + _increment(noise, s[i], sigma_mid) * o.s_noise * up
            denoised_mid = denoise(x_mid, sigma_mid)
            down, up = ancestral_step(s[i], s[i + 1], o.eta)
            mix = 1 / (2 * r)
            estimate = (1 - mix) * denoised + mix * denoised_mid
            x = (down / s[i]) * x - math.expm1(lam + math.log(down)) * estimate
            if up > 0:
                x = x + _increment(noise, s[i], s[i + 1]) * o.s_noise * up
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                        o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = o.eta * h
            x = (s[i + 1] / s[i]) * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
            if previous is not None:
                r = h_previous / h
                if o.solver == "heun":
                    x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - previous)
            if o.eta > 0:
                z = _increment(noise, s[i], s[i + 1])
                x = x + z * s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * o.s_noise
            h_previous = h
        previous = denoised
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                        o: SamplerOptions = SamplerOptions()):
    s = _sigmas(sigmas)
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            h_eta = h * (o.eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if o.eta > 0:
                z = _increment(noise, s[i], s[i + 1])
                x = x + z * s[i + 1] * math.sqrt(-math.expm1(-2 * h * o.eta)) * o.s_noise
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
        x = _after_step(callback, i, x, denoised)
    return x


def restart_plan(sigmas: list[float], karras: Callable[[int, float, float], list[float]]) -> list[list[float]]:
    """Sigma segments for Restart, with AUTOMATIC1111's defaults.

    Under 20 steps there is no restart: Heun over the schedule. From 20 steps, R restart steps
    repeated K times (R = 9, K = 1; from 36 steps R = steps // 4, K = 2) take R * K of the
    steps, so the main schedule becomes a Karras schedule of the remaining steps between the
    given schedule's ends. Where it comes closest to sigma 0.1, the run jumps back (fresh
    noise) to its sigma closest to 2 and walks a Karras segment of R steps down again, K times.
    """
    steps = len(sigmas) - 1
    if steps < 20:
        return [sigmas]
    restart_steps, repeats = (steps // 4, 2) if steps >= 36 else (9, 1)
    base = [float(v) for v in karras(steps - restart_steps * repeats, sigmas[-2], sigmas[0])] + [0.0]
    nearest = lambda target: min(range(len(base)), key=lambda i: (abs(base[i] - target), i))  # noqa: E731
    index, top = nearest(0.1), nearest(2.0)
    if index == 0 or top >= index:
        return [base]
    restart = [float(v) for v in karras(restart_steps + 1, base[index], base[top])]  # base[top] ... base[index]
    return [base[:index + 1], *([restart] * repeats), base[index:]]


@torch.no_grad()
def sample_restart(denoise: Denoiser, x, sigmas, noise: NoiseSource, callback: StepCallback,
                   o: SamplerOptions = SamplerOptions(), karras: Callable | None = None):
    """Heun over the schedule; near sigma 0.1, restart from about sigma 2 (fresh noise) K times."""
    s = _sigmas(sigmas)
    step = 0
    segments = restart_plan(s, karras) if karras is not None else [s]
    previous_end: float | None = None
    for segment in segments:
        if previous_end is not None and segment[0] > previous_end:  # jump back up with fresh noise
            x = x + noise.next() * o.s_noise * math.sqrt(segment[0] ** 2 - previous_end ** 2)
        for i in range(len(segment) - 1):
            sigma, sigma_next = segment[i], segment[i + 1]
            denoised = denoise(x, sigma)
            d = (x - denoised) / sigma
            x = _heun_step(denoise, x, d, sigma, sigma_next) if sigma_next > 0 else x + d * (sigma_next - sigma)
            x = _after_step(callback, step, x, denoised)
            step += 1
        previous_end = segment[-1]
    return x
