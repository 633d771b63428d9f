"""Where the latent tiles go and how much each tile counts where it overlaps others.

The grid rule is the Tiled Diffusion extension's: with overlap o (clamped below the tile size),
cols = ceil((W - o) / (tile - o)) tiles spread evenly from the left edge to the right edge (the
last one flush with it), likewise rows; a canvas smaller than a tile gets one tile of its own size.
MultiDiffusion weighs every tile 1 (a plain average where tiles overlap); Mixture of Diffusers
weighs each tile by a 2D Gaussian centred on it (variance 0.01 of the tile's width squared, as
in the Mixture of Diffusers paper's code), so a tile's edge counts little against its neighbours'
centres. A Foreground region is laid over the result through a feathered mask (1 inside, falling
off quadratically over `feather_ratio` of half the box's shorter side).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MULTIDIFFUSION = "MultiDiffusion"


@dataclass(frozen=True)
class Box:
    """A rectangle of the latent, in latent pixels."""

    x: int
    y: int
    w: int
    h: int

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[..., self.y:self.y + self.h, self.x:self.x + self.w]


def grid_boxes(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[Box]:
    """The tiles covering a width x height latent, row by row."""
    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    overlap = max(0, min(overlap, min(tile_w, tile_h) - 4))
    cols = max(1, math.ceil((width - overlap) / max(1, tile_w - overlap)))
    rows = max(1, math.ceil((height - overlap) / max(1, tile_h - overlap)))
    dx = (width - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (height - tile_h) / (rows - 1) if rows > 1 else 0
    return [Box(min(int(col * dx), width - tile_w), min(int(row * dy), height - tile_h), tile_w, tile_h)
            for row in range(rows) for col in range(cols)]


def splittable(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> bool:
    """More than one tile (the extension does nothing for a canvas one tile covers)."""
    return len(grid_boxes(width, height, tile_w, tile_h, overlap)) > 1


def region_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
    """A region's fractions of the canvas as latent pixels (the extension's rounding and clamping)."""
    left, top = max(0, int(x * width)), max(0, int(y * height))
    return Box(left, top, min(width - left, math.ceil(w * width)), min(height - top, math.ceil(h * height)))


def tile_weights(method: str, w: int, h: int) -> torch.Tensor:
    """(h, w) weights of one tile: ones (MultiDiffusion) or the Gaussian (Mixture of Diffusers)."""
    if method == MULTIDIFFUSION:
        return torch.ones(h, w, dtype=torch.float64)
    var = 0.01

    def probs(n: int, mid: float) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(x - mid) ** 2 / (w * w) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(probs(h, h / 2), probs(w, (w - 1) / 2))


def feather_mask(w: int, h: int, ratio: float) -> torch.Tensor:
    """(h, w): 1 inside, (distance to the nearest edge / radius)^2 within `ratio` of half the shorter side."""
    radius = int(min(w // 2, h // 2) * ratio)
    if radius <= 0:
        return torch.ones(h, w)
    ys = torch.arange(h).view(-1, 1).expand(h, w)
    xs = torch.arange(w).view(1, -1).expand(h, w)
    dist = torch.minimum(torch.minimum(ys, h - 1 - ys), torch.minimum(xs, w - 1 - xs)).float()
    return torch.where(dist >= radius, torch.ones(h, w), (dist / radius) ** 2)
