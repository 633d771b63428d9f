"""The denoiser run tile by tile and blended, at every model call of the pass.

`tile_denoiser` replaces each CFG denoiser's `predict` (what the model predicts, guided) for
latents of the pass's size: the tiles of the grid are cut out, predicted in batches of
`tile_batch_size` tiles (the CFG denoiser's batch widened to match, its conditioning repeated),
and added into a canvas with their weights, which is then divided by the summed weights. Because
the sampler turns the prediction into the denoised estimate linearly, blending predictions is
blending the denoised tiles, as the extension does (MultiDiffusion blends denoised latents,
Mixture of Diffusers model outputs). Regions predict with their own conditioning (the image's
prompts with the region's appended); Background regions add into the canvas like tiles
(Mixture of Diffusers: with Gaussian weights over the box), Foreground regions are laid over the
result through their feathered masks. Latents of another size (a hires pass) are not tiled.
ControlNet units see their maps cut to the tiles being predicted (control.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .control import TiledControls
from .tiles import Box, feather_mask, tile_weights


@dataclass
class RegionPlan:
    box: Box
    cond: Any               # StepConditioning of the image's prompt + the region's
    uncond: Any
    foreground: bool
    feather: torch.Tensor | None = None


@dataclass
class TilePlan:
    """Everything one pass's tiling needs, in latent pixels."""

    size: tuple[int, int]                  # (height, width) of the latents it applies to
    method: str
    boxes: list[Box]                       # grid tiles (empty: only regions are drawn)
    batch: int                             # tiles per model call
    regions: list[RegionPlan] = field(default_factory=list)
    calls: int = 0                         # tiled model calls so far (tests and progress)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """(summed background weights (h, w), the grid tile's weights, each region's own weights)."""
        height, width = self.size
        total = torch.zeros(height, width, dtype=torch.float64)
        grid = tile_weights(self.method, self.boxes[0].w, self.boxes[0].h) if self.boxes else torch.ones(1, 1)
        for box in self.boxes:
            box.of(total).add_(grid)
        own: list[torch.Tensor | None] = []
        for region in self.regions:
            if region.foreground:
                own.append(None)
                continue
            weights = tile_weights(self.method, region.box.w, region.box.h)
            region.box.of(total).add_(weights)
            own.append(weights)
        return total, grid, own


def tile_denoiser(denoiser: Any, plan: TilePlan) -> None:
    """Make each CFG denoiser inside `denoiser` predict tile by tile (a denoiser edit of the pass's plan)."""
    for inner in denoiser.inner_denoisers():
        inner.predict = _tiled_predict(inner, inner.predict, plan)


def _tiled_predict(inner: Any, predict: Any, plan: TilePlan):
    total, grid, own = plan.weights()
    covered = total > 0
    divisor = torch.where(covered, total, torch.ones_like(total))
    batch_caches: dict[int, dict] = {}
    region_caches: list[dict] = [{} for _ in plan.regions]
    feathers = [feather_mask(r.box.w, r.box.h, 0.0) if r.feather is None else r.feather for r in plan.regions]
    tiled_controls = TiledControls(plan.size)

    def with_batch(boxes: list[Box], x: torch.Tensor, t: Any) -> torch.Tensor:
        """The wrapped predict on several tiles at once: the batch (and the cached conditioning) widened,
        ControlNet maps cut to the tiles."""
        size, cache, picture = inner.batch_size, inner._batches, inner.image_conditioning
        controls = getattr(inner, "controls", None)
        inner.batch_size = size * len(boxes)
        inner._batches = batch_caches.setdefault(len(boxes), {})
        if TiledControls.spatial(controls):
            inner.controls = tiled_controls.for_boxes(controls, boxes, size)
        try:
            return predict(x, t)
        finally:
            inner.batch_size, inner._batches, inner.image_conditioning = size, cache, picture
            if TiledControls.spatial(controls):
                inner.controls = controls

    def tiled(x: torch.Tensor, t: Any) -> torch.Tensor:
        if tuple(x.shape[-2:]) != plan.size:
            return predict(x, t)
        plan.calls += 1
        picture = inner.image_conditioning
        canvas = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        weights = grid.to(canvas)
        for start in range(0, len(plan.boxes), plan.batch):
            boxes = plan.boxes[start:start + plan.batch]
            if picture is not None:
                inner.image_conditioning = torch.cat([box.of(picture) for box in boxes])
            out = with_batch(boxes, torch.cat([box.of(x) for box in boxes]), t)
            for index, box in enumerate(boxes):
                box.of(canvas).add_(out[index * x.shape[0]:(index + 1) * x.shape[0]] * weights)
        over = torch.zeros_like(canvas) if any(r.foreground for r in plan.regions) else None
        over_mask = over_count = None
        for index, (region, weight, feather) in enumerate(zip(plan.regions, own, feathers)):
            out = _region_predict(inner, predict, region, x, t, picture, region_caches[index], tiled_controls)
            if not region.foreground:
                region.box.of(canvas).add_(out * weight.to(canvas))
                continue
            if over_mask is None:
                over_mask = torch.zeros(x.shape[-2:], device=x.device)
                over_count = torch.zeros(x.shape[-2:], device=x.device)
            region.box.of(over).add_(out)
            region.box.of(over_mask).add_(feather.to(over_mask))
            region.box.of(over_count).add_(1)
        out = canvas / divisor.to(canvas)
        if over is not None:
            count = over_count.clamp(min=1)
            mask = over_mask / count
            out = torch.where(over_count > 0, out * (1 - mask) + over / count * mask, out)
        return out

    return tiled


def _region_predict(inner: Any, predict: Any, region: RegionPlan, x: torch.Tensor, t: Any,
                    picture: torch.Tensor | None, cache: dict, tiled_controls: TiledControls) -> torch.Tensor:
    """One region's prediction on its box, with the region's conditioning; the denoiser's own put back after."""
    saved = inner.cond, inner.uncond, inner.use_uncond, inner._batches
    controls = getattr(inner, "controls", None)
    if TiledControls.spatial(controls):
        inner.controls = tiled_controls.for_boxes(controls, [region.box], inner.batch_size)
    single = len(region.cond.parts) == 1 and region.cond.parts[0][1] == 1.0
    inner.cond, inner.uncond, inner._batches = region.cond, region.uncond, cache
    inner.use_uncond = inner.cfg_scale != 1.0 or not single
    if picture is not None:
        inner.image_conditioning = region.box.of(picture)
    try:
        return predict(region.box.of(x).contiguous(), t)
    finally:
        inner.cond, inner.uncond, inner.use_uncond, inner._batches = saved
        inner.image_conditioning = picture
        if TiledControls.spatial(controls):
            inner.controls = controls
