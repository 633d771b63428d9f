"""Prompt text -> text-encoder conditioning, the AUTOMATIC1111 way.

- Attention weights from `prompts.parse_attention` multiply each token's output vector;
  then the chunk is rescaled so its mean equals the unweighted mean ("Original" emphasis).
- Prompts longer than 75 tokens continue in further 77-token chunks. A chunk that fills
  up breaks at the last comma when that comma is within `comma_backtrack` tokens of the
  end, so phrases are not cut in half; `BREAK` starts a new chunk. Each chunk is
  [start] + 75 tokens + [end], padded, encoded alone, and the chunks are concatenated.
- Textual-inversion embeddings replace their name's tokens with their vectors.
- Which hidden layer, and whose pooled output, the family adapter says (`Family.layer_choice`,
  `Family.pooled_encoder`): SD 1.x the last (clip skip moves up), SD 2.x the penultimate with
  the final norm, SDXL the penultimate of both encoders concatenated, plus the second
  encoder's pooled projection of the first chunk.
- A prompt with scheduling/alternation/AND becomes a StepConditioning: for each weighted
  sub-prompt, the conditioning to use up to each step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .. import families
from ..families import LayerChoice
from .embedding_index import EmbeddingIndex
from .prompts import BREAK, ScheduledPrompt, parse_attention

if TYPE_CHECKING:
    from .embedding_index import TextualInversion as Embedding
    from ..model_manager.loader import LoadedModel

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
SLOTS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}


@dataclass
class Conditioning:
    embeds: torch.Tensor                 # (1, 77 * chunks, width)
    pooled: torch.Tensor | None = None   # (1, projection) for SDXL

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


@dataclass
class StepConditioning:
    """Weighted sub-prompts (AND), each a schedule of (last 0-based step, conditioning)."""

    parts: list[tuple[list[tuple[int, Conditioning]], float]]

    def at(self, step: int) -> list[tuple[Conditioning, float]]:
        chosen = []
        for schedule, weight in self.parts:
            cond = next((c for end, c in schedule if step <= end), schedule[-1][1])
            chosen.append((cond, weight))
        return chosen

    @classmethod
    def constant(cls, cond: Conditioning) -> "StepConditioning":
        return cls([([(10**9, cond)], 1.0)])

    def all(self) -> list[Conditioning]:
        return [c for schedule, _ in self.parts for _, c in schedule]


def layer_choice(family: str, clip_skip: int = 1) -> LayerChoice:
    """The family's text-encoder layer for a clip skip (see Family.layer_choice)."""
    return families.get(family).layer_choice(clip_skip)


# ---- tokenizing ---------------------------------------------------------------------------------


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (position, vectors)


@dataclass
class Tokenized:
    chunks: list[PromptChunk]
    token_count: int
    embeddings: list["Embedding"]


