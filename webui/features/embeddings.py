"""Textual-inversion embeddings from models/embeddings/, used by writing their name in a prompt.

File forms read (all safetensors unless --allow-pickle):
- AUTOMATIC1111 SD 1.x/2.x: `emb_params` -> (vectors, width)
- SDXL: `clip_l` (768 wide, first encoder) and `clip_g` (1280, second encoder)
- diffusers: one tensor named after the token, (width,) or (vectors, width)
- A1111 .pt: `string_to_param: {'*': tensor}` (pickle, restricted unpickler)

An embedding applies to a text encoder when its vector width matches the encoder's
hidden size; SDXL files carry one set per encoder. The name is the file stem; in a
prompt it is matched token by token, as AUTOMATIC1111 does.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.embedding_index import EmbeddingIndex, EmbeddingMatch  # noqa: F401 - the encoder's half, re-exported
from ..model_manager.hashing import HashCache
from ..model_manager.lookup import ModelNotFound, find_file
from ..paths import model_files
from ..model_manager.safe_unpickle import PICKLE_SUFFIXES, load_pickle_data
from ..model_manager.store import ModelStore

log = logging.getLogger(__name__)
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES


@dataclass
class Embedding:
    name: str
    path: Path
    # vectors per encoder slot: "clip_l" (first / only encoder) and "clip_g" (SDXL's second)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return max(v.shape[0] for v in self.vectors.values())

    def vectors_for(self, slot: str, width: int) -> torch.Tensor | None:
        tensor = self.vectors.get(slot)
        if tensor is None and slot == "clip_l":
            tensor = self.vectors.get("clip_g") if len(self.vectors) == 1 else None
        if tensor is None or tensor.shape[-1] != width:
            return None
        return tensor


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1, -1) if tensor.ndim == 1 else tensor.reshape(-1, tensor.shape[-1])


def read_embedding(path: Path, allow_pickle: bool) -> Embedding:
    """Parse one embedding file; raises ValueError naming the file when the layout is unknown."""
    if path.suffix.lower() == ".safetensors":
        data = load_file(str(path), device="cpu")
    else:
        data = _pickle_embedding_tensors(path, allow_pickle)
    vectors: dict[str, torch.Tensor] = {}
    if "clip_l" in data or "clip_g" in data:
        vectors = {k: _as_matrix(data[k]).float() for k in ("clip_l", "clip_g") if k in data}
    elif "emb_params" in data:
        vectors = {"clip_l": _as_matrix(data["emb_params"]).float()}
    elif len(data) == 1:
        vectors = {"clip_l": _as_matrix(next(iter(data.values()))).float()}
    if not vectors:
        raise ValueError(f"{path.name}: not a textual-inversion embedding (keys: {', '.join(list(data)[:5])})")
    return Embedding(path.stem, path, vectors)


def _pickle_embedding_tensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A1111 .pt embeddings keep their tensor under string_to_param['*']."""
    data = load_pickle_data(path, allow_pickle)
    if not isinstance(data, dict):
        return {}
    nested = data.get("string_to_param")
    source = nested if isinstance(nested, dict) else data
    return {k: v for k, v in source.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


class EmbeddingLibrary:
    """Embeddings found in the embeddings folders, kept in the model store, re-read when files change.

    Each parsed file is a store entry of kind "embedding" keyed by (path, mtime), so the store's
    RAM budget counts them and a changed file is a new key.
    """

    KIND = "embedding"

    def __init__(self, folders: list[Path], hashes: HashCache, allow_pickle: bool = False,
                 store: ModelStore | None = None):
        self.folders = folders
        self.hashes = hashes
        self.allow_pickle = allow_pickle
        self.store = store if store is not None else ModelStore()
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}

    def files(self) -> list[Path]:
        return model_files(self.folders, SUFFIXES)

    def find(self, name: str) -> Path:
        """An embedding file by name (the stem), file name or path under models/embeddings (the `lookup` contract)."""
        return find_file(name, self.files(), self.folders, lambda *found: ModelNotFound("embedding", *found))

    def all(self) -> list[Embedding]:
        """Every readable embedding; unreadable files are listed in `errors`, never raised."""
        result = []
        with self._lock:
            seen = set()
            for path in self.files():
                if path.stem in seen:
                    continue
                key = (str(path), path.stat().st_mtime)
                try:
                    embedding = self._load(path, key)
                except Exception as exc:  # a bad file must not break generation
                    self.errors[path.stem] = str(exc)
                    continue
                seen.add(path.stem)
                result.append(embedding)
        return result

    def _load(self, path: Path, key: tuple[str, float]) -> Embedding:
        cached = self.store.peek(self.KIND, key)
        if cached is not None:
            return self.store.get(self.KIND, key, lambda: cached)  # counts as a use (and pins inside a job)
        self.store.evict_where(self.KIND, lambda k: k[0] == key[0])  # an older version of the file
        embedding = self.store.get(self.KIND, key, lambda: read_embedding(path, self.allow_pickle))
        self.errors.pop(path.stem, None)
        return embedding

    def short_hash(self, embedding: Embedding) -> str:
        return self.hashes.sha256(embedding.path)[:12]
