"""Cross-attention per region: each region attends to its own prompt's tokens, composed by region masks.

The UNet's cross-attention layers (`attn2`) get a processor that wraps the one installed (so
IP-Adapter's keep working): it runs the wrapped processor once per region with only that
region's chunk of the text conditioning (and once for the base prompt, mixed in at the base
ratio), and adds the results through the region masks at the layer's own resolution. Masks
partition the picture, so a layer's output at each position is exactly one region's (plus the
base's share). Convolutions and self-attention still see the whole picture, so regions
influence each other near their borders: that is how the picture stays one picture.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

TOKENS_PER_CHUNK = 77


def layer_size(latent_size: tuple[int, int], tokens: int) -> tuple[int, int]:
    """A layer's (h, w) for a sequence of `tokens` positions (each UNet level halves, rounding up)."""
    h, w = latent_size
    while h * w > tokens and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != tokens:
        raise ValueError(f"no UNet level of {latent_size} has {tokens} positions")
    return h, w


@dataclass
class RegionMap:
    """What every processor shares: chunk ranges, base ratios, and masks per layer size."""

    latent_size: tuple[int, int]                           # (height, width) of the latents
    ranges: list[tuple[int, int]]                          # regions' chunk ranges, in order
    masks_at: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]  # (h, w) -> (R, h, w), base-only
    base_range: tuple[int, int] | None = None
    base_ratios: tuple[float, ...] = (0.0,)
    _cache: dict[int, tuple[int, int, torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def size_for(self, tokens: int) -> tuple[int, int]:
        return layer_size(self.latent_size, tokens)

    def masks(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if tokens not in self._cache:
            h, w = self.size_for(tokens)
            masks, base_only = self.masks_at(h, w)
            self._cache[tokens] = (h, w, masks.reshape(len(masks), h * w), None if base_only is None
                                   else base_only.reshape(h * w))
        _, _, masks, base_only = self._cache[tokens]
        return masks, base_only

    def ratio(self, region: int) -> float:
        return self.base_ratios[region] if region < len(self.base_ratios) else self.base_ratios[-1]


def _chunk(context: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    return context[:, span[0] * TOKENS_PER_CHUNK:span[1] * TOKENS_PER_CHUNK]


def regional_context(hidden_states: torch.Tensor, encoder_hidden_states: Any, spans: list[tuple[int, int]]
                     ) -> tuple[torch.Tensor, Callable[[tuple[int, int]], Any]] | None:
    """(the text tokens, span -> that span's context for the wrapped processor) for a cross-attention call that
    covers every span's chunks; None when the call must run plain (self-attention, or a shorter context).
    IP-Adapter's image tokens ride along with each span's text."""
    if encoder_hidden_states is None or hidden_states.ndim != 3:
        return None
    text, extra = encoder_hidden_states, ()
    if isinstance(encoder_hidden_states, tuple):  # (text, IP-Adapter image tokens ...)
        text, extra = encoder_hidden_states[0], tuple(encoder_hidden_states[1:])
    if text.shape[1] < max(end for _, end in spans) * TOKENS_PER_CHUNK:
        return None
    return text, lambda span: (_chunk(text, span), *extra) if extra else _chunk(text, span)


class RegionalAttnProcessor:
    def __init__(self, inner: Any, regions: RegionMap):
        self.inner = inner
        self.regions = regions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        plain = lambda context: self.inner(attn, hidden_states, encoder_hidden_states=context,  # noqa: E731
                                           attention_mask=attention_mask, temb=temb, **kwargs)
        regions = self.regions
        split = regional_context(hidden_states, encoder_hidden_states,
                                 regions.ranges + ([regions.base_range] if regions.base_range else []))
        if split is None:
            return plain(encoder_hidden_states)
        _, context = split
        masks, base_only = regions.masks(hidden_states.shape[1])
        masks = masks.to(hidden_states.device, hidden_states.dtype)
        base = plain(context(regions.base_range)) if regions.base_range is not None else None
        out = torch.zeros_like(hidden_states) if base is None else None
        for index, span in enumerate(regions.ranges):
            result = plain(context(span))
            if base is not None:
                ratio = regions.ratio(index)
                result = ratio * base + (1 - ratio) * result
            term = masks[index][None, :, None] * result
            out = term if out is None else out + term
        if base is not None and base_only is not None:
            out = out + base_only.to(out)[None, :, None] * base
        return out


@contextmanager
def regional_attention(unet, regions: Any, wrapper: Callable[[Any, Any], Any] = RegionalAttnProcessor
                       ) -> Iterator[None]:
    """The UNet's cross-attention processors wrapped for `regions` while the body runs, then put back."""
    original = dict(unet.attn_processors)
    wrapped = {name: wrapper(processor, regions) if name.endswith("attn2.processor") else processor
               for name, processor in original.items()}
    unet.set_attn_processor(wrapped)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
