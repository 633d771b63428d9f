"""AUTOMATIC1111 sampler and schedule names, and how each one runs.

k-diffusion style samplers (Euler, Euler a, DPM++ 2M) are our own loops in sigma space
(`k_samplers`; LCM's in `lcm`); DDIM, PLMS and UniPC run the matching diffusers scheduler (UniPC on
AUTOMATIC1111's time grid, `unipc`). Combined legacy
names such as "DPM++ 2M Karras" are split into sampler + schedule wherever a name comes in.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from . import compvis_steps, dpm_solver, k_samplers, lcm, unipc
from .request import FieldError, SamplerCatalog
from .schedules import SCHEDULES, DiscreteSchedule, karras_sigmas

AUTOMATIC = "Automatic"
SDE_NOISE_BROWNIAN, SDE_NOISE_PER_STEP = "Brownian tree", "Per-step"
SDE_NOISE_CHOICES = (SDE_NOISE_BROWNIAN, SDE_NOISE_PER_STEP)


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    aliases: tuple[str, ...] = ()
    # sigma-space loop, or None for a diffusers scheduler
    k_function: Callable[..., torch.Tensor] | None = None
    # name of a diffusers scheduler class, imported when first used (keeps start-up fast)
    diffusers_class: str | None = None
    diffusers_options: dict[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    stochastic: bool = False           # draws noise while sampling (seeded per image; ENSD applies)
    discard_penultimate: bool = False  # AUTOMATIC1111's discard_next_to_last_sigma
    brownian_noise: bool = False       # SDE noise from per-image Brownian trees (unless "Per-step" is chosen)
    ddpm_only: bool = False            # a sigma-space loop that still needs a DDPM-trained model (LCM)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_schedule(self) -> bool:
        return self.k_function is not None


def _k(name: str, aliases: tuple[str, ...], function, schedule: str = "Uniform", **kw: Any) -> SamplerInfo:
    return SamplerInfo(name, aliases, function, default_schedule=schedule, **kw)


# AUTOMATIC1111's list, with the schedule "Automatic" picks for each
SAMPLERS: tuple[SamplerInfo, ...] = (
    _k("DPM++ 2M", ("k_dpmpp_2m", "dpmpp_2m"), k_samplers.sample_dpmpp_2m, "Karras"),
    _k("DPM++ SDE", ("k_dpmpp_sde", "dpmpp_sde"), k_samplers.sample_dpmpp_sde, "Karras", stochastic=True,
       brownian_noise=True),
    _k("DPM++ 2M SDE", ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), k_samplers.sample_dpmpp_2m_sde, "Exponential",
       stochastic=True, brownian_noise=True),
    _k("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"), k_samplers.sample_dpmpp_2m_sde,
       "Exponential", stochastic=True, brownian_noise=True, extra={"solver": "heun"}),
    _k("DPM++ 2S a", ("k_dpmpp_2s_a", "dpmpp_2s_ancestral"), k_samplers.sample_dpmpp_2s_ancestral, "Karras",
       stochastic=True),
    _k("DPM++ 3M SDE", ("k_dpmpp_3m_sde", "dpmpp_3m_sde"), k_samplers.sample_dpmpp_3m_sde, "Exponential",
       stochastic=True, brownian_noise=True, discard_penultimate=True),
    # AUTOMATIC1111 hands the "Sigma noise" setting to neither Euler a nor Restart: they keep s_noise 1
    _k("Euler a", ("k_euler_a", "k_euler_ancestral", "euler_ancestral"), k_samplers.sample_euler_ancestral,
       stochastic=True, extra={"s_noise": 1.0}),
    _k("Euler", ("k_euler", "euler"), k_samplers.sample_euler),
    _k("LMS", ("k_lms", "lms"), k_samplers.sample_lms),
    _k("Heun", ("k_heun", "heun"), k_samplers.sample_heun),
    _k("DPM2", ("k_dpm_2", "dpm_2"), k_samplers.sample_dpm2, "Karras", discard_penultimate=True),
    _k("DPM2 a", ("k_dpm_2_a", "dpm_2_ancestral"), k_samplers.sample_dpm2_ancestral, "Karras", stochastic=True,
       discard_penultimate=True),
    _k("Restart", ("restart",), k_samplers.sample_restart, "Karras", stochastic=True, extra={"s_noise": 1.0}),
    SamplerInfo("DDIM", ("ddim",), diffusers_class="DDIMScheduler",
                diffusers_options={"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                                   "clip_sample": False}, extra={"eta_setting": "eta_ddim", "compvis": True}),
    SamplerInfo("PLMS", ("plms",), diffusers_class="PNDMScheduler",
                diffusers_options={"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                                   "skip_prk_steps": True}, extra={"compvis": True}),
    # AUTOMATIC1111's UniPC: its settings (uni_pc_*) and time grid on diffusers' scheduler (see unipc.py)
    SamplerInfo("UniPC", ("unipc",), diffusers_class="UniPCMultistepScheduler", extra={"unipc": True}),
    # DPM-Solver between the model's smallest and largest sigma; the schedule type does not matter (dpm_solver.py)
    _k("DPM fast", ("k_dpm_fast",), dpm_solver.sample_dpm_fast, stochastic=True),
    _k("DPM adaptive", ("k_dpm_ad",), dpm_solver.sample_dpm_adaptive, stochastic=True),
    # AUTOMATIC1111's LCM: a sigma-space loop on the 50 LCM levels (see lcm.py), DDPM models only
    _k("LCM", ("lcm", "k_lcm"), lcm.sample_lcm, stochastic=True, ddpm_only=True,
       extra={"s_noise": 1.0, "eta": 1.0}),  # takes neither (nor writes them)
)

_BY_NAME = {s.name.lower(): s for s in SAMPLERS}
_BY_NAME.update({alias.lower(): s for s in SAMPLERS for alias in s.aliases})
_SCHEDULE_BY_NAME = {label.lower(): label for label in SCHEDULES}
_SCHEDULE_BY_NAME.update({api.lower(): label for label, (api, _) in SCHEDULES.items()})
_SCHEDULE_BY_NAME[AUTOMATIC.lower()] = AUTOMATIC


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_labels() -> list[str]:
    return [AUTOMATIC, *SCHEDULES]


def schedule_api_names() -> list[tuple[str, str]]:
    """(api name, label) pairs, as /sdapi/v1/schedulers lists them."""
    return [("automatic", AUTOMATIC)] + [(api, label) for label, (api, _) in SCHEDULES.items()]


class UnknownSamplerError(ValueError):
    user_facing = True


def split_legacy_name(name: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); other names unchanged."""
    stripped = name.strip()
    if stripped.lower() in _BY_NAME:
        return stripped, None
    for label in SCHEDULES:
        suffix = " " + label.lower()
        if stripped.lower().endswith(suffix) and stripped[: -len(suffix)].lower() in _BY_NAME:
            return stripped[: -len(suffix)], label
    return stripped, None


