"""Where each region is: Regional Prompter's divide ratios, or a mask painted in its colours.

Ratios (Columns mode): `1,2,1` splits left to right into 1:2:1. With `;` the picture is first cut
into rows and each row into columns: in `1,2,1,1;2,4,6` each `;` group is a row, its first number
the row's height and the rest its columns' widths. Rows mode is the same turned by 90 degrees
(columns first, then each column cut top to bottom); Flip swaps `,` and `;`. Regions are numbered
top to bottom, left to right, as the prompt's `BREAK` parts are.

Mask mode: region n is painted in HSV(hue_n, 50%, 50%), hues 0, 180, 90, 270, 45, 135 ...
(each as far from the earlier ones as possible), as Regional Prompter's mask editor paints them.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from PIL import Image

Rect = tuple[float, float, float, float]   # x0, y0, x1, y1 as fractions of the picture
MAX_REGIONS = 64
COLOUR_TOLERANCE = 12                      # per channel, for masks saved with some compression


class LayoutError(ValueError):
    pass


def _weights(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LayoutError(f"{text!r}: ratios are numbers separated by , and ;") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise LayoutError(f"{text!r}: ratios must be positive numbers")
    return values


def _cuts(weights: list[float]) -> list[tuple[float, float]]:
    total, start, out = sum(weights), 0.0, []
    for i, w in enumerate(weights):
        end = 1.0 if i == len(weights) - 1 else start + w / total
        out.append((start, end))
        start = end
    return out


def matrix_regions(ratios: str, submode: str = "Columns", flip: bool = False) -> list[Rect]:
    """The regions, in prompt order, for Regional Prompter's divide ratio."""
    text = (ratios or "").strip()
    if flip:
        text = text.replace(",", "\0").replace(";", ",").replace("\0", ";")
    if not text:
        raise LayoutError("no divide ratio")
    groups = [g for g in text.split(";")]
    if len(groups) == 1:
        lines = [(1.0, _weights(groups[0]))]
    else:
        lines = []
        for group in groups:
            values = _weights(group)
            lines.append((values[0], values[1:] or [1.0]))
    regions: list[Rect] = []
    for (top, bottom), (_, cells) in zip(_cuts([h for h, _ in lines]), lines):
        for left, right in _cuts(cells):
            regions.append((left, top, right, bottom))
    if submode == "Rows":  # the same layout turned: x and y swap
        regions = [(y0, x0, y1, x1) for x0, y0, x1, y1 in regions]
    if len(regions) > MAX_REGIONS:
        raise LayoutError(f"at most {MAX_REGIONS} regions")
    return regions


def rect_masks(regions: list[Rect], height: int, width: int) -> torch.Tensor:
    """(regions, height, width) 0/1: each cell belongs to the region holding its centre (a partition)."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    masks = []
    for x0, y0, x1, y1 in regions:
        inside_y = (ys >= y0) & ((ys < y1) | (y1 >= 1.0))
        inside_x = (xs >= x0) & ((xs < x1) | (x1 >= 1.0))
        masks.append((inside_y[:, None] & inside_x[None, :]).float())
    return torch.stack(masks)


def region_colour(n: int) -> tuple[int, int, int]:
    """Regional Prompter's colour for region n (0-based)."""
    if n == 0:
        hue = 0.0
    else:
        k = int(math.floor(math.log2(n)))
        hue = 360.0 * (2 * (n - 2 ** k) + 1) / 2 ** (k + 1)
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, 0.5, 0.5)
    return round(r * 255), round(g * 255), round(b * 255)


def painted_masks(image: Image.Image, count: int) -> np.ndarray:
    """(count, H, W) bool: where each region's colour is painted (a pixel goes to the nearest of the
    `count` colours when that one is within the tolerance; other colours belong to no region)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    colours = np.array([region_colour(n) for n in range(count)], dtype=np.int16)
    distance = np.abs(rgb[None] - colours[:, None, None]).max(-1)      # (count, H, W)
    nearest = distance.argmin(0)
    found = distance.min(0) <= COLOUR_TOLERANCE
    return np.stack([(nearest == n) & found for n in range(count)])


def mask_region_masks(painted: np.ndarray, height: int, width: int, use_base: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(region masks (R, h, w), base-only mask (h, w)) at a layer's size, by nearest sampling.

    As in Regional Prompter: unpainted cells go to the first region, or, with a base prompt,
    to the base prompt alone."""
    count, full_h, full_w = painted.shape
    ys = ((np.arange(height) + 0.5) * full_h / height).astype(int).clip(0, full_h - 1)
    xs = ((np.arange(width) + 0.5) * full_w / width).astype(int).clip(0, full_w - 1)
    small = painted[:, ys][:, :, xs]
    # a cell painted twice belongs to the later region
    owner = np.full((height, width), -1)
    for n in range(count):
        owner[small[n]] = n
    masks = torch.from_numpy(np.stack([(owner == n) for n in range(count)]).astype(np.float32))
    unpainted = torch.from_numpy((owner < 0).astype(np.float32))
    if not use_base:
        masks[0] = masks[0] + unpainted
        unpainted = torch.zeros_like(unpainted)
    return masks, unpainted
