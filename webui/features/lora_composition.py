"""Combining several LoRAs without merging them: Switch and Composite.

Merging sums every LoRA into the weights at once; with characters and styles that is
where concepts bleed into each other. Following "Multi-LoRA Composition for Image
Generation" (Zhong et al., 2024), two alternatives keep each LoRA whole:
- Switch: one LoRA is active at a time, rotating every k steps.
- Composite: at every step, each LoRA's guided prediction is computed separately (its
  own text-encoder patch and conditioning) and the predictions are averaged.
Composite costs one guided UNet pass per LoRA per step; Switch costs a weight swap per k steps.
"""
from __future__ import annotations

import torch

from ..core.denoiser import CFGDenoiser, SigmaSpace
from .lora import LoraPatcher, LoraSpec


class _MultiLora(SigmaSpace):
    def __init__(self, patcher: LoraPatcher, specs: list[LoraSpec], denoisers: list[CFGDenoiser]):
        self.patcher = patcher
        self.specs = specs
        self.denoisers = denoisers
        self.schedule = denoisers[0].schedule
        self.parameterisation = denoisers[0].parameterisation
        self._step = 0

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        for denoiser in self.denoisers:
            denoiser.step = value

    def inner_denoisers(self) -> list[CFGDenoiser]:
        return [inner for denoiser in self.denoisers for inner in denoiser.inner_denoisers()]

    def _run(self, index: int, x_in: torch.Tensor, t) -> torch.Tensor:
        self.patcher.set([self.specs[index]])
        return self.denoisers[index].predict(x_in, t)


class LoraSwitchDenoiser(_MultiLora):
    def __init__(self, patcher: LoraPatcher, specs: list[LoraSpec], denoisers: list[CFGDenoiser], every: int):
        super().__init__(patcher, specs, denoisers)
        self.every = max(1, int(every))

    def active(self, step: int) -> int:
        return (step // self.every) % len(self.specs)

    def predict(self, x_in: torch.Tensor, t) -> torch.Tensor:
        return self._run(self.active(self.step), x_in, t)


class LoraCompositeDenoiser(_MultiLora):
    def predict(self, x_in: torch.Tensor, t) -> torch.Tensor:
        outputs = [self._run(index, x_in, t) for index in range(len(self.specs))]
        return torch.stack(outputs).mean(dim=0)
