"""T5's prompt sequence with per-token emphasis, as Flux and SD 3 both read it.

T5 has no 75-token chunks: the weighted pieces are tokenized one by one (so each token keeps its
piece's weight), cut to `length - 1`, closed with </s> and padded to `length`.
AUTOMATIC1111's SD 3 reads it otherwise (modules/models/sd3/sd3_cond.py, `Sd3T5`): the pieces'
tokens and </s>, padded or cut to the CLIP part's token count (77 per 75-token chunk), with no
emphasis (it computes the multipliers and never applies them); `t5_clip_length_sequence` is that.
"""
from __future__ import annotations

from typing import Any

import torch


def _tokens(tokenizer: Any, pieces: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """The pieces' token ids one after the other (no special tokens) and each token's emphasis weight."""
    tokens: list[int] = []
    weights: list[float] = []
    for part, weight in pieces:
        ids = tokenizer(part, add_special_tokens=False).input_ids
        tokens += ids
        weights += [weight] * len(ids)
    return tokens, weights


def _hidden(t5: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    device = next(t5.parameters()).device
    return t5(input_ids=torch.tensor([tokens], device=device))[0].float()


def t5_sequence(encoder: Any, t5: torch.nn.Module, tokenizer: Any, pieces: list[tuple[str, float]],
                length: int) -> torch.Tensor:
    """T5's hidden states (float32) of the weighted `pieces`, emphasised per token."""
    tokens, weights = _tokens(tokenizer, pieces)
    limit = length - 1
    tokens, weights = tokens[:limit] + [tokenizer.eos_token_id], weights[:limit] + [1.0]
    missing = length - len(tokens)
    tokens, weights = tokens + [tokenizer.pad_token_id] * missing, weights + [1.0] * missing
    return encoder.emphasise(_hidden(t5, tokens), weights)


def t5_clip_length_sequence(t5: torch.nn.Module, tokenizer: Any, pieces: list[tuple[str, float]],
                            length: int) -> torch.Tensor:
    """AUTOMATIC1111's SD 3 T5 sequence: tokens + </s>, padded to `length` or cut there (</s> and all), no
    emphasis."""
    tokens, _ = _tokens(tokenizer, pieces)
    tokens = (tokens + [tokenizer.eos_token_id])[:length]
    return _hidden(t5, tokens + [tokenizer.pad_token_id] * (length - len(tokens)))