def resolve(sampler_name: str, scheduler: str = AUTOMATIC) -> tuple[SamplerInfo, str]:
    """(sampler, concrete schedule label). Raises UnknownSamplerError listing valid names."""
    base, legacy_schedule = split_legacy_name(sampler_name)
    info = _BY_NAME.get(base.lower())
    if info is None:
        raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(sampler_names())}")
    label = _SCHEDULE_BY_NAME.get((scheduler or AUTOMATIC).strip().lower())
    if label is None:
        raise UnknownSamplerError(f"unknown schedule type {scheduler!r}; choose one of: {', '.join(schedule_labels())}")
    if label == AUTOMATIC and legacy_schedule:
        label = legacy_schedule
    if label == AUTOMATIC:
        label = info.default_schedule
    return info, label


class Catalog(SamplerCatalog):
    def check(self, sampler_name: str, scheduler: str) -> list[FieldError]:
        try:
            resolve(sampler_name, AUTOMATIC)
        except UnknownSamplerError as exc:
            return [FieldError("sampler_name", str(exc))]
        if (scheduler or AUTOMATIC).strip().lower() not in _SCHEDULE_BY_NAME:
            return [FieldError("scheduler", f"unknown schedule type {scheduler!r}; "
                                            f"choose one of: {', '.join(schedule_labels())}")]
        return []


# ---- running -----------------------------------------------------------------------------------


