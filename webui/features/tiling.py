"""Seamless tiling (AUTOMATIC1111's `tiling`): a picture whose opposite edges continue each other.

Every Conv2d of the UNet (while a pass samples) and of the VAE (while the batch is decoded)
pads circularly instead of with zeros, so the network sees the picture as a torus: what
leaves on the right comes back on the left. torch's Conv2d reads its `padding_mode` on each
call, so switching the attribute is the whole patch; it is switched back when the sampling
or decoding ends, also when that ends in an error, so the shared model is never left tiled.
The engine decodes each batch before features finish it, so this feature decodes the final
latents again with the circular VAE (one extra VAE decode per batch, only when tiling is on),
before any other feature's finishing step (inpaint paste-back, face restoration) runs.
The infotext says `Tiling: True`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ContextManager, Iterator

import torch
from PIL import Image

from ..core import latents as latents_io
from ..core.pipeline import Batch, Feature, Pass, Run
from ..core.request import FieldError, GenerationRequest


@contextmanager
def circular_padding(*modules: torch.nn.Module) -> Iterator[None]:
    """Every Conv2d in `modules` pads circularly inside the block; each gets its own mode back after."""
    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, before):
            conv.padding_mode = mode


class SeamlessTiling(Feature):
    name = "tiling"

    def parse(self, request: GenerationRequest) -> tuple[bool | None, list[FieldError]]:
        return (True if request.tiling is True else None), []

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        return circular_padding(p.plan.model.unet) if run.args.get(self.name) else super().installed(run, p)

    def finish_images(self, run: Run, batch: Batch, images: list[Image.Image], latents: Any) -> list[Image.Image]:
        if not run.args.get(self.name):
            return images
        with circular_padding(run.model.vae):
            return latents_io.decode(run.model, latents)

    def infotext(self, run: Run) -> dict[str, Any]:
        return {"Tiling": True} if run.args.get(self.name) else {}
