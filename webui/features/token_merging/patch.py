"""Token merging installed on a UNet with forward hooks, for one pass's sampling, and removed after.

Nothing of diffusers is replaced: the UNet's own `BasicTransformerBlock`s and attention modules run
as they are. Hooks only change what flows through them:

- a forward pre-hook on the UNet records the latent size of the call (h, w);
- a forward pre-hook on each transformer block finds its token grid (the latent size divided by
  1, 2, 4 or 8: its downsample level) and, in blocks downsampled by at most `max_downsample`, matches
  the block's input tokens (`matching.bipartite_matching`);
- pre-hooks on the chosen layers (self-attention by default; cross-attention and the MLP on request,
  as the paper allows) merge their input tokens, and forward hooks unmerge their output, so the
  block's residual additions see all N tokens.

The removable handles are kept and removed in `finally`, so the shared model is left as it was
even when sampling fails or is interrupted.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .matching import Merge, bipartite_matching

DOWNSAMPLES = (1, 2, 4, 8)


@dataclass(frozen=True)
class MergeOptions:
    ratio: float                 # share of a block's tokens merged away (0-0.9)
    max_downsample: int = 1      # merge in blocks whose grid is the latent's / at most this (the paper's 1)
    random: bool = True          # a random destination per 2x2 cell (False: always the cell's first token)
    seed: int = 0                # the destination grids' generator
    self_attention: bool = True  # the paper's default: merge before self-attention only
    cross_attention: bool = False
    mlp: bool = False


def transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's transformer blocks (modules with attn1 / attn2 / ff, as diffusers' BasicTransformerBlock)."""
    from diffusers.models.attention import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def block_grid(latent: tuple[int, int], tokens: int) -> tuple[int, int, int] | None:
    """(downsample, grid height, grid width) of a block with `tokens` tokens in a UNet called at `latent`."""
    h, w = latent
    for down in DOWNSAMPLES:
        gh, gw = math.ceil(h / down), math.ceil(w / down)
        if gh * gw == tokens:
            return down, gh, gw
    return None


def transformer_levels(unet: torch.nn.Module) -> set[int]:
    """The downsample levels that have transformer blocks (SD 1.x/2.x: 1, 2, 4 (+8 mid); SDXL: 2, 4)."""
    levels: set[int] = set()
    down = 1
    for block in unet.down_blocks:
        if getattr(block, "attentions", None):
            levels.add(down)
        if getattr(block, "downsamplers", None):
            down *= 2
    if getattr(unet.mid_block, "attentions", None):
        levels.add(down)
    return levels


class TokenMerging:
    """The hooks for one UNet; `installed()` is the context during which they are on."""

    def __init__(self, unet: torch.nn.Module, options: MergeOptions):
        self.unet, self.options = unet, options
        self.latent: tuple[int, int] | None = None
        self.merges: dict[int, Merge | None] = {}
        self.generator = torch.Generator().manual_seed(options.seed) if options.random else None
        self.merged_calls = 0  # block calls that merged tokens (the log and tests read it)

    @contextmanager
    def installed(self) -> Iterator["TokenMerging"]:
        handles = [self.unet.register_forward_pre_hook(self._unet_call, with_kwargs=True)]
        try:
            for block in transformer_blocks(self.unet):
                handles.append(block.register_forward_pre_hook(self._block_call, with_kwargs=True))
                handles.append(block.register_forward_hook(self._block_done))
                layers = [(self.options.self_attention, block.attn1),
                          (self.options.cross_attention, getattr(block, "attn2", None)),
                          (self.options.mlp, block.ff)]
                for on, layer in layers:
                    if on and layer is not None:
                        handles.append(layer.register_forward_pre_hook(self._merge_input(block), with_kwargs=True))
                        handles.append(layer.register_forward_hook(self._unmerge_output(block)))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.merges.clear()

    def _unet_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.latent = (sample.shape[-2], sample.shape[-1])

    def _block_call(self, block: Any, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        merge = None
        grid = block_grid(self.latent, hidden.shape[1]) if self.latent is not None and hidden.ndim == 3 else None
        if grid is not None and grid[0] <= self.options.max_downsample:
            merge = bipartite_matching(hidden, grid[1], grid[2], self.options.ratio, self.generator)
            self.merged_calls += merge is not None
        self.merges[id(block)] = merge

    def _block_done(self, block: Any, args: tuple, output: Any) -> None:
        self.merges.pop(id(block), None)

    def _merge_input(self, block: Any) -> Callable[..., Any]:
        def hook(layer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            merge = self.merges.get(id(block))
            if merge is None:
                return None
            if args:
                return (merge.merge(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": merge.merge(kwargs["hidden_states"])}
        return hook

    def _unmerge_output(self, block: Any) -> Callable[..., Any]:
        def hook(layer: Any, args: tuple, output: Any) -> Any:
            merge = self.merges.get(id(block))
            return None if merge is None else merge.unmerge(output)
        return hook
