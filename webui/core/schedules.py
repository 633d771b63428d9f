"""Noise schedules: the model's discrete sigmas and the step schedules built from them.

Stable Diffusion is trained on 1000 discrete noise levels. Samplers in the k-diffusion
family work in sigma space (x = x0 + sigma * noise) and ask the model at continuous
sigmas, so we map sigma <-> timestep by interpolating in log-sigma between the
trained levels, as Karras et al. (2022) and AUTOMATIC1111 do. A schedule picks which
sigmas the sampler visits; every schedule ends with sigma = 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class DiscreteSchedule:
    """The trained noise levels of a DDPM-style model, from its scheduler config."""

    sigmas: torch.Tensor      # (1000,), increasing
    log_sigmas: torch.Tensor

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DiscreteSchedule":
        steps = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        kind = config.get("beta_schedule", "scaled_linear")
        if kind == "scaled_linear":
            betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule {kind!r} is not supported")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas.float(), sigmas.log().float())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep for a sigma (linear interpolation in log-sigma)."""
        log_sigma = sigma.detach().float().flatten().log().cpu()
        upper = torch.searchsorted(self.log_sigmas, log_sigma, right=True).clamp(1, len(self.log_sigmas) - 1)
        lower = upper - 1
        span = self.log_sigmas[upper] - self.log_sigmas[lower]
        fraction = ((log_sigma - self.log_sigmas[lower]) / span).clamp(0, 1)
        return (lower.float() + fraction).view(sigma.shape).to(sigma.device)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Timesteps evenly spaced from the last trained step to the first (k-diffusion's default)."""
    t = torch.linspace(len(model.sigmas) - 1, 0, n)
    return _append_zero(model.t_to_sigma(t))


def sgm_uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Evenly spaced in timestep, excluding the final step (the SGM/SDXL-Turbo convention)."""
    t_max = float(model.sigma_to_t(torch.tensor(model.sigma_max)))
    t_min = float(model.sigma_to_t(torch.tensor(model.sigma_min)))
    t = torch.linspace(t_max, t_min, n + 1)[:-1]
    return _append_zero(model.t_to_sigma(t))


def karras(model: DiscreteSchedule, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    inv_max, inv_min = model.sigma_max ** (1 / rho), model.sigma_min ** (1 / rho)
    return _append_zero((inv_max + ramp * (inv_min - inv_max)) ** rho)


def exponential(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Evenly spaced in log-sigma."""
    return _append_zero(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n).exp())


# label (as shown and written to infotext) -> (api name, function)
SCHEDULES: dict[str, tuple[str, Callable[[DiscreteSchedule, int], torch.Tensor]]] = {
    "Uniform": ("uniform", uniform),
    "Karras": ("karras", karras),
    "Exponential": ("exponential", exponential),
    "SGM Uniform": ("sgm_uniform", sgm_uniform),
}
