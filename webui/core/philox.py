"""The "NV" RNG source: torch.randn on an NVIDIA GPU, reproduced on the CPU.

torch's CUDA generator is cuRAND's Philox4x32-10 (Salmon et al. 2011, "Parallel random
numbers: as easy as 1, 2, 3"): for tensor element i the counter is (offset, 0, i, 0) and the
key is the 64-bit seed; ten rounds of the Philox bijection give four 32-bit words, the first
two of which become one normal number through the Box-Muller transform. Doing the same with
numpy makes GPU-made seeds reproducible on any machine.
"""
from __future__ import annotations

import numpy as np

MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
TWO_POW_MINUS_32 = np.float32(2.3283064e-10)
TWO_PI = np.float32(6.2831855)


def _mulhilo(a: np.ndarray, multiplier: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * multiplier
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """counter: (4, n) uint32, key: (2, n) uint32 -> (4, n) uint32 after ten rounds."""
    c = counter.copy()
    k = key.copy()
    for round_index in range(10):
        hi0, lo0 = _mulhilo(c[0], MULTIPLIERS[0])
        hi1, lo1 = _mulhilo(c[2], MULTIPLIERS[1])
        c = np.stack([hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0])
        if round_index < 9:
            k = np.stack([k[0] + KEY_STEPS[0], k[1] + KEY_STEPS[1]])
    return c


class PhiloxGenerator:
    """Each randn() call uses the next offset, like consecutive torch.randn calls on one CUDA generator."""

    def __init__(self, seed: int):
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        key = np.array([[self.seed & 0xFFFFFFFF], [self.seed >> 32]], dtype=np.uint32).repeat(count, axis=1)
        self.offset += 1
        words = philox4x32_10(counter, key)
        with np.errstate(over="ignore"):
            u = words[0].astype(np.float32) * TWO_POW_MINUS_32 + TWO_POW_MINUS_32 / 2
            v = words[1].astype(np.float32) * (TWO_POW_MINUS_32 * TWO_PI) + (TWO_POW_MINUS_32 * TWO_PI) / 2
        radius = np.sqrt(-2.0 * np.log(u))
        return (radius * np.sin(v)).astype(np.float32).reshape(shape)
