"""Textual-inversion names inside a token sequence: where the prompt encoder swaps in vectors.

The embedding files themselves are the embeddings feature's (features/embeddings.py); the
encoder only needs, per text encoder, "does an embedding's name start at this token?".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class TextualInversion(Protocol):
    name: str

    def vectors_for(self, slot: str, width: int) -> torch.Tensor | None: ...


@dataclass
class EmbeddingMatch:
    embedding: Any  # a TextualInversion (features/embeddings.Embedding)
    vectors: torch.Tensor
    token_count: int  # how many prompt tokens the name occupies


class EmbeddingIndex:
    """Finds embedding names in a token sequence, for one text encoder."""

    def __init__(self, tokenizer, embeddings: list[TextualInversion], slot: str, width: int):
        self._by_first: dict[int, list[tuple[list[int], Any, torch.Tensor]]] = {}
        for embedding in embeddings:
            vectors = embedding.vectors_for(slot, width)
            if vectors is None:
                continue
            ids = tokenizer(embedding.name, add_special_tokens=False).input_ids
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, embedding, vectors))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: len(c[0]), reverse=True)

    def match(self, tokens: list[int], position: int) -> EmbeddingMatch | None:
        for ids, embedding, vectors in self._by_first.get(tokens[position], ()):
            if tokens[position:position + len(ids)] == ids:
                return EmbeddingMatch(embedding, vectors, len(ids))
        return None
