"""Noise schedules: the model's discrete sigmas and the step schedules built from them.

Stable Diffusion is trained on 1000 discrete noise levels. Samplers in the k-diffusion
family work in sigma space (x = x0 + sigma * noise) and ask the model at continuous
sigmas, so we map sigma <-> timestep by interpolating in log-sigma between the trained
levels, as Karras et al. (2022) and AUTOMATIC1111 do (its table: float32 sigmas from the
checkpoint's float32 alphas_cumprod). A schedule picks which sigmas the sampler visits, each as
AUTOMATIC1111 defines it; all but KL Optimal end with sigma = 0.

Schedules (AUTOMATIC1111's "Schedule type" names):
- Uniform: timesteps evenly spaced from the last to the first (k-diffusion's default; "Automatic"
  for Euler, Euler a, LMS, Heun); Normal: the same between the timesteps of sigma max and min;
- Karras: Karras et al. 2022 eq. 5, evenly spaced in sigma^(1/rho), rho = 7;
- Exponential: evenly spaced in log sigma; Polyexponential: the same on a ramp^rho (rho 1);
- SGM Uniform: evenly spaced timesteps excluding the final one (SDXL-Turbo's);
- KL Optimal: Sabour et al. 2024, sigma = tan of evenly spaced angles, ending at sigma min;
- Align Your Steps: NVIDIA's optimised 10-step schedules (SD 1.x and SDXL), log-linearly
  interpolated to the requested number of steps;
- Simple / DDIM: every k-th trained sigma (1000/n from the top / 1000//n from timestep 1);
- Beta: Lee et al. 2024, quantiles of Beta(alpha, beta) (settings; 0.6, 0.6) laid linearly between sigma
  min and max.

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
    beta_dist: tuple[float, float] = (0.6, 0.6)  # the Beta schedule's alpha and beta (settings beta_dist_*)

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
        # as AUTOMATIC1111's k-diffusion wrapper: alphas_cumprod made in float64, kept as float32 (the
        # checkpoint's buffer), and sigma = sqrt((1 - a) / a) computed from those in float32
        alphas_cumprod = alphas_cumprod.float()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas, sigmas.log(), tuple(ays_sigmas) or _AYS_DEFAULT)

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
        # (1 - w) * lower + w * upper, not lower + w: the same float32 rounding as k-diffusion's CompVis wrapper
        return ((1 - fraction) * lower.float() + fraction * upper.float()).view(sigma.shape).to(sigma.device)

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
        made.rho_override, made.beta_dist = self.rho_override, self.beta_dist
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
    """The model's own schedule: timesteps evenly spaced from the last to the first trained level
    (sigma min/max settings do not apply, as in AUTOMATIC1111, where this is the model wrapper's own)."""
    return _append_zero(model.t_to_sigma(torch.linspace(len(model.sigmas) - 1, 0, n)))


def _timesteps_between(model: DiscreteSchedule, n: int) -> torch.Tensor:
    t_max = model.sigma_to_t(torch.tensor(model.sigma_max, dtype=torch.float32))
    t_min = model.sigma_to_t(torch.tensor(model.sigma_min, dtype=torch.float32))
    return torch.linspace(float(t_max), float(t_min), n)


def sgm_uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(model.t_to_sigma(_timesteps_between(model, n + 1)[:-1]))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5 (no trailing zero), in float32 as AUTOMATIC1111 computes it."""
    ramp = torch.linspace(0, 1, n)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def karras(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(karras_sigmas(n, model.sigma_min, model.sigma_max, model.rho_override or 7.0))


def exponential(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n).exp())


def polyexponential(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Evenly spaced in log sigma on a ramp^rho (rho 1 unless the "Schedule rho" setting says otherwise)."""
    ramp = torch.linspace(1, 0, n) ** (model.rho_override or 1.0)
    log_min, log_max = math.log(model.sigma_min), math.log(model.sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def kl_optimal(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Sabour et al. 2024 as AUTOMATIC1111 has it: n + 1 angles from atan(sigma_max) to atan(sigma_min), so the
    run ends at sigma_min, not at 0 (a trace of noise stays in the image, as there)."""
    low, high = torch.arctan(torch.tensor(model.sigma_min)), torch.arctan(torch.tensor(model.sigma_max))
    fraction = torch.arange(n + 1) / n
    return torch.tan(fraction * low + (1.0 - fraction) * high)


def align_your_steps(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """NVIDIA's sigmas as they are for their own length (all of them, then 0), else log-linearly
    interpolated to n of them, then 0."""
    reference = [float(v) for v in model.ays_sigmas]
    if n == len(reference):
        return torch.tensor(reference + [0.0], dtype=torch.float32)
    xs = np.linspace(0, 1, len(reference))
    new = np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(reference[::-1])))[::-1]
    return torch.tensor(list(new) + [0.0], dtype=torch.float32)


def simple(model: DiscreteSchedule, n: int) -> torch.Tensor:
    return _append_zero(model.simple_sigmas(n))


def normal(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min (the settings apply)."""
    return _append_zero(model.t_to_sigma(_timesteps_between(model, n)))


def ddim_uniform(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Every (1000 // n)-th trained level from timestep 1 up, highest first: when the stride does not divide
    999 evenly this gives one step more than asked (30 steps run 31), as in AUTOMATIC1111."""
    stride = max(1, len(model.sigmas) // n)
    picked = [model.sigmas[i] for i in range(1, len(model.sigmas), stride)]
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


def beta(model: DiscreteSchedule, n: int) -> torch.Tensor:
    """Lee et al. 2024 as AUTOMATIC1111 has it: sigma_min + ppf(q) * (sigma_max - sigma_min) for q from 1 to 0,
    i.e. the Beta(alpha, beta) quantiles (settings, 0.6 and 0.6) laid out linearly in sigma (not in timesteps,
    as ComfyUI's)."""
    alpha, beta_ = model.beta_dist
    quantiles = [_beta_ppf(q, alpha, beta_) for q in 1 - np.linspace(0, 1, n)]
    low, high = model.sigma_min, model.sigma_max
    return _append_zero(torch.tensor([low + q * (high - low) for q in quantiles], dtype=torch.float32))


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
