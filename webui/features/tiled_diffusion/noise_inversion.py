"""Tiled Diffusion's Noise Inversion (img2img): start from the input's own inverted noise, not a fresh draw.

What the extension does, in the engine's terms (its idea comes from AUTOMATIC1111's img2img alternative
test script): the init latents are walked *up* the noise levels of the model's uniform schedule with
`steps` Euler steps, each using the prediction for the prompt alone (no negative, no CFG; the tiled
denoiser, so the inversion is tiled too) at the step's destination level, the network told a timestep
divided by *Retouch* (a smaller timestep: the model sees less noise than there is, and sharpens). The
result, divided by the top noise level, less the init latents divided by the sampling schedule's first
level, is the noise img2img then adds to the init latents. *Renoise strength* mixes fresh noise back in
where the picture has detail (`retouch_mask`), at constant variance.

Ours where the extension's cannot be used as is: the extension is a hook on AUTOMATIC1111's sampler; here
the pass's init step is wrapped (`with_noise_inversion`). For v-prediction models we take the
parameterisation's own denoised estimate (the extension's formula skips a scaling there). The inverted
latents are not cached between jobs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core import samplers
from ...core.schedules import uniform


def retouch_mask(gray: np.ndarray, kernel: int) -> np.ndarray:
    """Where the picture has detail, in [0, 1] (the extension's self-guided filter residue, 8-bit as it casts it).

    A guided filter of the picture by itself (box `kernel`, eps 0.01) smooths it; the residue (smooth - picture)
    is taken to 8 bits the way numpy casts negative floats on x86 (wrapping), as the extension's code does."""
    import cv2

    img = gray.astype(np.float32) / 255.0
    size = (int(kernel), int(kernel))
    mean = cv2.blur(img, size)
    variance = cv2.blur(img * img, size) - mean * mean
    a = variance / (variance + 0.01)
    b = mean - a * mean
    smooth = a * img + b
    residue = np.trunc((smooth - img) * 255).astype(np.int64) % 256
    return residue.astype(np.float32) / 255.0


def renoise_weights(image: Any, kernel: int, strength: float, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) how much fresh noise each latent pixel gets: (1 - detail) x strength, clamped to [0, 1]."""
    detail = torch.from_numpy(retouch_mask(np.asarray(image.convert("L")), kernel))[None, None]
    detail = torch.nn.functional.interpolate(detail, size=size, mode="bilinear")
    return ((1 - detail) * strength).clamp(0, 1)


@torch.no_grad()
def invert(denoiser: Any, x0: torch.Tensor, steps: int, retouch: float, check: Any = None) -> torch.Tensor:
    """The init latents' noise at the schedule's top level, divided by that level (unit variance)."""
    inner = denoiser.inner_denoisers()[0]
    schedule, parameterisation = inner.schedule, inner.parameterisation
    sigmas = uniform(schedule, steps).flip(0)
    saved = inner.use_uncond, inner.cfg_scale, inner.step
    inner.use_uncond, inner.cfg_scale, inner.step = False, 1.0, 0
    x = x0
    try:
        for i in range(1, len(sigmas)):
            if check is not None:
                check()
            s = float(sigmas[i])
            t = schedule.model_timestep(s) / retouch
            denoised = parameterisation.denoised(x, s, inner.predict(parameterisation.model_input(x, s), t))
            x = x + (x - denoised) / s * (s - float(sigmas[i - 1]))
    finally:
        inner.use_uncond, inner.cfg_scale, inner.step = saved
    return x / float(sigmas[-1])


def with_noise_inversion(init: Any, args: Any) -> Any:
    """The pass's init step, after which the first noise is the init latents' inverted noise."""

    def step(run: Any, p: Any, sampling: Any) -> None:
        init(run, p, sampling)
        if sampling.init is None or sampling.result is not None:
            return
        x0 = sampling.init
        latent = invert(sampling.denoiser, x0, args.noise_inverse_steps, args.noise_inverse_retouch,
                        getattr(run.job, "check", None))
        total, _ = samplers.img2img_schedule(p.steps, p.strength if p.strength is not None else 1.0, p.exact_steps)
        schedule = sampling.denoiser.inner_denoisers()[0].schedule
        first = float(samplers.sigmas_for(p.plan.sampler, p.plan.schedule, schedule, total)[0])
        noise = latent - x0 / first
        if args.noise_inverse_renoise_strength > 0 and p.source_image is not None:
            mask = renoise_weights(p.source_image, args.noise_inverse_renoise_kernel,
                                   args.noise_inverse_renoise_strength, tuple(noise.shape[-2:])).to(noise)
            fresh = sampling.first_noise
            noise = ((1 - mask) * noise + mask * fresh) / (mask ** 2 + (1 - mask) ** 2).sqrt()
        sampling.first_noise = noise.to(sampling.first_noise)

    return step
