"""Seeds and noise with AUTOMATIC1111's semantics.

Each image owns a random generator seeded with its seed. Its first draw is the initial
latent noise; later draws (ancestral and SDE samplers) continue the same stream. So image
i of a batch is the same image you get by generating seed+i alone, whatever the batch size.

- RNG source: "CPU" (default: the same seed gives the same image on any machine), "GPU"
  (the model device's generator, as AUTOMATIC1111's default), "NV" (the CUDA generator's
  numbers, computed on the CPU).
- Variation seed: the initial noise is the spherical interpolation (slerp) of the seed's
  noise and the variation seed's noise, by the variation strength (0 = seed, 1 = variation),
  per (channel, column) vector as AUTOMATIC1111 computes it.
- Resize seed from W x H: the noise is generated at that size and placed in the middle of
  the new size, so a picture keeps its composition when the size changes.
- ENSD (eta noise seed delta): the noise drawn while sampling comes from seed + ENSD.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from .philox import PhiloxGenerator

MAX_SEED = 2**32 - 1
RNG_SOURCES = ("CPU", "GPU", "NV")


def resolve_seed(seed: int) -> int:
    """-1 means random; the chosen value is what gets recorded."""
    return random.randrange(MAX_SEED) if seed is None or seed < 0 else int(seed)


def image_seeds(seed: int, count: int) -> list[int]:
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


class _Stream:
    """One image's random numbers on the chosen source."""

    def __init__(self, seed: int, source: str, device: torch.device):
        self.source = source
        self.device = device
        if source == "NV":
            self.philox = PhiloxGenerator(seed)
        else:
            where = device if source == "GPU" and device.type in ("cuda", "mps") else torch.device("cpu")
            self.generator = torch.Generator(where).manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.source == "NV":
            return torch.from_numpy(self.philox.randn(shape))
        return torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two (C, H, W) noise tensors (strength 0 = low, 1 = high).

    As AUTOMATIC1111 does it: each (channel, column) vector along H is interpolated on its own
    (norms and angles taken over dim 1), falling back to a linear mix when the two are nearly
    parallel on average.
    """
    if strength <= 0:
        return low
    if strength >= 1:
        return high
    a, b = low.double(), high.to(low.device).double()
    cos = ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(1)
    if cos.mean() > 0.9995:
        return (a * (1 - strength) + b * strength).to(low.dtype)
    omega = torch.acos(cos.clamp(-1, 1))
    so = torch.sin(omega)
    weight_low = (torch.sin((1 - strength) * omega) / so).unsqueeze(1)
    weight_high = (torch.sin(strength * omega) / so).unsqueeze(1)
    mixed = weight_low * a + weight_high * b
    return mixed.to(low.dtype)


class ImageRNG:
    """Per-image noise streams for one batch, in latent shape (C, H, W)."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], device: torch.device, *,
                 subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                 resize_from: tuple[int, int] | None = None, source: str = "CPU", ensd: int = 0):
        if source not in RNG_SOURCES:
            raise ValueError(f"RNG source must be one of {', '.join(RNG_SOURCES)}")
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.device = device
        self.source = source
        self.subseeds = list(subseeds or [])
        self.subseed_strength = subseed_strength
        self.resize_from = resize_from  # latent (height, width) the noise was originally made at
        self.ensd = ensd
        self.streams = [_Stream(s, source, device) for s in self.seeds]
        self._step_streams = ([_Stream(s + ensd, source, device) for s in self.seeds] if ensd else self.streams)

    @property
    def generators(self) -> list[torch.Generator]:
        """Generators for diffusers schedulers' own noise (CPU/GPU sources)."""
        return [getattr(s, "generator", torch.Generator().manual_seed(seed))
                for s, seed in zip(self._step_streams, self.seeds)]

    def _noise(self, index: int) -> torch.Tensor:
        """AUTOMATIC1111's order: the seed's (and variation seed's) noise at the resize-from size, mixed,
        then pasted into the middle of this image's first full-size draw (its stream goes on from there)."""
        seed, stream = self.seeds[index], self.streams[index]
        resized = bool(self.resize_from) and tuple(self.resize_from) != self.shape[1:]
        noise_shape = (self.shape[0], *self.resize_from) if resized else self.shape
        noise = _Stream(seed, self.source, self.device).randn(noise_shape) if resized else stream.randn(self.shape)
        if self.subseed_strength and self.subseeds:
            subseed = self.subseeds[index % len(self.subseeds)]
            sub = _Stream(subseed, self.source, self.device).randn(noise_shape)
            noise = slerp(self.subseed_strength, noise.to(sub.device), sub)
        if resized:
            big = stream.randn(self.shape)
            noise = _paste_centered(big, noise.to(big.device))
        return noise

    def _draw(self, noises: list[torch.Tensor]) -> torch.Tensor:
        noise = torch.stack([n.to("cpu") if n.device.type != self.device.type else n for n in noises])
        if noise.device.type == "cpu" and self.device.type == "cuda":
            # pinned memory lets the copy run asynchronously instead of stalling the GPU queue
            return noise.pin_memory().to(self.device, non_blocking=True)
        return noise.to(self.device)

    def first(self) -> torch.Tensor:
        """Initial latent noise; call once, before `next`."""
        return self._draw([self._noise(i) for i in range(len(self.seeds))])

    def next(self) -> torch.Tensor:
        """Further noise for ancestral/SDE steps, continuing each image's stream."""
        return self._draw([stream.randn(self.shape) for stream in self._step_streams])


def _paste_centered(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Put `source` (C, h, w) in the middle of `target` (C, H, W), cropping whichever is larger."""
    result = target.clone()
    _, H, W = target.shape
    _, h, w = source.shape
    ty, tx = max((H - h) // 2, 0), max((W - w) // 2, 0)
    sy, sx = max((h - H) // 2, 0), max((w - W) // 2, 0)
    ch, cw = min(h, H), min(w, W)
    result[:, ty:ty + ch, tx:tx + cw] = source[:, sy:sy + ch, sx:sx + cw]
    return result
