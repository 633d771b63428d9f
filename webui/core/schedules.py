"""Noise schedules: the model's discrete sigmas and the step schedules built from them.

Stable Diffusion is trained on 1000 discrete noise levels. Samplers in the k-diffusion
family work in sigma space (x = x0 + sigma * noise) and ask the model at continuous
sigmas, so we map sigma <-> timestep by interpolating in log-sigma between the trained
levels, as Karras et al. (2022) and AUTOMATIC1111 do. A schedule picks which sigmas the
sampler visits; every schedule ends with sigma = 0.

Schedules (AUTOMATIC1111's "Schedule type" names):
- Uniform: timesteps evenly spaced from the last to the first (k-diffusion's default);
- Karras: Karras et al. 2022 eq. 5, evenly spaced in sigma^(1/rho), rho = 7;
- Exponential: evenly spaced in log sigma; Polyexponential: the same on a ramp^rho (rho 1);
- SGM Uniform: evenly spaced timesteps excluding the final one (SDXL-Turbo's);
- KL Optimal: Sabour et al. 2024, sigma = tan of evenly spaced angles;
- Align Your Steps: NVIDIA's optimised 10-step schedules (SD 1.x and SDXL), log-linearly
  interpolated to the requested number of steps;
- Simple / Normal / DDIM: ComfyUI's (every k-th trained sigma / linear timesteps / DDIM's
  uniform stride);
- Beta: Lee et al. 2024, timesteps at the quantiles of Beta(0.6, 0.6).

Flow-matching models (`FlowSchedule`) have sigma = flow time s in [0, 1], shifted towards noise
(static shift, or resolution-dependent "dynamic" shift as diffusers' FluxPipeline computes it);
the same schedule functions walk their 1000 levels, and Simple is exactly the pipeline's
`shift(linspace(1, 1/n, n))`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

# NVIDIA's published Align Your Steps sigmas for SD 1.x (10 steps, sigma_max .. sigma_min); each
# family adapter carries its own (`Family.ays_sigmas`), this is the fallback for a bare config
_AYS_DEFAULT = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


@dataclass
class DiscreteSchedule:
    """The trained noise levels of a DDPM-style model, from its scheduler config."""

    sigmas: torch.Tensor      # (1000,), increasing
    log_sigmas: torch.Tensor
    ays_sigmas: tuple[float, ...] = _AYS_DEFAULT
    sigma_min_override: float = 0.0
    sigma_max_override: float = 0.0
    rho_override: float = 0.0

    @classmethod
    def from_config(cls, config: dict[str, Any], ays_sigmas: tuple[float, ...] = ()) -> "DiscreteSchedule":
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
        if config.get("rescale_betas_zero_snr"):
            alphas_cumprod = _zero_terminal_snr(alphas_cumprod)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas.float(), sigmas.log().float(), tuple(ays_sigmas) or _AYS_DEFAULT)

    @property
    def sigma_min(self) -> float:
        return self.sigma_min_override or float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return self.sigma_max_override or float(self.sigmas[-1])

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

    def model_timestep(self, sigma: float) -> float:
        """The timestep the network is called with at this noise level."""
        return float(self.sigma_to_t(torch.tensor(sigma)))

    def simple_sigmas(self, n: int) -> torch.Tensor:
        """ComfyUI's Simple: every (1000/n)-th trained level from the top (no trailing zero)."""
        stride = len(self.sigmas) / n
        return torch.stack([self.sigmas[-(1 + int(i * stride))] for i in range(n)])

    def for_size(self, latent_height: int, latent_width: int) -> "DiscreteSchedule":
        """The schedule for images of this latent size (resolution-dependent shift); VP: unchanged."""
        return self