def tokenize(tokenizer, text: str, index: "EmbeddingIndex | None" = None,
             comma_backtrack: int = COMMA_BACKTRACK) -> Tokenized:
    """Split weighted text into 77-token chunks (with start/end tokens and padding)."""
    comma = tokenizer(",", add_special_tokens=False).input_ids[0]
    chunks: list[PromptChunk] = []
    used: list = []
    current = PromptChunk()
    last_comma = -1
    count = 0

    def close(chunk: PromptChunk) -> None:
        missing = CHUNK_TOKENS - len(chunk.tokens)
        chunk.tokens = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * missing
        chunk.multipliers = [1.0, *chunk.multipliers, 1.0] + [1.0] * missing
        chunk.fixes = [(position + 1, vectors) for position, vectors in chunk.fixes]
        chunks.append(chunk)

    for text_part, weight in parse_attention(text):
        if text_part == BREAK and weight == -1:
            close(current)
            current, last_comma = PromptChunk(), -1
            continue
        ids = tokenizer(text_part, add_special_tokens=False).input_ids
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(current.tokens)
            elif (comma_backtrack and len(current.tokens) == CHUNK_TOKENS and last_comma != -1
                  and len(current.tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved = PromptChunk(current.tokens[cut:], current.multipliers[cut:],
                                    [(p - cut, v) for p, v in current.fixes if p >= cut])
                current.tokens, current.multipliers = current.tokens[:cut], current.multipliers[:cut]
                current.fixes = [(p, v) for p, v in current.fixes if p < cut]
                close(current)
                current, last_comma = moved, -1
            if len(current.tokens) == CHUNK_TOKENS:
                close(current)
                current, last_comma = PromptChunk(), -1
            match = index.match(ids, position) if index is not None else None
            if match is None:
                current.tokens.append(token)
                current.multipliers.append(weight)
                position += 1
                count += 1
                continue
            length = match.vectors.shape[0]
            if len(current.tokens) + length > CHUNK_TOKENS:
                close(current)
                current, last_comma = PromptChunk(), -1
            current.fixes.append((len(current.tokens), match.vectors))
            current.tokens += [0] * length
            current.multipliers += [weight] * length
            position += match.token_count
            count += length
            used.append(match.embedding)
    if current.tokens or not chunks:
        close(current)
    return Tokenized(chunks, count, used)


# ---- encoding -------------------------------------------------------------------------------------


def apply_emphasis(hidden: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    """AUTOMATIC1111's "Original" emphasis: weight each token's vector, then restore the mean."""
    if all(m == 1.0 for m in multipliers):
        return hidden
    weights = torch.tensor(multipliers, device=hidden.device, dtype=hidden.dtype)
    original_mean = hidden.mean()
    hidden = hidden * weights[None, :, None]
    return hidden * (original_mean / hidden.mean())


def _encode_chunk(encoder: torch.nn.Module, chunk: PromptChunk, choice: LayerChoice,
                  emphasis: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    param = next(encoder.parameters())
    tokens = torch.tensor([chunk.tokens], device=param.device)
    handle = None
    if chunk.fixes:
        def put_vectors(module, inputs, output):
            output = output.clone()
            for position, vectors in chunk.fixes:
                output[0, position:position + vectors.shape[0]] = vectors.to(output.device, output.dtype)
            return output
        handle = encoder.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        out = encoder(input_ids=tokens, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    hidden = out.hidden_states[-choice.from_end]
    if choice.final_norm:
        norm = encoder.text_model.final_layer_norm if hasattr(encoder, "text_model") else encoder.final_layer_norm
        hidden = norm(hidden)
    hidden = hidden.float()
    if emphasis:
        hidden = apply_emphasis(hidden, chunk.multipliers)
    pooled = getattr(out, "text_embeds", None)
    return hidden, pooled


class PromptEncoder:
    """Encodes prompts for one model and request; identical texts are encoded once."""

    def __init__(self, model: "LoadedModel", clip_skip: int = 1, embeddings: list["Embedding"] | None = None,
                 comma_backtrack: int = COMMA_BACKTRACK, emphasis: bool = True, options: dict | None = None):
        self.model = model
        self.options = dict(options or {})  # the request's settings, for a family's own text choices
        self.family = model.architecture.adapter
        self.choice = self.family.layer_choice(clip_skip)
        self.comma_backtrack = comma_backtrack
        self.emphasis = emphasis
        self.indexes = {}
        for name in model.architecture.text_encoders:
            if name not in model.text_encoders:  # an optional encoder the checkpoint runs without (SD3's T5)
                continue
            width = model.text_encoders[name].config.hidden_size
            self.indexes[name] = EmbeddingIndex(model.tokenizers[name], embeddings or [], SLOTS.get(name, name), width)
        self._cache: dict[str, Conditioning] = {}
        self.used_embeddings: dict[str, "Embedding"] = {}

    # ---- building blocks for a family that encodes text its own way (Family.encode_prompt) ----

    @staticmethod
    def weighted_pieces(text: str) -> list[tuple[str, float]]:
        """The prompt as (text, emphasis weight) pieces, BREAK dropped."""
        return [(part, weight) for part, weight in parse_attention(text) if not (part == BREAK and weight == -1)]

    def emphasise(self, hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """Per-token emphasis as the setting asks ("Original" or none)."""
        return apply_emphasis(hidden, weights) if self.emphasis else hidden

    @staticmethod
    def conditioning(embeds: torch.Tensor, pooled: torch.Tensor | None) -> Conditioning:
        return Conditioning(embeds, pooled)

    @torch.no_grad()
    def clip_chunks(self, name: str, text: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One CLIP encoder's hidden states per 77-token chunk (the family's layer, emphasis, embeddings) and
        its pooled output of the first chunk, for a family that combines CLIP with other encoders (SD3)."""
        tokenized = tokenize(self.model.tokenizers[name], text, self.indexes[name], self.comma_backtrack)
        for embedding in tokenized.embeddings:
            self.used_embeddings[embedding.name] = embedding
        encoded = [_encode_chunk(self.model.text_encoders[name], chunk, self.choice, self.emphasis)
                   for chunk in tokenized.chunks]
        return [hidden for hidden, _ in encoded], encoded[0][1]

    @torch.no_grad()
    def encode(self, text: str) -> Conditioning:
        if text in self._cache:
            return self._cache[text]
        own = self.family.encode_prompt(self, text)  # a family with its own text stack (e.g. T5 + CLIP pooled)
        if own is not None:
            self._cache[text] = own
            return own
        per_encoder: list[list[torch.Tensor]] = []
        pooled = None
        for name in self.model.architecture.text_encoders:
            tokenized = tokenize(self.model.tokenizers[name], text, self.indexes[name], self.comma_backtrack)
            for embedding in tokenized.embeddings:
                self.used_embeddings[embedding.name] = embedding
            outputs = []
            for i, chunk in enumerate(tokenized.chunks):
                hidden, chunk_pooled = _encode_chunk(self.model.text_encoders[name], chunk, self.choice, self.emphasis)
                outputs.append(hidden)
                if name == self.family.pooled_encoder and i == 0:
                    pooled = chunk_pooled
            per_encoder.append(outputs)
        n_chunks = max(len(o) for o in per_encoder)
        for outputs in per_encoder:  # encoders can disagree when an embedding fits only one
            outputs += [outputs[-1]] * (n_chunks - len(outputs))
        windows = [torch.cat([enc[i] for enc in per_encoder], dim=-1) for i in range(n_chunks)]
        result = Conditioning(torch.cat(windows, dim=1), pooled.float() if pooled is not None else None)
        self._cache[text] = result
        return result

    def encode_scheduled(self, scheduled: ScheduledPrompt) -> StepConditioning:
        parts = []
        for schedule, weight in scheduled.parts:
            parts.append(([(entry.end_at_step, self.encode(entry.text)) for entry in schedule], weight))
        return StepConditioning(parts)


def pad_to_chunks(cond: Conditioning, chunks: int, empty: Conditioning) -> Conditioning:
    """Append empty-prompt chunks so conditionings batched together have equal length."""
    missing = chunks - cond.chunks
    if missing <= 0:
        return cond
    # the empty prompt's first chunk (all of it for the CLIP families; SD 3's CLIP part before its T5 rows)
    chunk = empty.embeds[:, :CHUNK_TOKENS + 2]
    return Conditioning(torch.cat([cond.embeds] + [chunk] * missing, dim=1), cond.pooled)


def count_tokens(tokenizer, text: str, index: "EmbeddingIndex | None" = None) -> int:
    """Tokens the prompt occupies (emphasis syntax removed, embeddings counted by their vectors)."""
    return tokenize(tokenizer, text, index).token_count


def prompt_token_count(tokenizer, prompt: str, steps: int = 20) -> tuple[int, int]:
    """(tokens, chunk capacity) for a prompt box's counter, e.g. (80, 150).

    Extra-network tags don't count; with scheduling or AND, the longest variant counts.
    """
    from .extra_networks import extract
    from .prompts import schedule_prompt

    text, _ = extract(prompt)
    longest = 0
    for schedule, _weight in schedule_prompt(text, steps).parts:
        for entry in schedule:
            longest = max(longest, count_tokens(tokenizer, entry.text))
    capacity = max(1, -(-longest // CHUNK_TOKENS)) * CHUNK_TOKENS
    return longest, capacity
