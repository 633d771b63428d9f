"""The UNet wrapped for samplers: classifier-free guidance and parameterisation.

`predict` returns what the UNet predicts (noise or velocity) at a timestep. The
unconditional and every conditional sub-prompt of the current step run in one batch,
and combine as AUTOMATIC1111's composable diffusion does:
    out = u + cfg * sum_i w_i * (c_i - u)
(one sub-prompt of weight 1 is plain classifier-free guidance). `denoise` is the same
model seen from sigma space: the estimate of the clean latent for x = x0 + sigma*noise,
for epsilon and v-prediction models alike. `step` is set by the sampling loop; prompt
editing and alternation pick their conditioning from it.

Features that change guidance itself (skipping the negative prompt at low noise, perturbed-
or self-attention guidance, FreeU's step window) add a `Guidance` object to the denoiser
(`add_guidance`); it may skip the unconditional half of a call, act before each model call,
and amend the guided prediction, calling the model once more through `evaluate`. With no
guidance objects nothing here changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .conditioning import Conditioning, StepConditioning, pad_to_chunks
from .hooks import StepContext
from .samplers import ModelOutput
from .parameterisation import Parameterisation
from .schedules import DiscreteSchedule

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel


FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class GuidedStep:
    """One model call as a `Guidance` sees it after classifier-free guidance."""

    x_in: torch.Tensor                  # the model's (scaled) input, one copy per image
    t: torch.Tensor | float             # the timestep
    parts: tuple[torch.Tensor, ...]     # unguided predictions per member: the negative first when `with_uncond`
    with_uncond: bool                   # whether the negative prompt was evaluated in this call
    out: torch.Tensor                   # the guided prediction so far


class Guidance:
    """Base class of what a feature adds to the CFG denoiser; every step is a no-op by default."""

    # also applies to a denoiser that takes over mid-pass (the refiner's); attention patches do not
    portable = False

    def skip_uncond(self, denoiser: "CFGDenoiser", t: torch.Tensor | float) -> bool:
        """Leave the negative prompt out of this call (its prediction is then not needed)."""
        return False

    def before_call(self, denoiser: "CFGDenoiser") -> None:
        """Just before the model runs (switch an attention patch on or off for this step)."""

    def after_cfg(self, denoiser: "CFGDenoiser", step: GuidedStep) -> torch.Tensor:
        """The guided prediction, amended (it may call `denoiser.evaluate` for a second look)."""
        return step.out


class SigmaSpace(ModelOutput):
    """Shared sigma-space view for anything that can `predict` at a timestep."""

    schedule: DiscreteSchedule
    parameterisation: Parameterisation   # the family's: what the model's output means

    @property
    def prediction_type(self) -> str:
        return self.parameterisation.name

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = float(sigma)
        t = self.schedule.model_timestep(s)
        return self.parameterisation.denoised(x, s, self.predict(self.parameterisation.model_input(x, s), t))

    def sigma_at(self, t) -> float:
        """The noise level of a (diffusers) timestep, for the VP-space `predict` paths."""
        t_value = t.reshape(-1)[:1].float().cpu() if isinstance(t, torch.Tensor) else torch.tensor([float(t)])
        return float(self.schedule.t_to_sigma(t_value)[0])

    def inner_denoisers(self) -> list["CFGDenoiser"]:
        """The CFGDenoisers doing the work (wrappers for masks and LoRA composition hold several)."""
        return [self]

    def set_image_conditioning(self, tensor: torch.Tensor | None) -> None:
        """Extra UNet input channels (inpainting models: mask + masked-image latents)."""
        for denoiser in self.inner_denoisers():
            denoiser.image_conditioning = tensor

    def set_hooks(self, hooks) -> None:
        """Extension hooks called around each UNet evaluation (before_cfg / after_cfg)."""
        for denoiser in self.inner_denoisers():
            denoiser.hooks = hooks

    def set_controls(self, controls) -> None:
        """ControlNet / IP-Adapter additions (features/controlnet/apply.py Controls)."""
        for denoiser in self.inner_denoisers():
            denoiser.controls = controls

    def set_reference(self, latents: torch.Tensor | None) -> None:
        """A reference image's clean latents (one per image of the batch) the family's denoiser sees beside
        the latents (`Family.image_reference`, e.g. Flux Kontext), passed as `reference_latents`."""
        for denoiser in self.inner_denoisers():
            denoiser.reference = latents

    def add_guidance(self, guidance: Guidance) -> None:
        """A feature's guidance change (NGMS, PAG, SAG, FreeU's step window) on every inner denoiser."""
        for denoiser in self.inner_denoisers():
            denoiser.guidance.append(guidance)

    def set_guidance(self, rescale: float = 0.0, start: float = 0.0, end: float = 1.0, total_steps: int = 1) -> None:
        """CFG rescale phi, and the fraction of the steps [start, end] in which CFG applies."""
        for denoiser in self.inner_denoisers():
            denoiser.cfg_rescale, denoiser.cfg_interval = rescale, (start, end)
            denoiser.total_steps = max(1, total_steps)


class CFGDenoiser(SigmaSpace):
    def __init__(self, model: "LoadedModel", cond: StepConditioning, uncond: StepConditioning, cfg_scale: float,
                 batch_size: int, empty: Conditioning, time_ids: torch.Tensor | None = None,
                 uncond_time_ids: torch.Tensor | None = None):
        self.model = model
        self.unet = model.unet
        self.cond = cond
        self.uncond = uncond
        self.empty = empty
        self.cfg_scale = float(cfg_scale)
        self.batch_size = batch_size
        self.family = model.architecture.adapter
        self.schedule = self.family.noise_schedule(model.scheduler_config)
        self.parameterisation = self.family.parameterisation(model.architecture.prediction_type)
        single = len(cond.parts) == 1 and cond.parts[0][1] == 1.0
        self.use_uncond = self.cfg_scale != 1.0 or not single
        param = next(self.unet.parameters())
        # the compute type: the weights' own, unless they are stored in fp8 (cast per layer as it runs)
        # offloaded weights wait in system memory: inputs go where the model runs (its hooks move it there)
        self.device = param.device if getattr(model, "memory_mode", "Resident") == "Resident" else model.device.device
        # (or quantized: GGUF blocks are bytes, dequantized per layer in the compute type)
        # (or stored in another type: fp16 weights computing in fp32 on the CPU, loader.storage_dtype)
        stored = getattr(model, "weight_storage", "Automatic") != "Automatic"
        self.dtype = model.device.dtype if stored or param.dtype in FP8_TYPES or not param.is_floating_point() \
            else param.dtype
        self.time_ids, self.uncond_time_ids = time_ids, uncond_time_ids if uncond_time_ids is not None else time_ids
        self.step = 0
        self.image_conditioning: torch.Tensor | None = None
        self.hooks = None
        self.cfg_rescale = 0.0
        self.cfg_interval = (0.0, 1.0)
        self.controls = None  # ControlNet / IP-Adapter additions (features/controlnet/apply.py)
        self.reference: torch.Tensor | None = None  # a reference image's latents (set_reference)
        self.total_steps = 1
        self.guidance: list[Guidance] = []  # features' guidance changes (`Guidance`), in order
        self.calls = 0  # model calls so far (AUTOMATIC1111's CFGDenoiser.step: NGMS alternates on it)
        self._batches: dict[tuple, tuple[torch.Tensor, dict, list[float]]] = {}

    def set_conditioning(self, cond: StepConditioning) -> None:
        """Replace the positive conditioning (a feature's own, e.g. PhotoMaker's fused face tokens)."""
        self.cond = cond
        self.use_uncond = self.cfg_scale != 1.0 or not (len(cond.parts) == 1 and cond.parts[0][1] == 1.0)
        self._batches.clear()

    def _batch_for_step(self, skip_uncond: bool = False) -> tuple[torch.Tensor, dict, list[float]]:
        conds = self.cond.at(self.step)
        members: list[tuple[Conditioning, torch.Tensor | None]] = []
        if self.use_uncond and not skip_uncond:
            members.append((self.uncond.at(self.step)[0][0], self.uncond_time_ids))
        members += [(c, self.time_ids) for c, _ in conds]
        key = tuple(id(c) for c, _ in members)
        if key not in self._batches:
            chunks = max(c.chunks for c, _ in members)
            b = self.batch_size
            embeds = torch.cat([pad_to_chunks(c, chunks, self.empty).embeds.expand(b, -1, -1) for c, _ in members])
            pooled = extra = None
            if members[0][0].pooled is not None:
                pooled = torch.cat([c.pooled.expand(b, -1) for c, _ in members]).to(self.device, self.dtype)
            if members[0][1] is not None:
                extra = torch.cat([ids.expand(b, -1) for _, ids in members]).to(self.device, self.dtype)
            self._batches[key] = (embeds.to(self.device, self.dtype), self.family.denoiser_kwargs(pooled, extra),
                                  [w for _, w in conds])
        return self._batches[key]

    @torch.no_grad()
    def predict(self, x_in: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        skip = self.use_uncond and any(g.skip_uncond(self, t) for g in self.guidance)
        with_uncond = self.use_uncond and not skip
        for guidance in self.guidance:
            guidance.before_call(self)
        embeds, added, weights = self._batch_for_step(skip)
        copies = embeds.shape[0] // x_in.shape[0]
        x_model = x_in.to(self.device, self.dtype)
        if self.image_conditioning is not None:
            x_model = torch.cat([x_model, self.image_conditioning.to(self.device, self.dtype)], dim=1)
        if copies > 1:
            x_model = x_model.repeat(copies, 1, 1, 1)
        latent_channels = x_in.shape[1]
        if isinstance(t, torch.Tensor):
            t = t.to(self.device).reshape(-1)[:1].expand(x_model.shape[0])
        else:  # a Python number: filled on the device, no host-to-device copy to wait for
            t = torch.full((x_model.shape[0],), float(t), device=self.device)
        kwargs = dict(added)
        if self.reference is not None:
            kwargs["reference_latents"] = self.reference.to(self.device, self.dtype).repeat(copies, 1, 1, 1)
        step = None
        if self.hooks is not None and (self.hooks.has("before_cfg") or self.hooks.has("after_cfg")):
            step = StepContext(index=self.step, timestep=t, x=x_model, embeds=embeds, cfg_scale=self.cfg_scale)
            self.hooks.call("before_cfg", step=step)
            x_model, embeds = step.x, step.embeds
        if self.controls:
            kwargs.update(self.controls.unet_kwargs(self.step / self.total_steps, x_model[:, :latent_channels], t,
                                                    embeds, added.get("added_cond_kwargs", {}), copies,
                                                    with_uncond))
        out = self.family.call_denoiser(self.unet, x_model, t, embeds, kwargs).float()
        parts = (out,)
        if with_uncond:
            parts = out.chunk(copies)
            uncond = parts[0]
            scale = self.cfg_scale if self._guidance_active() else 1.0
            guided = sum(w * (c - uncond) for w, c in zip(weights, parts[1:]))
            out = uncond + scale * guided
            if self.cfg_rescale > 0 and scale != 1.0:
                out = self._rescale(out, uncond + guided)
        elif skip:  # AUTOMATIC1111's combination without the negative: around the last sub-prompt, at scale 1
            parts = out.chunk(copies)
            out = parts[-1] + sum(w * (c - parts[-1]) for w, c in zip(weights, parts))
        for guidance in self.guidance:
            out = guidance.after_cfg(self, GuidedStep(x_in, t, parts, with_uncond, out))
        self.calls += 1
        if step is not None:
            step.prediction = out
            self.hooks.call("after_cfg", step=step)
            out = step.prediction
        return out

    @torch.no_grad()
    def evaluate(self, x_in: torch.Tensor, t: torch.Tensor | float, negative: bool = False,
                 options: dict | None = None) -> torch.Tensor:
        """One more, unguided model call at `x_in`: the first positive sub-prompt's prediction (or the negative's).

        For guidance that takes a second look within a step (PAG with perturbed attention, SAG on a
        blurred input). ControlNet and IP-Adapter additions apply as in the main call; `options` are further
        keyword arguments of the denoiser call (Skip Layer Guidance's `skip_layers`).
        """
        conditioning = (self.uncond if negative else self.cond).at(self.step)[0][0]
        ids = self.uncond_time_ids if negative else self.time_ids
        key = ("single", id(conditioning), negative)
        if key not in self._batches:
            b = self.batch_size
            embeds = conditioning.embeds.expand(b, -1, -1).to(self.device, self.dtype)
            pooled = None if conditioning.pooled is None else conditioning.pooled.expand(b, -1).to(self.device,
                                                                                                 self.dtype)
            extra = None if ids is None else ids.expand(b, -1).to(self.device, self.dtype)
            self._batches[key] = (embeds, self.family.denoiser_kwargs(pooled, extra), [1.0])
        embeds, added, _ = self._batches[key]
        x_model = x_in.to(self.device, self.dtype)
        if self.image_conditioning is not None:
            x_model = torch.cat([x_model, self.image_conditioning.to(self.device, self.dtype)], dim=1)
        if isinstance(t, torch.Tensor):
            t = t.to(self.device).reshape(-1)[:1].expand(x_model.shape[0])
        else:
            t = torch.full((x_model.shape[0],), float(t), device=self.device)
        kwargs = dict(added)
        if self.reference is not None:
            kwargs["reference_latents"] = self.reference.to(self.device, self.dtype)
        if self.controls:
            kwargs.update(self.controls.unet_kwargs(self.step / self.total_steps, x_model[:, :x_in.shape[1]], t, embeds,
                                                    added.get("added_cond_kwargs", {}), 1, negative))
        kwargs.update(options or {})
        return self.family.call_denoiser(self.unet, x_model, t, embeds, kwargs).float()

    def _guidance_active(self) -> bool:
        start, end = self.cfg_interval
        if start <= 0 and end >= 1:
            return True
        fraction = self.step / self.total_steps
        return start <= fraction <= end

    def _rescale(self, guided: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        return rescale_guidance(guided, conditional, self.cfg_rescale)


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023, eq. 15-16: match the guided prediction's std to the conditional one's, mix by phi."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


class MaskedDenoiser(SigmaSpace):
    """Inpainting with an ordinary checkpoint: outside the mask, steer every step to the original.

    AUTOMATIC1111 blends the denoised estimate with the original latents through the mask
    after every model call; in sigma space that is exactly what `denoise` does. For
    diffusers schedulers (VP space), `predict` returns, outside the mask, the prediction
    that would lead to the original latents - the same blend expressed as noise or velocity.
    """

    def __init__(self, inner: SigmaSpace, init_latent: torch.Tensor, change_mask: torch.Tensor):
        self.inner = inner
        self.init = init_latent
        self.change = change_mask
        self.keep = 1 - change_mask
        self.schedule = inner.schedule
        self.parameterisation = inner.parameterisation

    @property
    def step(self) -> int:
        return self.inner.step

    @step.setter
    def step(self, value: int) -> None:
        self.inner.step = value

    def inner_denoisers(self) -> list["CFGDenoiser"]:
        return self.inner.inner_denoisers()

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.init * self.keep + self.inner.denoise(x, sigma) * self.change

    def predict(self, x_in: torch.Tensor, t) -> torch.Tensor:
        out = self.inner.predict(x_in, t)
        target = self.parameterisation.output_for_clean(x_in, self.sigma_at(t), self.init)
        return target * self.keep + out * self.change
