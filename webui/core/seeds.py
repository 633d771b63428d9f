"""Seeds and noise with AUTOMATIC1111's semantics.

Each image owns a random generator seeded with its seed. Its first draw is the initial
latent noise; later draws (ancestral and SDE samplers) continue the same stream. So
image i of a batch is the same image you get by generating seed+i alone, whatever the
batch size. Noise is drawn on the CPU by default, so a seed gives the same image on any
machine; the device the model runs on does not matter.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int) -> int:
    """-1 means random; the chosen value is what gets recorded."""
    return random.randrange(MAX_SEED) if seed is None or seed < 0 else int(seed)


def image_seeds(seed: int, count: int) -> list[int]:
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


class ImageRNG:
    """Per-image noise streams for one batch, in latent shape (C, H, W)."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], device: torch.device):
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.device = device
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in self.seeds]

    def _draw(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators])
        if self.device.type == "cuda":
            # pinned memory lets the copy run asynchronously instead of stalling the GPU queue
            return noise.pin_memory().to(self.device, non_blocking=True)
        return noise.to(self.device)

    def first(self) -> torch.Tensor:
        """Initial latent noise; call once, before `next`."""
        return self._draw()

    def next(self) -> torch.Tensor:
        """Further noise for ancestral/SDE steps, continuing each image's stream."""
        return self._draw()
