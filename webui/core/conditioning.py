"""Prompt text -> text-encoder embeddings for each model family.

Prompts longer than one CLIP window are split into 75-token chunks, each wrapped in
start/end tokens and padded to 77, encoded separately and concatenated along the
sequence (AUTOMATIC1111's behaviour). Which hidden layer is used follows each family's
original code: SD 1.x the last layer (clip skip moves up), SD 2.x the penultimate layer
with the final norm, SDXL the penultimate layers of both encoders concatenated plus the
second encoder's pooled projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel

CHUNK_TOKENS = 75


@dataclass
class Conditioning:
    embeds: torch.Tensor                 # (1, 77 * chunks, width)
    pooled: torch.Tensor | None = None   # (1, projection) for SDXL

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


@dataclass(frozen=True)
class LayerChoice:
    from_end: int          # 1 = last hidden layer
    final_norm: bool       # apply the encoder's final layer norm


def layer_choice(family: str, clip_skip: int = 1) -> LayerChoice:
    skip = max(1, int(clip_skip))
    if family == "sd1":
        return LayerChoice(skip, True)
    if family == "sd2":
        return LayerChoice(skip + 1, True)
    return LayerChoice(skip + 1, False)  # SDXL and refiner: penultimate, no final norm


def token_chunks(tokenizer, text: str) -> list[list[int]]:
    """Token ids in 77-long windows: [start] + up to 75 tokens + [end] + padding."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    pieces = [ids[i:i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]
    pad = tokenizer.pad_token_id
    return [[tokenizer.bos_token_id, *piece, tokenizer.eos_token_id] + [pad] * (CHUNK_TOKENS - len(piece))
            for piece in pieces]


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def _encode_chunk(encoder: torch.nn.Module, ids: list[int], choice: LayerChoice) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = next(encoder.parameters()).device
    tokens = torch.tensor([ids], device=device)
    out = encoder(input_ids=tokens, output_hidden_states=True)
    hidden = out.hidden_states[-choice.from_end]
    if choice.final_norm:
        norm = encoder.text_model.final_layer_norm if hasattr(encoder, "text_model") else encoder.final_layer_norm
        hidden = norm(hidden)
    pooled = getattr(out, "text_embeds", None)
    return hidden, pooled


@torch.no_grad()
def encode_prompt(model: LoadedModel, text: str, clip_skip: int = 1) -> Conditioning:
    family = model.architecture.family
    choice = layer_choice(family, clip_skip)
    per_encoder: list[list[torch.Tensor]] = []
    pooled: torch.Tensor | None = None
    chunk_lists = {name: token_chunks(model.tokenizers[name], text) for name in model.architecture.text_encoders}
    n_chunks = max(len(c) for c in chunk_lists.values())
    for name in model.architecture.text_encoders:
        chunks = chunk_lists[name]
        chunks += [chunks[-1]] * (n_chunks - len(chunks))
        outputs = []
        for index, ids in enumerate(chunks):
            hidden, chunk_pooled = _encode_chunk(model.text_encoders[name], ids, choice)
            outputs.append(hidden)
            if name == "text_encoder_2" and index == 0:
                pooled = chunk_pooled
        per_encoder.append(outputs)
    windows = [torch.cat([enc[i] for enc in per_encoder], dim=-1) for i in range(n_chunks)]
    embeds = torch.cat(windows, dim=1).float()
    return Conditioning(embeds, pooled.float() if pooled is not None else None)


def pad_to_same_length(a: Conditioning, b: Conditioning, empty: Conditioning) -> tuple[Conditioning, Conditioning]:
    """Make positive and negative the same number of chunks by appending empty-prompt chunks."""
    def extend(c: Conditioning, chunks: int) -> Conditioning:
        missing = chunks - c.chunks
        if missing <= 0:
            return c
        return Conditioning(torch.cat([c.embeds] + [empty.embeds] * missing, dim=1), c.pooled)

    target = max(a.chunks, b.chunks)
    return extend(a, target), extend(b, target)
