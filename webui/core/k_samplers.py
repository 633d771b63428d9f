"""Sampling loops in sigma space (the k-diffusion family AUTOMATIC1111 uses).

Every sampler takes a denoiser D(x, sigma) -> estimate of the clean latent, the start
latent x (noise already scaled by sigmas[0]), the decreasing sigma schedule ending in 0,
a noise source for stochastic steps, and a per-step callback that may raise to stop.
Written from the papers:
- Euler: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
  Models", Algorithm 2 with no churn: x <- x + (sigma_next - sigma) * (x - D(x)) / sigma.
- Euler ancestral: the same step to sigma_down, then fresh noise of size sigma_up, where
  sigma_up^2 + sigma_down^2 = sigma_next^2 and eta scales sigma_up (DDPM ancestral sampling).
- DPM++ 2M: Lu et al. 2022, "DPM-Solver++", the second-order multistep solver
  (Algorithm 2) in data-prediction form, with lambda = -log(sigma).
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import torch

# D(x, sigma): sigma is a Python float, so no sampler step ever waits on the GPU
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
# called after each step with (index, latents, denoised); may return new latents to continue from
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def _after_step(callback: StepCallback, i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    replaced = callback(i, x, denoised)
    return x if replaced is None else replaced


class NoiseSource(Protocol):
    def next(self) -> torch.Tensor: ...


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for a step from sigma to sigma_next with ancestral noise."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSource,
                 callback: StepCallback, **_: float) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigma)
        derivative = (x - denoised) / sigma
        x = x + derivative * (sigma_next - sigma)
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSource,
                           callback: StepCallback, eta: float = 1.0, s_noise: float = 1.0, **_: float) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise.next() * s_noise * sigma_up
        x = _after_step(callback, i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSource,
                    callback: StepCallback, **_: float) -> torch.Tensor:
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
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
