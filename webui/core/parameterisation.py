"""What a denoiser's output means, so samplers and masks need not know the family.

Samplers work in sigma space (x = x0 + sigma * noise, the k-diffusion convention); diffusers
schedulers and the inpainting masks' VP-space path work with the model's scaled input
x_in = x * alpha(sigma). A family adapter (`Family.parameterisation`) picks the object that
converts between the model's prediction and the clean-latent estimate:

    VP epsilon:  the model predicts the noise           x0 = x - sigma * eps
    VP velocity: the model predicts v = a*eps - s*x0     (SD 2.x 768-v, zero-terminal-SNR models)

    Flow velocity: x = (1 - s) * x0 + s * noise, s in [0, 1]; the model predicts v = noise - x0
                 (rectified flow: Flux, SD 3). Sigma *is* s and the samplers walk it directly,
                 as ComfyUI and Forge do: with denoised = x - s * v, Euler's step
                 x + (x - denoised) / s * (s' - s) is exactly the flow ODE's Euler step.

`noised` puts an image at a noise level (img2img's start): x0 + s * noise in sigma space, or
(1 - s) * x0 + s * noise for flow.
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

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """The sampler's latent for `clean` at noise level sigma (img2img's start)."""
        ...


class VPEpsilon:
    """DDPM-trained models that predict the noise (SD 1.x, SD 2.x base, SDXL)."""

    name = "epsilon"

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return clean + noise * sigma

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


class FlowVelocity:
    """Rectified-flow models that predict the velocity v = noise - x0 (Flux, SD 3).

    The samplers' latent is the model's input (no scaling) and sigma is the flow time s."""

    name = "flow"

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return clean * (1 - sigma) + noise * sigma

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x

    def denoised(self, x: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        return x - out * sigma

    def clean_from_output(self, x_in: torch.Tensor, sigma: float, out: torch.Tensor) -> torch.Tensor:
        return x_in - out * sigma

    def output_for_clean(self, x_in: torch.Tensor, sigma: float, clean: torch.Tensor) -> torch.Tensor:
        return (x_in - clean) / max(sigma, 1e-6)


VP_PARAMETERISATIONS: dict[str, Parameterisation] = {"epsilon": VPEpsilon(), "v_prediction": VPVelocity()}
