"""T5's prompt sequence with per-token emphasis, as Flux and SD 3 both read it.

T5 has no 75-token chunks: the weighted pieces are tokenized one by one (so each token keeps its
piece's weight), cut to `length - 1`, closed with </s> and padded to `length`.
"""
from __future__ import annotations

from typing import Any

import torch


def t5_sequence(encoder: Any, t5: torch.nn.Module, tokenizer: Any, pieces: list[tuple[str, float]],
                length: int) -> torch.Tensor:
    """T5's hidden states (float32) of the weighted `pieces`, emphasised per token."""
    tokens: list[int] = []
    weights: list[float] = []
    for part, weight in pieces:
        ids = tokenizer(part, add_special_tokens=False).input_ids
        tokens += ids
        weights += [weight] * len(ids)
    limit = length - 1
    tokens, weights = tokens[:limit] + [tokenizer.eos_token_id], weights[:limit] + [1.0]
    missing = length - len(tokens)
    tokens, weights = tokens + [tokenizer.pad_token_id] * missing, weights + [1.0] * missing
    device = next(t5.parameters()).device
    hidden = t5(input_ids=torch.tensor([tokens], device=device))[0].float()
    return encoder.emphasise(hidden, weights)
