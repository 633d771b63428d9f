"""What a denoiser's output means, so samplers and masks need not know the family.

Samplers work in sigma space (x = x0 + sigma * noise, the k-diffusion convention); diffusers
schedulers and the inpainting masks' VP-space path work with the model's scaled input
x_in = x * alpha(sigma). A family adapter (`Family.parameterisation`) picks the object that
converts between the model's prediction and the clean-latent estimate:

    VP epsilon:  the model predicts the noise           x0 = x - sigma * eps
    VP velocity: the model predicts v = a*eps - s*x0     (SD 2.x 768-v, zero-terminal-SNR models)

A flow-matching family (x = (1 - s) * x0 + s * noise, model predicts noise - x0) supplies its
own object with the same four methods; nothing in the samplers or masks changes.
"""
from __future__ import annotations

from typing import Protocol

import torch


def sigma_scale_in(sigma: float) -> float:
    """alpha(sigma) = sqrt(alphas_cumprod): the VP model's input scale at this noise level."""
    return 1 / (sigma ** 2 + 1) ** 0.5


class Parameterisation(Protocol):
    name: str

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's input for the sigma-space latent x."""
        ...

    def denoised(self, x: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        """Clean-latent estimate from the model's output, x in sigma space."""
        ...

    def clean_from_output(self, x_in: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        """Clean-latent estimate from the model's output, x_in the model's (scaled) input."""
        ...

    def output_for_clean(self, x_in: torch.Tensor, sigma: float, clean: torch.Tensor) -> torch.Tensor:
        """The output that would lead from x_in to `clean`: a mask's target expressed as a prediction."""
        ...


class VPEpsilon:
    """DDPM-trained models that predict the noise (SD 1.x, SD 2.x base, SDXL)."""

    name = "epsilon"

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x * sigma_scale_in(sigma)

    def denoised(self, x: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        return x - out * sigma

    def clean_from_output(self, x_in: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        alpha, noise_level = sigma_scale_in(sigma), sigma * sigma_scale_in(sigma)  # sqrt(ab), sqrt(1-ab)
        return (x_in - noise_level * out) / alpha

    def output_for_clean(self, x_in: torch.Tensor, sigma: float, clean: torch.Tensor) -> torch.Tensor:
        alpha, noise_level = sigma_scale_in(sigma), sigma * sigma_scale_in(sigma)
        return (x_in - alpha * clean) / noise_level


class VPVelocity(VPEpsilon):
    """DDPM-trained models that predict the velocity v = alpha * eps - sigma_vp * x0."""

    name = "v_prediction"

    def denoised(self, x: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        return x / (sigma ** 2 + 1) - out * (sigma * sigma_scale_in(sigma))

    def clean_from_output(self, x_in: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        alpha, noise_level = sigma_scale_in(sigma), sigma * sigma_scale_in(sigma)
        return alpha * x_in - noise_level * out

    def output_for_clean(self, x_in: torch.Tensor, sigma: float, clean: torch.Tensor) -> torch.Tensor:
        alpha, noise_level = sigma_scale_in(sigma), sigma * sigma_scale_in(sigma)
        eps = (x_in - alpha * clean) / noise_level
        return alpha * eps - noise_level * clean


VP_PARAMETERISATIONS: dict[str, Parameterisation] = {"epsilon": VPEpsilon(), "v_prediction": VPVelocity()}
