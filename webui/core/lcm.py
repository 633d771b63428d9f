"""LCM (Luo et al. 2023, latent consistency models) as AUTOMATIC1111 runs it: a k-diffusion style loop.

AUTOMATIC1111's LCM is not diffusers' LCMScheduler (which walks 'leading' timesteps 999, 759, 519, 279 for
4 steps). It samples in sigma space on the 50 levels an LCM was distilled on (timesteps 19, 39, ..., 999):
- every schedule type is built on those 50 levels (sigma min is the level of timestep 19), and "Automatic"
  is Uniform on them (for 4 steps: levels 49, 32.67, 16.33, 0, interpolated in log sigma);
- the network is called at the nearest of the 50 timesteps (in log sigma) with the usual k-diffusion input
  scaling at the step's own sigma, and the consistency boundary condition is applied with that timestep
  (x10) and sigma_data 0.5: out = c_out * x0 + c_skip * x;
- each step takes the estimate and adds fresh noise at the next sigma (the per-image streams, with ENSD,
  as the ancestral samplers).
diffusers has no scheduler for this, so the loop is ours (five lines), on the engine's own denoiser.
"""
from __future__ import annotations

import torch

from . import k_samplers
from .schedules import DiscreteSchedule

ORIGINAL_STEPS = 50  # the LCM distillation's number of timesteps (AUTOMATIC1111 fixes it at 50, as LCM-LoRA)
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def skip(schedule: DiscreteSchedule) -> int:
    """Trained levels between two LCM levels (20 for 1000)."""
    return len(schedule.sigmas) // ORIGINAL_STEPS


def levels(schedule: DiscreteSchedule) -> DiscreteSchedule:
    """The 50 levels LCM samples on (every 20th trained level ending at 999), with the schedule's settings."""
    stride = skip(schedule)
    sigmas = schedule.sigmas[stride - 1::stride].clone()
    return DiscreteSchedule(sigmas, sigmas.log(), schedule.ays_sigmas, schedule.sigma_min_override,
                            schedule.sigma_max_override, schedule.rho_override, schedule.beta_dist)


def timestep(table: DiscreteSchedule, sigma: float, stride: int) -> int:
    """The trained timestep of the LCM level nearest to sigma (in log sigma)."""
    index = int((table.log_sigmas - torch.tensor(float(sigma)).log()).abs().argmin())
    return index * stride + stride - 1


def denoiser(model, table: DiscreteSchedule, stride: int) -> k_samplers.Denoiser:
    """The consistency model's estimate at sigma, from the engine's denoiser (its prediction with CFG)."""
    parameterisation = model.parameterisation

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = float(sigma)
        t = timestep(table, s, stride)
        clean = parameterisation.denoised(x, s, model.predict(parameterisation.model_input(x, s), float(t)))
        scaled = t * TIMESTEP_SCALING
        c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
        c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
        return clean * c_out + x * c_skip

    return denoise


@torch.no_grad()
def sample_lcm(denoise: k_samplers.Denoiser, x, sigmas, noise: k_samplers.NoiseSource,
               callback: k_samplers.StepCallback, o: k_samplers.SamplerOptions = k_samplers.SamplerOptions()):
    s = [float(v) for v in sigmas]
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        x = denoised
        if s[i + 1] > 0:
            x = x + noise.next() * s[i + 1]
        replaced = callback(i, x, denoised)
        x = x if replaced is None else replaced
    return x