@dataclass
class FlowSchedule(DiscreteSchedule):
    """Rectified flow: sigma = shift(t) for t in (0, 1], the model is called with sigma * 1000.

    `shift(t) = e^mu / (e^mu + 1/t - 1)` with mu from the image's token count when the scheduler
    config asks for dynamic shifting (Flux dev), else `s * t / (1 + (s - 1) * t)` (schnell: s = 1).
    """

    config: dict[str, Any] | None = None
    patch: int = 2          # latent pixels per token along a side (for the token count)
    mu: float | None = None

    @classmethod
    def flow(cls, config: dict[str, Any], patch: int = 2, mu: float | None = None) -> "FlowSchedule":
        steps = int(config.get("num_train_timesteps", 1000))
        t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        sigmas = cls._shift_values(config, mu, t).float()
        return cls(sigmas, sigmas.log(), config=dict(config), patch=patch, mu=mu)

    @staticmethod
    def _shift_values(config: dict[str, Any], mu: float | None, t: torch.Tensor) -> torch.Tensor:
        if config.get("use_dynamic_shifting"):
            m = 0.5 if mu is None else mu
            return math.exp(m) / (math.exp(m) + (1 / t - 1))
        shift = float(config.get("shift", 1.0))
        return shift * t / (1 + (shift - 1) * t)

    def for_size(self, latent_height: int, latent_width: int) -> "FlowSchedule":
        if not (self.config or {}).get("use_dynamic_shifting"):
            return self
        c = self.config or {}
        tokens = (latent_height // self.patch) * (latent_width // self.patch)
        base_len, max_len = c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096)
        base, top = c.get("base_shift", 0.5), c.get("max_shift", 1.15)
        slope = (top - base) / (max_len - base_len)
        made = FlowSchedule.flow(self.config or {}, self.patch, tokens * slope + base - slope * base_len)
        made.sigma_min_override, made.sigma_max_override = self.sigma_min_override, self.sigma_max_override
        made.rho_override = self.rho_override
        return made

    def model_timestep(self, sigma: float) -> float:
        return float(sigma) * len(self.sigmas)

    def simple_sigmas(self, n: int) -> torch.Tensor:
        """Exactly FluxPipeline's schedule: shift(linspace(1, 1/n, n))."""
        t = torch.from_numpy(np.linspace(1.0, 1 / n, n).astype(np.float32)).double()
        return self._shift_values(self.config or {}, self.mu, t).float()


def _zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023: shift and scale sqrt(alpha_bar) so the last step is pure noise (SNR 0).

    Sigma would be infinite there, so the last level keeps a large finite sigma (as samplers
    can only start from a finite one)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    result = root ** 2
    result[-1] = 4.8973451890853435e-08  # sigma ~ 4500 instead of infinity
    return result


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.as_tensor(sigmas, dtype=torch.float32), torch.zeros(1)])


def uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    t_max = float(model.sigma_to_t(torch.tensor(model.sigma_max)))
    t_min = float(model.sigma_to_t(torch.tensor(model.sigma_min)))
    return _append_zero(model.t_to_sigma(torch.linspace(t_max, t_min, n)))


def sgm_uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    t_max = float(model.sigma_to_t(torch.tensor(model.sigma_max)))
    t_min = float(model.sigma_to_t(torch.tensor(model.sigma_min)))
    return _append_zero(model.t_to_sigma(torch.linspace(t_max, t_min, n + 1)[:-1]))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5 (no trailing zero)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return ((inv_max + ramp * (inv_min - inv_max)) ** rho).float()


def karras(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(karras_sigmas(n, model.sigma_min, model.sigma_max, model.rho_override or 7.0))


def exponential(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n,
                                       dtype=torch.float64).exp().float())


def polyexponential(model: DiscreteSchedule, n: int, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    log_min, log_max = math.log(model.sigma_min), math.log(model.sigma_max)
    return _append_zero((ramp * (log_max - log_min) + log_min).exp().float())


def kl_optimal(model: DiscreteSchedule, n: int) -> torch.Tensor:
    angles = torch.linspace(math.atan(model.sigma_max), math.atan(model.sigma_min), n, dtype=torch.float64)
    return _append_zero(torch.tan(angles).float())


def align_your_steps(model: DiscreteSchedule, n: int) -> torch.Tensor:
    reference = np.array(model.ays_sigmas)
    if n + 1 == len(reference):
        return _append_zero(torch.tensor(reference[:-1]))
    xs = np.linspace(0, 1, len(reference))
    new = np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(reference)))
    return _append_zero(torch.tensor(new))


def simple(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(model.simple_sigmas(n))


def normal(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return uniform(model, n)


def ddim_uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    stride = max(1, len(model.sigmas) // n)
    picked = [model.sigmas[i] for i in range(1, len(model.sigmas), stride)][:n]
    return _append_zero(torch.stack(picked[::-1]))


def _beta_ppf(q: float, a: float, b: float) -> float:
    import mpmath

    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mpmath.betainc(a, b, 0, mid, regularized=True) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def beta(model: DiscreteSchedule, n: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    total = len(model.sigmas) - 1
    timesteps = [total - _beta_ppf(q, alpha, beta_) * total for q in np.linspace(0, 1, n)]
    return _append_zero(model.t_to_sigma(torch.tensor(timesteps).clamp(0, total)))


# label (as shown and written to infotext) -> (api name, function)
SCHEDULES: dict[str, tuple[str, Callable[[DiscreteSchedule, int], torch.Tensor]]] = {
    "Uniform": ("uniform", uniform),
    "Karras": ("karras", karras),
    "Exponential": ("exponential", exponential),
    "Polyexponential": ("polyexponential", polyexponential),
    "SGM Uniform": ("sgm_uniform", sgm_uniform),
    "KL Optimal": ("kl_optimal", kl_optimal),
    "Align Your Steps": ("align_your_steps", align_your_steps),
    "Simple": ("simple", simple),
    "Normal": ("normal", normal),
    "DDIM": ("ddim", ddim_uniform),
    "Beta": ("beta", beta),
}
