"""Bipartite soft matching on a grid of image tokens (Bolya & Hoffman 2023, "Token Merging for Fast
Stable Diffusion"), written from the paper's description.

The tokens of one transformer block are an h x w grid (row-major). In every 2x2 cell one token is a
*destination* (chosen at random with a seeded generator, or the cell's first token); all the others
are *sources*. Each source finds its most similar destination (cosine similarity of the block's
input tokens), and the `r` sources with the best matches are averaged into their destinations, so
the layer that follows sees N - r tokens. Unmerging gives every merged source its destination's
output back, so the block's output keeps all N tokens. Tokens outside whole 2x2 cells (an odd row
or column) are always sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def destination_mask(height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """(height * width,) bools: one destination per whole 2x2 cell, at random when a generator is given."""
    cells_h, cells_w = height // 2, width // 2
    if generator is None:
        pick = torch.zeros(cells_h, cells_w, dtype=torch.long)
    else:
        pick = torch.randint(4, (cells_h, cells_w), generator=generator)  # a CPU generator: same grid everywhere
    mask = torch.zeros(height, width, dtype=torch.bool)
    rows = torch.arange(cells_h)[:, None] * 2 + pick // 2
    cols = torch.arange(cells_w)[None, :] * 2 + pick % 2
    mask[rows, cols] = True
    return mask.flatten()


@dataclass
class Merge:
    """One block's matching: merges (B, N, C) tokens to (B, N - r, C) and unmerges a layer's output back."""

    tokens: int               # N
    dst: torch.Tensor         # (Nd,) token positions of the destinations
    kept_src: torch.Tensor    # (B, Ns - r) token positions of the sources left alone
    merged_src: torch.Tensor  # (B, r) token positions of the sources merged away
    target: torch.Tensor      # (B, r) index into dst of each merged source's destination

    @property
    def merged(self) -> int:
        return self.merged_src.shape[1]

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """The kept sources, then every destination as the mean of itself and the sources merged into it."""
        b, _, c = x.shape
        kept = x.gather(1, _rows(self.kept_src, c))
        dst = x[:, self.dst]
        merged = x.gather(1, _rows(self.merged_src, c))
        total = dst.scatter_add(1, _rows(self.target, c), merged)
        count = torch.ones(b, dst.shape[1], 1, device=x.device, dtype=x.dtype)
        count = count.scatter_add(1, self.target[..., None], torch.ones_like(merged[..., :1]))
        return torch.cat([kept, total / count], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C') back to (B, N, C'): a merged source gets its destination's row."""
        b, _, c = y.shape
        n_kept = self.kept_src.shape[1]
        kept, dst = y[:, :n_kept], y[:, n_kept:]
        out = y.new_empty(b, self.tokens, c)
        out[:, self.dst] = dst
        out.scatter_(1, _rows(self.kept_src, c), kept)
        out.scatter_(1, _rows(self.merged_src, c), dst.gather(1, _rows(self.target, c)))
        return out


def _rows(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index[..., None].expand(*index.shape, channels)


def bipartite_matching(x: torch.Tensor, height: int, width: int, ratio: float,
                       generator: torch.Generator | None) -> Merge | None:
    """The merge of `ratio` of the N = height * width tokens of x (B, N, C); None when nothing would merge."""
    b, n, _ = x.shape
    if n != height * width:
        raise ValueError(f"{n} tokens are not a {height}x{width} grid")
    is_dst = destination_mask(height, width, generator)  # indices found on the CPU: no device sync
    dst, src = is_dst.nonzero().squeeze(1).to(x.device), (~is_dst).nonzero().squeeze(1).to(x.device)
    r = min(int(n * ratio), src.numel())
    if r <= 0 or dst.numel() == 0:
        return None
    with torch.no_grad():
        metric = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = metric[:, src] @ metric[:, dst].transpose(1, 2)  # (B, Ns, Nd)
        best, best_dst = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
    merged_order, kept_order = order[:, :r], order[:, r:]
    src_rows = src[None].expand(b, -1)
    return Merge(tokens=n, dst=dst, kept_src=src_rows.gather(1, kept_order).sort(dim=1).values,
                 merged_src=src_rows.gather(1, merged_order), target=best_dst.gather(1, merged_order))
