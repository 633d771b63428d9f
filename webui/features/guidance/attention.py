"""Self-attention processors for PAG and SAG, swapped onto chosen layers and back.

diffusers' PAG processors (`PAGIdentitySelfAttnProcessor2_0`, `PAGCFGIdentitySelfAttnProcessor2_0`)
expect the perturbed copy inside the same batch ([original, perturbed] halves). Easel's samplers
make the perturbed prediction a separate model call (`CFGDenoiser.evaluate`), so that AND
sub-prompts, ControlNet and IP-Adapter batches keep their own layout; that call needs every row
perturbed, which is `IdentitySelfAttention`. SAG needs the attention probabilities of a self-
attention layer, which diffusers' processors compute but do not hand out: `RecordingSelfAttention`
is diffusers' classic `AttnProcessor` computation that also keeps them when asked to.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


def self_attention(unet: Any, layer: str = "mid") -> Any:
    """The self-attention module of a layer: "mid" is the middle block's first transformer (the papers')."""
    if layer != "mid":
        raise ValueError(f"unknown attention layer {layer!r}")
    return unet.mid_block.attentions[0].transformer_blocks[0].attn1


@contextmanager
def processor_swapped(attn: Any, processor: Any) -> Iterator[None]:
    """`processor` on one attention module for the block's duration, the previous one back afterwards."""
    previous = attn.processor
    attn.set_processor(processor)
    try:
        yield
    finally:
        attn.set_processor(previous)


def _to_tokens(attn: Any, hidden: torch.Tensor, temb: torch.Tensor | None) -> tuple[torch.Tensor, tuple | None]:
    if attn.spatial_norm is not None:
        hidden = attn.spatial_norm(hidden, temb)
    shape = None
    if hidden.ndim == 4:
        shape = hidden.shape
        hidden = hidden.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    return hidden, shape


def _finish(attn: Any, out: torch.Tensor, shape: tuple | None, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class IdentitySelfAttention:
    """PAG's perturbation: the attention map replaced by the identity, so each token keeps its own value."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        tokens, shape = _to_tokens(attn, hidden_states, temb)
        return _finish(attn, attn.to_v(tokens), shape, hidden_states)


class RecordingSelfAttention:
    """Plain self-attention that keeps its probabilities (batch * heads, tokens, tokens) while `armed`."""

    def __init__(self) -> None:
        self.armed = False
        self.probabilities: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        tokens, shape = _to_tokens(attn, hidden_states, temb)
        mask = attn.prepare_attention_mask(attention_mask, tokens.shape[1], tokens.shape[0])
        query = attn.head_to_batch_dim(attn.to_q(tokens))
        key = attn.head_to_batch_dim(attn.to_k(tokens))
        value = attn.head_to_batch_dim(attn.to_v(tokens))
        probabilities = attn.get_attention_scores(query, key, mask)
        if self.armed:
            self.probabilities, self.armed = probabilities, False
        out = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        return _finish(attn, out, shape, hidden_states)
