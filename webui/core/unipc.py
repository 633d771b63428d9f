"""UniPC as AUTOMATIC1111 runs it, on diffusers' UniPCMultistepScheduler.

AUTOMATIC1111 runs the UniPC authors' sampler (Zhao et al. 2023) on their discrete noise schedule:
continuous time t in [1/N, 1] (N = 1000 trained levels), log(alpha_t) interpolated linearly between
the levels, the network called at the fractional timestep (t - 1/N) * 1000, the time grid chosen by
the `uni_pc_skip_type` setting (time_uniform by default), and the last step landing on the lowest
trained level (t = 1/N, not sigma 0). Its settings: variant bh1 (B(h) = h) or bh2 (B(h) = e^h - 1),
order 3, lower order on the last steps.

diffusers' scheduler has the same predictor-corrector (bh1/bh2, solver_order, lower_order_final), but
its time grids are whole timesteps (999, 749, 500, 250 for 4 steps instead of 999, 749.25, 499.5,
249.75). So the scheduler is configured for the settings and then handed AUTOMATIC1111's grid:
`install` replaces its timesteps and sigmas after `set_timesteps`. AUTOMATIC1111's third variant,
vary_coeff, has no diffusers counterpart and is not offered.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .schedules import DiscreteSchedule

VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")
# (infotext key, setting, AUTOMATIC1111's default): a key is written only where the setting differs from it
INFOTEXT = (("UniPC variant", "uni_pc_variant", "bh1"), ("UniPC skip type", "uni_pc_skip_type", "time_uniform"),
            ("UniPC order", "uni_pc_order", 3), ("UniPC lower order final", "uni_pc_lower_order_final", True))


def scheduler_options(variant: str, order: int, lower_order_final: bool) -> dict[str, Any]:
    """diffusers UniPCMultistepScheduler config for AUTOMATIC1111's settings (data prediction, as there)."""
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant {variant!r} is not offered; choose one of: {', '.join(VARIANTS)}")
    return {"solver_type": variant, "solver_order": max(1, int(order)), "lower_order_final": bool(lower_order_final),
            "predict_x0": True, "final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"}


def _log_alpha_table(schedule: DiscreteSchedule) -> np.ndarray:
    """log(alpha) of each trained level, alpha^2 = alphas_cumprod = 1 / (1 + sigma^2)."""
    sigmas = schedule.sigmas.double().numpy()
    return -0.5 * np.log1p(sigmas ** 2)


def time_grid(schedule: DiscreteSchedule, steps: int, skip_type: str = "time_uniform") -> np.ndarray:
    """The steps + 1 fractional model timesteps AUTOMATIC1111's UniPC visits, from 999 down to 0."""
    log_alpha = _log_alpha_table(schedule)
    n = len(log_alpha)
    t_levels = np.arange(1, n + 1) / n           # continuous time of each trained level
    t_end, t_start = 1.0 / n, 1.0
    if skip_type == "time_uniform":
        t = np.linspace(t_start, t_end, steps + 1)
    elif skip_type == "time_quadratic":
        t = np.linspace(t_start ** 0.5, t_end ** 0.5, steps + 1) ** 2
    elif skip_type == "logSNR":
        lam = log_alpha - 0.5 * np.log1p(-np.exp(2 * log_alpha))  # lambda = log(alpha / sigma_vp)
        wanted = np.linspace(np.interp(t_start, t_levels, lam), np.interp(t_end, t_levels, lam), steps + 1)
        # back from lambda to time through log(alpha) = -log(1 + e^(-2 lambda)) / 2 (increasing in lambda)
        wanted_log_alpha = -0.5 * np.logaddexp(0.0, -2 * wanted)
        t = np.interp(wanted_log_alpha, log_alpha[::-1], t_levels[::-1])
    else:
        raise ValueError(f"UniPC skip type {skip_type!r}; choose one of: {', '.join(SKIP_TYPES)}")
    return (t - 1.0 / n) * 1000.0


def sigmas_at(schedule: DiscreteSchedule, timesteps: np.ndarray) -> np.ndarray:
    """k-diffusion sigma at fractional timesteps, log(alpha) interpolated linearly between levels."""
    log_alpha = np.interp(timesteps, np.arange(len(schedule.sigmas)), _log_alpha_table(schedule))
    return np.sqrt(np.expm1(-2 * log_alpha))


def install(scheduler, schedule: DiscreteSchedule, steps: int, skip_type: str) -> None:
    """Give a UniPCMultistepScheduler (after set_timesteps) AUTOMATIC1111's grid: the model timesteps
    (fractional) and the sigmas the solver steps between, the last the lowest trained level's."""
    grid = time_grid(schedule, steps, skip_type)
    device = scheduler.timesteps.device
    scheduler.timesteps = torch.from_numpy(grid[:-1].copy()).float().to(device)
    scheduler.sigmas = torch.from_numpy(sigmas_at(schedule, grid)).float()
