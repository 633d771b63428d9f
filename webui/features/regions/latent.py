"""Regional Prompter's Latent mode: one guided UNet prediction per region, composed by the region masks.

Each CFG denoiser of the pass predicts once per region with that region's prompt and negative
(and once with the base prompt, mixed in at the base ratio), and the predictions are added
through the region masks at the latents' size. So in any one model evaluation a region's
prediction depends on its own prompt only; over several steps the latents of the other regions
still reach it through the UNet's receptive field. It costs one UNet call per region and step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def latent_couple(denoiser: Any, pairs: list[tuple[Any, Any]], base: tuple[Any, Any] | None,
                  masks_at: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]],
                  base_ratios: tuple[float, ...]) -> None:
    """Make each CFGDenoiser inside `denoiser` predict per region (a denoiser edit of the pass's plan)."""
    for inner in denoiser.inner_denoisers():
        inner.predict = _regional_predict(inner, inner.predict, pairs, base, masks_at, base_ratios)


def _regional_predict(inner, predict, pairs, base, masks_at, base_ratios):
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def with_prompts(x, t, cond, uncond):
        inner.uncond = uncond
        inner.set_conditioning(cond)
        return predict(x, t)

    def regional(x: torch.Tensor, t) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if size not in cache:
            cache[size] = masks_at(*size)
        masks, base_only = cache[size]
        base_out = with_prompts(x, t, *base) if base is not None else None
        out = None
        for index, (cond, uncond) in enumerate(pairs):
            result = with_prompts(x, t, cond, uncond)
            if base_out is not None:
                ratio = base_ratios[index] if index < len(base_ratios) else base_ratios[-1]
                result = ratio * base_out + (1 - ratio) * result
            term = masks[index].to(result)[None, None] * result
            out = term if out is None else out + term
        if base_out is not None and base_only is not None:
            out = out + base_only.to(out)[None, None] * base_out
        return out

    return regional
