"""The UNet wrapped for samplers: classifier-free guidance and parameterisation.

`predict` returns what the UNet predicts (noise or velocity) at a timestep, combining the
unconditional and conditional passes in one batch: out = u + cfg * (c - u). `denoise`
is the same model seen from sigma space, returning the estimate of the clean latent
for x = x0 + sigma * noise, for epsilon and v-prediction models alike.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .conditioning import Conditioning
from .samplers import ModelOutput
from .schedules import DiscreteSchedule

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel


class CFGDenoiser(ModelOutput):
    def __init__(self, model: LoadedModel, cond: Conditioning, uncond: Conditioning, cfg_scale: float,
                 batch_size: int, time_ids: torch.Tensor | None = None, uncond_time_ids: torch.Tensor | None = None):
        self.model = model
        self.unet = model.unet
        self.cfg_scale = float(cfg_scale)
        self.schedule = DiscreteSchedule.from_config(model.scheduler_config)
        self.prediction_type = model.architecture.prediction_type
        self.use_uncond = self.cfg_scale != 1.0
        param = next(self.unet.parameters())
        self.device, self.dtype = param.device, param.dtype

        def batch(c: Conditioning, ids: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
            embeds = c.embeds.expand(batch_size, -1, -1)
            added = {}
            if c.pooled is not None and ids is not None:
                added = {"text_embeds": c.pooled.expand(batch_size, -1), "time_ids": ids.expand(batch_size, -1)}
            return embeds, added

        cond_embeds, cond_added = batch(cond, time_ids)
        if self.use_uncond:
            uncond_embeds, uncond_added = batch(uncond, uncond_time_ids if uncond_time_ids is not None else time_ids)
            self.embeds = torch.cat([uncond_embeds, cond_embeds])
            self.added = {k: torch.cat([uncond_added[k], cond_added[k]]) for k in cond_added}
        else:
            self.embeds, self.added = cond_embeds, cond_added
        self.embeds = self.embeds.to(self.device, self.dtype)
        self.added = {k: v.to(self.device, self.dtype) for k, v in self.added.items()}

    @torch.no_grad()
    def predict(self, x_in: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        x_model = x_in.to(self.device, self.dtype)
        if self.use_uncond:
            x_model = torch.cat([x_model, x_model])
        if isinstance(t, torch.Tensor):
            t = t.to(self.device).reshape(-1)[:1].expand(x_model.shape[0])
        else:  # a Python number: filled on the device, no host-to-device copy to wait for
            t = torch.full((x_model.shape[0],), float(t), device=self.device)
        kwargs = {"added_cond_kwargs": self.added} if self.added else {}
        out = self.unet(x_model, t, encoder_hidden_states=self.embeds, return_dict=False, **kwargs)[0].float()
        if not self.use_uncond:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.cfg_scale * (cond - uncond)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = float(sigma)
        scale_in = 1 / (s ** 2 + 1) ** 0.5
        t = float(self.schedule.sigma_to_t(torch.tensor(s)))
        out = self.predict(x * scale_in, t)
        if self.prediction_type == "v_prediction":
            return x / (s ** 2 + 1) - out * (s * scale_in)
        return x - out * s
