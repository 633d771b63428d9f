"""ControlNet and T2I-Adapter units under tiled diffusion: each tile sees its own part of the control map.

The pass's `Controls` (features/controlnet/apply.py) hold each unit's map at the picture's full size.
While a batch of tiles is predicted, the CFG denoiser gets a copy whose maps are cut to those tiles
(the latent box times the map's pixels per latent pixel), one crop per tile, each repeated for the
images of the batch, in the order the tiles are stacked, as the extension cuts its control tensors
per tile. A T2I-Adapter's features are computed from each tile's crop (once per tile, then reused:
they do not change between steps). IP-Adapter image tokens are not spatial and stay as they are.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .tiles import Box


def crop_hint(hint: torch.Tensor, box: Box, latent_size: tuple[int, int]) -> torch.Tensor:
    """The part of a (1, C, H, W) control map under a latent box of a latent of `latent_size` (height, width)."""
    scale = hint.shape[-2] / latent_size[0]
    top, left = round(box.y * scale), round(box.x * scale)
    return hint[..., top:top + round(box.h * scale), left:left + round(box.w * scale)]


class TiledControls:
    """Per-tile copies of one pass's Controls; adapter features kept per (unit, tile)."""

    def __init__(self, latent_size: tuple[int, int]):
        self.latent_size = latent_size
        self._features: dict[tuple[int, Box], list[torch.Tensor]] = {}

    @staticmethod
    def spatial(controls: Any) -> bool:
        return bool(controls) and bool(getattr(controls, "nets", None))

    def for_boxes(self, controls: Any, boxes: list[Box], images: int) -> Any:
        """`controls` with every unit's map (or adapter features) cut to `boxes`, `images` rows per tile."""
        nets = []
        for index, app in enumerate(controls.nets):
            hint = torch.cat([crop_hint(app.hint, box, self.latent_size) for box in boxes])
            hint = hint.repeat_interleave(images, dim=0)
            features = None
            if app.features is not None:
                per_tile = [self._tile_features(index, app, box) for box in boxes]
                features = [torch.cat(level).repeat_interleave(images, dim=0) for level in zip(*per_tile)]
            nets.append(replace(app, hint=hint, features=features))
        return replace(controls, nets=nets)

    def _tile_features(self, index: int, app: Any, box: Box) -> list[torch.Tensor]:
        key = (index, box)
        if key not in self._features:
            from ..controlnet.apply import adapter_features

            self._features[key] = adapter_features(app.model, crop_hint(app.hint, box, self.latent_size), app.weight)
        return self._features[key]
