"""Brownian-tree noise for the SDE samplers, seeded the way AUTOMATIC1111 seeds it.

AUTOMATIC1111 gives DPM++ SDE, 2M SDE (midpoint/Heun) and 3M SDE one Brownian motion W per
image (a `torchsde.BrownianTree` over [smallest positive sigma, largest sigma] of the full
schedule, entropy = the image's seed; neither ENSD nor the variation seed enter), and a step
from sigma to sigma_next takes the normalised increment

    (W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|)

which is standard normal. Increments over overlapping intervals are correlated (DPM++ SDE
asks for the half step and then the whole step), which independent draws cannot reproduce.

torchsde draws each tree node's normals with `torch.randn` on a generator seeded from the
tree's seed sequence, on the latents' device. AUTOMATIC1111's latents live on the GPU, so its
trees use CUDA's generator whatever the "RNG source" setting says; we do the same on CUDA and
elsewhere compute those very numbers with the Philox reproduction (`philox.py`), so an SDE
image is the same on every machine and matches one made by AUTOMATIC1111 on an NVIDIA GPU.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from collections.abc import Sequence

import numpy as np
import torch

from .philox import PhiloxGenerator

_PATCH_LOCK = threading.Lock()


def _philox_randn(size, dtype, device, seed):
    """torch.randn(size, generator=cuda_generator.manual_seed(seed)) computed on the CPU."""
    numbers = PhiloxGenerator(int(seed)).randn(tuple(int(n) for n in size))
    return torch.from_numpy(numbers).to(dtype=dtype, device=device)


@contextmanager
def _cuda_numbers():
    """While inside, torchsde's node draws use the CUDA generator's numbers (computed by Philox)."""
    from torchsde._brownian import brownian_interval

    with _PATCH_LOCK:
        original = brownian_interval._randn
        brownian_interval._randn = _philox_randn
        try:
            yield
        finally:
            brownian_interval._randn = original


def _f32(value: float) -> float:
    """Sigmas as AUTOMATIC1111 hands them to the tree (float32 tensors): the tree's split points depend on them."""
    return float(np.float32(value))


class BrownianNoise:
    """A noise source for SDE steps: `between(sigma, sigma_next)`, one Brownian tree per image.

    `next()` (independent draws, for any step that is not an SDE increment) is passed on to
    the per-image streams it wraps.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: torch.device,
                 sigma_min: float, sigma_max: float, fallback=None):
        import torchsde

        self.device = torch.device(device)
        self.fallback = fallback
        self.native = self.device.type == "cuda"
        self.t0, self.t1 = _f32(sigma_min), _f32(sigma_max)
        where = self.device if self.native else torch.device("cpu")
        w0 = torch.zeros(tuple(shape), dtype=torch.float32, device=where)
        with self._numbers():
            self.trees = [torchsde.BrownianTree(self.t0, w0, self.t1, entropy=int(seed)) for seed in seeds]

    @classmethod
    def for_rng(cls, rng, sigmas: Sequence[float]) -> BrownianNoise:
        """Trees for an ImageRNG's images over the positive range of `sigmas` (the full schedule)."""
        positive = [float(s) for s in sigmas if float(s) > 0]
        return cls(rng.seeds, rng.shape, rng.device, min(positive), max(positive), fallback=rng)

    def _numbers(self):
        return _nullcontext() if self.native else _cuda_numbers()

    def next(self) -> torch.Tensor:
        if self.fallback is None:
            raise RuntimeError("this Brownian noise source has no per-step stream")
        return self.fallback.next()

    def between(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """Standard-normal increment of each image's W from sigma to sigma_next, (B, C, H, W) float32."""
        a, b = _f32(sigma), _f32(sigma_next)
        lo, hi = (a, b) if a < b else (b, a)
        sign = 1.0 if a < b else -1.0
        with self._numbers(), warnings.catch_warnings():
            # torchsde rounds the tree's ends (to its tolerance) and clamps a query just outside them, as
            # it does in AUTOMATIC1111: the warning it gives for that says nothing to our users
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees])
        scale = sign / float(np.sqrt(np.float32(abs(b - a))))
        return (w * scale).to(self.device)


@contextmanager
def _nullcontext():
    yield
