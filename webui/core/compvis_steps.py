"""DDIM and PLMS on AUTOMATIC1111's timesteps, with diffusers' DDIMScheduler and PNDMScheduler.

Since version 1.6 AUTOMATIC1111 runs DDIM and PLMS as "timesteps" samplers: for n steps the grid is
1, 1 + k, 1 + 2k, ... below 1000 (k = 1000 // n, clipped to 999), and the sampler updates from every
grid point but the lowest, ending on the level of timestep 1: n - 1 updates for n steps (30 steps make a
grid of 31 and run 30), starting from the plain noise at the highest grid point. PLMS's first update is the
pseudo improved Euler step, which asks the model once more at the next grid point.

diffusers' schedulers do the same updates with the same stride (k from `num_inference_steps`), but walk
their own list (n points ending at timestep 1, then one more step to the level of timestep 0). So after
`set_timesteps` the scheduler is given AUTOMATIC1111's list; only for txt2img (img2img keeps diffusers'
slicing of its own list).
"""
from __future__ import annotations

import torch


def grid(steps: int, train: int = 1000) -> list[int]:
    """AUTOMATIC1111's timesteps for `steps` steps, highest first."""
    return sorted({min(t + 1, train - 1) for t in range(0, train, max(1, train // steps))}, reverse=True)


def visits(steps: int, plms: bool, train: int = 1000) -> list[int]:
    """The timesteps the model is asked at, in order: every grid point but the lowest; PLMS asks at the
    second one twice (its first update's extra call, then its own update)."""
    points = grid(steps, train)
    return [points[0], points[1], *points[1:-1]] if plms else points[:-1]


def install(scheduler, steps: int, plms: bool) -> None:
    """Hand a DDIMScheduler / PNDMScheduler (skip_prk_steps, after set_timesteps) AUTOMATIC1111's list.
    One step leaves diffusers' list alone (AUTOMATIC1111's grid then has one point, and it returns the noise)."""
    train = int(scheduler.config.num_train_timesteps)
    if len(grid(steps, train)) < 2:
        return
    scheduler.timesteps = torch.tensor(visits(steps, plms, train), dtype=torch.int64,
                                       device=scheduler.timesteps.device)
