"""Run an image model tile by tile so memory stays bounded, with seams blended away.

The image is cut into a grid of overlapping tiles (evenly spaced, so every overlap is at
least `overlap` pixels). Each tile's output is weighted by a ramp that is zero in the
quarter of the overlap next to the tile's edge, where the model saw zero padding instead
of the neighbouring pixels, and rises to one across the middle half; edges on the image
border get no ramp, since an untiled run sees the same border there. The weights are
normalised to sum to one per axis, and because tiles form a grid the 2-D weight is the
product of the two 1-D weights, so no weight image is needed: the output accumulates
directly. Device memory holds one tile and its activations; the CPU holds the input and
the float output.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared pixels."""
    if tile <= 0 or length <= tile:
        return [0]
    overlap = max(0, min(overlap, tile // 2))
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def tile_count(width: int, height: int, tile: int, overlap: int) -> int:
    return len(tile_starts(width, tile, overlap)) * len(tile_starts(height, tile, overlap))


def axis_weights(starts: list[int], tile: int, length: int, overlap: int, scale: int) -> list[torch.Tensor]:
    """Per tile, its normalised 1-D blending weights in output pixels (length tile*scale each)."""
    size = min(tile, length) if tile > 0 else length
    if len(starts) == 1:
        return [torch.ones(size * scale)]
    overlap = max(0, min(overlap, tile // 2))
    ramp_start = overlap * scale / 4
    ramp_len = max(overlap * scale / 2, 1.0)
    distance = torch.arange(size * scale, dtype=torch.float64) + 0.5
    raw = []
    for index, start in enumerate(starts):
        w = torch.ones(size * scale, dtype=torch.float64)
        if index > 0:  # a neighbour on the low side: fade in from this edge
            w = torch.minimum(w, ((distance - ramp_start) / ramp_len).clamp(1e-4, 1))
        if index < len(starts) - 1:  # a neighbour on the high side: fade out towards that edge
            w = torch.minimum(w, ((distance.flip(0) - ramp_start) / ramp_len).clamp(1e-4, 1))
        raw.append(w)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[start * scale:(start + size) * scale] += w
    if bool((total <= 0).any()):  # cannot happen with tile_starts' spacing; guard against misuse
        raise ValueError("tiles leave pixels without weight; use a larger overlap or tile")
    return [(w / total[s * scale:(s + size) * scale]).float() for s, w in zip(starts, raw)]


def run_tiled(fn: ModelFn, image: torch.Tensor, scale: int, tile: int, overlap: int, *,
              progress: Progress | None = None, check: Callable[[], None] | None = None,
              done_offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Apply `fn` (1xCxhxw -> 1xC'x(h*scale)x(w*scale), on whatever device) to `image` (1xCxHxW, CPU float).

    `tile` <= 0 or an image that fits in one tile runs in one piece. `progress(done, total)`
    is called after each tile (counts start at `done_offset`, out of `total`); `check()`
    before each tile may raise to stop.
    """
    _, _, height, width = image.shape
    xs = tile_starts(width, tile, overlap)
    ys = tile_starts(height, tile, overlap)
    total = total if total is not None else len(xs) * len(ys)
    if len(xs) == 1 and len(ys) == 1:
        if check:
            check()
        out = fn(image).float().cpu()
        if progress:
            progress(done_offset + 1, total)
        return out
    tile_w, tile_h = min(tile, width), min(tile, height)
    wx = axis_weights(xs, tile, width, overlap, scale)
    wy = axis_weights(ys, tile, height, overlap, scale)
    out: torch.Tensor | None = None
    done = done_offset
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            if check:
                check()
            piece = fn(image[:, :, y:y + tile_h, x:x + tile_w]).float().cpu()
            expected = (tile_h * scale, tile_w * scale)
            if tuple(piece.shape[-2:]) != expected:
                raise ValueError(f"the model returned {tuple(piece.shape[-2:])} for a tile, expected {expected}")
            if out is None:
                out = torch.zeros(1, piece.shape[1], height * scale, width * scale)
            weight = wy[j][:, None] * wx[i][None, :]
            out[:, :, y * scale:(y + tile_h) * scale, x * scale:(x + tile_w) * scale] += piece * weight
            done += 1
            if progress:
                progress(done, total)
    assert out is not None
    return out