class ModelOutput:
    """What a sampler needs from the model: predictions at sigmas or at timesteps."""

    schedule: DiscreteSchedule
    prediction_type: str

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, x_in: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def sigmas_for(info: SamplerInfo, schedule_label: str, model: DiscreteSchedule, steps: int) -> torch.Tensor:
    """The sigma schedule a k-sampler visits (AUTOMATIC1111 drops the next-to-last sigma for some)."""
    function = SCHEDULES[schedule_label][1]
    if info.discard_penultimate:
        sigmas = function(model, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return function(model, steps)


def img2img_schedule(steps: int, strength: float, exact_steps: bool = False) -> tuple[int, int]:
    """(length of the schedule, index of the first step run) for img2img, AUTOMATIC1111's way.

    Normally the schedule has `steps` steps and the last int(min(strength, .999) * steps) + 1
    run. With `exact_steps` (the hires pass), the schedule is stretched to
    int(steps / strength) so that exactly `steps` steps run.
    """
    strength = min(strength, 0.999)
    if exact_steps:
        total = int(steps / strength) if strength > 0 else steps
        return total, max(0, total - steps)
    return steps, steps - int(strength * steps) - 1


def run(info: SamplerInfo, schedule_label: str, model: ModelOutput, noise: "k_samplers.NoiseSource",
        first_noise: torch.Tensor, steps: int, scheduler_config: dict[str, Any], callback: k_samplers.StepCallback,
        generators: list[torch.Generator], init: torch.Tensor | None = None, strength: float = 1.0,
        exact_steps: bool = False, options: "k_samplers.SamplerOptions | None" = None) -> torch.Tensor:
    """Sample to a clean latent: from pure noise, or (img2img) from `init` noised to `strength`."""
    total, start = img2img_schedule(steps, strength, exact_steps) if init is not None else (steps, 0)
    if info.k_function is not None:
        # sigmas stay on the CPU: reading one never synchronises with the GPU
        lcm_levels = lcm.levels(model.schedule) if info.k_function is lcm.sample_lcm else None
        full = sigmas_for(info, schedule_label, lcm_levels or model.schedule, total)
        sigmas = full[start:]
        parameterisation = getattr(model, "parameterisation", None)
        if init is None:
            x = first_noise * float(sigmas[0])
        elif parameterisation is not None:
            x = parameterisation.noised(init, first_noise, float(sigmas[0]))
        else:
            x = init + first_noise * float(sigmas[0])
        opts = replace(options or k_samplers.SamplerOptions(), **info.extra)
        if info.brownian_noise and opts.sde_noise != SDE_NOISE_PER_STEP and hasattr(noise, "seeds"):
            # AUTOMATIC1111 spans the trees over the whole schedule, also when img2img runs only its tail
            from .brownian import BrownianNoise

            noise = BrownianNoise.for_rng(noise, full.tolist())
        kwargs = {}
        if info.k_function in (dpm_solver.sample_dpm_fast, dpm_solver.sample_dpm_adaptive) and init is None:
            # the model's own sigma range (img2img: the schedule's span)
            kwargs["span"] = (float(model.schedule.sigmas[0]), float(model.schedule.sigmas[-1]), total)
        if info.k_function is k_samplers.sample_restart:
            kwargs["karras"] = lambda n, lo, hi: karras_sigmas(n, lo, hi).tolist()
        denoise = lcm.denoiser(model, lcm_levels, lcm.skip(model.schedule)) if lcm_levels else model.denoise
        return info.k_function(denoise, x, sigmas, noise, callback, opts, **kwargs)
    if getattr(getattr(model, "parameterisation", None), "name", "") == "flow":
        raise UnknownSamplerError(f"sampler {info.name!r} runs a DDPM scheduler; flow-matching models take the "
                                  "k-diffusion samplers (Euler, Heun, DPM++ 2M, LMS ...)")
    eta = (options.eta if options is not None else 0.0) if info.extra.get("eta_setting") else None
    return _run_diffusers(info, model, first_noise, total, start, scheduler_config, callback, generators, init, eta,
                          options or k_samplers.SamplerOptions())


def steps_to_run(steps: int, init: bool, strength: float, exact_steps: bool = False) -> int:
    """How many sampler steps a run takes (for progress bars)."""
    if not init:
        return steps
    total, start = img2img_schedule(steps, strength, exact_steps)
    return total - start


def _run_diffusers(info: SamplerInfo, model: ModelOutput, first_noise: torch.Tensor, steps: int, start_step: int,
                   scheduler_config: dict[str, Any], callback: k_samplers.StepCallback,
                   generators: list[torch.Generator], init: torch.Tensor | None, eta: float | None = None,
                   options: k_samplers.SamplerOptions = k_samplers.SamplerOptions()) -> torch.Tensor:
    import diffusers

    scheduler_class = getattr(diffusers, info.diffusers_class)
    accepted = set(inspect.signature(scheduler_class.__init__).parameters)
    config = {k: v for k, v in scheduler_config.items() if k in accepted}
    config.update(info.diffusers_options)
    if info.extra.get("unipc"):
        config.update(unipc.scheduler_options(options.unipc_variant, options.unipc_order,
                                              options.unipc_lower_order_final))
    scheduler = scheduler_class.from_config(config)
    scheduler.set_timesteps(steps, device=first_noise.device)
    if info.extra.get("unipc"):
        unipc.install(scheduler, model.schedule, steps, options.unipc_skip_type)
    if info.extra.get("compvis") and init is None:  # AUTOMATIC1111's DDIM / PLMS timesteps (compvis_steps.py)
        compvis_steps.install(scheduler, steps, plms=info.name == "PLMS")
    timesteps = scheduler.timesteps
    if init is None:
        x = first_noise * scheduler.init_noise_sigma
    else:
        start = start_step * scheduler.order
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        x = scheduler.add_noise(init, first_noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        output = model.predict(x_in, t.expand(x.shape[0]))
        kwargs = {"generator": generators} if info.stochastic or eta else {}
        if eta:
            kwargs["eta"] = eta
        step = scheduler.step(output, t, x, return_dict=True, **kwargs)
        x = step.prev_sample
        denoised = getattr(step, "denoised", None)
        if denoised is None:
            denoised = getattr(step, "pred_original_sample", None)
        replaced = callback(i, x, denoised if denoised is not None else x)
        if replaced is not None:
            x = replaced
    return x
