"""CLIP tokenizers built offline.

Every Stable Diffusion text encoder uses the same CLIP byte-pair vocabulary. Rather than
fetching `vocab.json`/`merges.txt` from a model hub, we rebuild them from the BPE merges
file that the open_clip_torch package ships: the vocabulary is the 256 byte symbols,
the same with the end-of-word marker, one entry per merge, then the two special
tokens. That reproduces the published CLIP vocabulary id for id (a test checks known ids).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported on first use: the UI is built before the engine warms
    from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# Merges used by CLIP: the file's first line is a header, and CLIP keeps 49152-256-2 merges.
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte -> printable unicode symbol table, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _merges_file() -> Path:
    """Locate open_clip's merges file without importing open_clip (which imports torch and timm)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; it provides the CLIP vocabulary (pip install open_clip_torch)")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges as 'a b' strings), derived from open_clip's bundled merges file."""
    lines = gzip.decompress(_merges_file().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:1 + _MERGE_COUNT]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary rebuilt with {len(tokens)} entries, expected {VOCAB_SIZE}")
    return {token: i for i, token in enumerate(tokens)}, merges


@lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = EOS, model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer; SD 1.x pads with the end token, OpenCLIP encoders (SD 2.x, SDXL's second) with '!'."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token,
                         model_max_length=model_max_length)
