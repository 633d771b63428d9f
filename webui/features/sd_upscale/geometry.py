"""Tiles and masks of the two SD upscale scripts, in image pixels.

Ultimate SD upscale cuts the upscaled picture into a plain grid of tile_width x tile_height
(the last row and column may run past the edge) and repaints each tile as an inpainting of the
whole picture with that tile's rectangle as the mask ("only masked", so each tile is generated at
its own resolution with `padding` pixels of context). Its seams fix repaints what lies across the
tile edges: bands (a mirrored linear ramp, 1 on the seam, 0 at the band's edges) or half-tile
offset patches (ramps across the seam) and, optionally, radial patches on the grid's corners.

AUTOMATIC1111's SD upscale instead cuts overlapping tiles of the request's size, spread evenly
(the last one flush with the edge), redraws each as a plain img2img, and blends them back over
their overlaps with linear ramps (`combine`: every pixel the weighted mean of the tiles that
cover it, each tile's weight rising from 0 over the overlap at an inner edge).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Rect:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


def grid_shape(width: int, height: int, tile_w: int, tile_h: int) -> tuple[int, int]:
    """(rows, cols) of Ultimate SD upscale's grid."""
    return math.ceil(height / tile_h), math.ceil(width / tile_w)


def tile_rect(xi: int, yi: int, tile_w: int, tile_h: int) -> Rect:
    return Rect(xi * tile_w, yi * tile_h, xi * tile_w + tile_w, yi * tile_h + tile_h)


def tile_order(rows: int, cols: int, chess: bool) -> list[tuple[int, int]]:
    """(xi, yi) in the order the redraw visits them: row by row, or chess (the "white" squares first)."""
    cells = [(xi, yi) for yi in range(rows) for xi in range(cols)]
    if not chess:
        return cells
    white = [(xi, yi) for xi, yi in cells if (xi + yi) % 2 == 0]
    return white + [cell for cell in cells if cell not in white]


def rect_mask(size: tuple[int, int], rect: Rect) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, rect.box)
    return mask


def _ramp(length: int) -> np.ndarray:
    """0 -> 1 -> 0 over `length` samples (a mirrored linear ramp)."""
    if length <= 1:
        return np.ones(max(length, 0))
    half = np.linspace(0.0, 1.0, (length + 1) // 2, endpoint=True)
    return np.concatenate([half, half[::-1][length % 2:]])


def _place(size: tuple[int, int], patch: np.ndarray, left: int, top: int) -> Image.Image:
    """A mask of `size` with the 0..1 patch pasted at (left, top), clipped to the picture."""
    width, height = size
    canvas = np.zeros((height, width))
    h, w = patch.shape
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + w, width), min(top + h, height)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return Image.fromarray(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8), "L")


def vertical_band(size: tuple[int, int], x: int, band: int) -> Image.Image:
    """Band pass: a band `band` wide centred on the vertical seam at x, the whole picture high."""
    patch = np.tile(_ramp(band)[None, :], (size[1], 1))
    return _place(size, patch, x - band // 2, 0)


def horizontal_band(size: tuple[int, int], y: int, band: int) -> Image.Image:
    patch = np.tile(_ramp(band)[:, None], (1, size[0]))
    return _place(size, patch, 0, y - band // 2)


def half_tile_row(size: tuple[int, int], xi: int, yi: int, tile_w: int, tile_h: int) -> Image.Image:
    """A tile-sized patch centred on the horizontal seam below row yi (ramps up, then down, vertically)."""
    patch = np.tile(_ramp(tile_h)[:, None], (1, tile_w))
    return _place(size, patch, xi * tile_w, yi * tile_h + tile_h // 2)


def half_tile_col(size: tuple[int, int], xi: int, yi: int, tile_w: int, tile_h: int) -> Image.Image:
    patch = np.tile(_ramp(tile_w)[None, :], (tile_h, 1))
    return _place(size, patch, xi * tile_w + tile_w // 2, yi * tile_h)


def intersection(size: tuple[int, int], xi: int, yi: int, tile_w: int, tile_h: int) -> Image.Image:
    """A radial patch (1 at the centre, 0 from the inscribed ellipse out) on the grid corner right-below tile (xi, yi)."""
    ys = (np.arange(tile_h) + 0.5) / tile_h * 2 - 1
    xs = (np.arange(tile_w) + 0.5) / tile_w * 2 - 1
    patch = np.clip(1 - np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2), 0, 1)
    return _place(size, patch, xi * tile_w + tile_w // 2, yi * tile_h + tile_h // 2)


# ---- AUTOMATIC1111's SD upscale ------------------------------------------------------------------


def split_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: evenly spread, the last flush with the end (AUTOMATIC1111's split_grid)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / max(1, tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), length - tile) for i in range(count)]


def _edge_weights(starts: list[int], tile: int, length: int) -> list[np.ndarray]:
    """Per tile along one axis: 1, ramping up from ~0 across the part shared with the tile before it."""
    weights = []
    for index, start in enumerate(starts):
        weight = np.ones(tile)
        if index > 0:
            shared = starts[index - 1] + tile - start
            if shared > 0:
                weight[:shared] = (np.arange(shared) + 1) / (shared + 1)
        if index + 1 < len(starts):
            shared = start + tile - starts[index + 1]
            if shared > 0:
                weight[tile - shared:] = np.minimum(weight[tile - shared:], (np.arange(shared)[::-1] + 1) / (shared + 1))
        weights.append(weight)
    return weights


def combine(tiles: list[list[Image.Image]], xs: list[int], ys: list[int], size: tuple[int, int]) -> Image.Image:
    """The tiles (rows of columns, placed at xs/ys) blended into one picture of `size`."""
    width, height = size
    tile_w, tile_h = tiles[0][0].size
    wx, wy = _edge_weights(xs, tile_w, width), _edge_weights(ys, tile_h, height)
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            w = (wy[row][:, None] * wx[col][None, :])[..., None]
            pixels = np.asarray(tiles[row][col].convert("RGB").resize((tile_w, tile_h)), dtype=np.float64)
            total[y:y + tile_h, x:x + tile_w] += pixels * w
            weight[y:y + tile_h, x:x + tile_w] += w
    return Image.fromarray(np.clip(total / np.maximum(weight, 1e-12) + 0.5, 0, 255).astype(np.uint8), "RGB")
