"""Regional Prompter's prompt syntax -> one text per region (and the base), laid out chunk by chunk.

`BREAK` separates the regions' prompts (`ADDCOL` / `ADDROW` are read as `BREAK`); text before
`ADDCOMM` (or the first part, with *use common*) is added in front of every region's prompt;
text before `ADDBASE` (or the next part, with *use base*) is the base prompt, mixed into every
region at the base ratio. The order is common, base, region 1, region 2 ... The negative prompt
splits the same way when it has a part per region (*use neg-common* takes its first part as
common), else every region gets all of it.

For the attention processor to find each region's tokens, every region starts a new 77-token
chunk and takes the same number of chunks in the positive and the negative text (the shorter
one is padded with empty chunks), so one chunk range per region serves both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...core.conditioning import tokenize
from ...core.extra_networks import extract
from ...core.prompts import BREAK, parse_attention
from .args import RegionArgs

_BREAK = re.compile(r"\s*\b(?:BREAK|ADDCOL|ADDROW)\b\s*")
_COMM = re.compile(r"\s*\bADDCOMM\b\s*")
_BASE = re.compile(r"\s*\bADDBASE\b\s*")


class RegionPromptError(ValueError):
    user_facing = True


@dataclass(frozen=True)
class RegionTexts:
    base: str | None          # the base prompt (common included), None without one
    regions: list[str]        # one per region, common included
    negatives: list[str]      # one per segment: base first (when there is one), then each region


def _join(common: str, text: str) -> str:
    return f"{common}, {text}" if common and text else (common or text)


def split_prompts(prompt: str, negative: str, args: RegionArgs, count: int) -> RegionTexts:
    """The regions' prompts; RegionPromptError when the number of parts does not fit the regions."""
    text, _ = extract(prompt)   # <lora:...> tags apply to the whole picture (the plan loaded them)
    negative_text, _ = extract(negative)
    common, base = "", None
    if _COMM.search(text):
        common, text = _COMM.split(text, maxsplit=1)
    if _BASE.search(text):
        base, text = _BASE.split(text, maxsplit=1)
    parts = _BREAK.split(text.strip())
    if args.use_common and not common and len(parts) > 1:
        common = parts.pop(0)
    if args.use_base and base is None and len(parts) > 1:
        base = parts.pop(0)
    if len(parts) != count:
        raise RegionPromptError(f"the prompt has {len(parts)} region part(s) (separated by BREAK) for {count} "
                                f"region(s){' after the common/base parts' if common or base is not None else ''}")
    negative_parts = _BREAK.split(negative_text.strip())
    negative_common = negative_parts.pop(0) if args.use_ncommon and len(negative_parts) > 1 else ""
    if len(negative_parts) == count:
        region_negatives = [_join(negative_common, n) for n in negative_parts]
    else:
        region_negatives = [_join(negative_common, " ".join(negative_parts))] * count
    segments_negative = ([_join(negative_common, " ".join(negative_parts))] if base is not None else [])
    return RegionTexts(_join(common, base) if base is not None else None, [_join(common, r) for r in parts],
                       segments_negative + region_negatives)


@dataclass(frozen=True)
class PromptModeTexts(RegionTexts):
    targets: tuple[str, ...] = ()   # each region's target (its text after the last comma)
    uses_base: bool = False         # ADDBASE or *use base*: the base ratios apply


def _words(text: str) -> list[str]:
    """The lower-case words of prompt text without its emphasis syntax."""
    plain = " ".join(part for part, weight in parse_attention(text) if not (part == BREAK and weight == -1))
    return re.findall(r"[\w'-]+", plain.lower())


def split_prompt_mode(prompt: str, negative: str, args: RegionArgs) -> PromptModeTexts:
    """Base prompt, regions and their targets for Prompt mode; RegionPromptError naming what does not fit."""
    text, _ = extract(prompt)
    negative_text, _ = extract(negative)
    common = ""
    if _COMM.search(text):
        common, text = _COMM.split(text, maxsplit=1)
    uses_base = args.use_base or bool(_BASE.search(text))
    parts = _BREAK.split(_BASE.sub(" BREAK ", text).strip())
    if args.use_common and not common and len(parts) > 2:
        common = parts.pop(0)
    if len(parts) < 2:
        raise RegionPromptError("Prompt mode needs the whole picture's prompt, then one part per region "
                                "(\"effect, target\"), separated by BREAK")
    base, regions = _join(common, parts[0]), parts[1:]
    targets = tuple(region.split(",")[-1].strip() for region in regions)
    base_words = set(_words(base))
    for number, target in enumerate(targets, start=1):
        words = _words(target)
        if not words:
            raise RegionPromptError(f"Prompt mode: region {number} has no target (the text after its last comma)")
        missing = [w for w in words if w not in base_words]
        if missing:
            raise RegionPromptError(f"Prompt mode: region {number}'s target {target!r} (the text after its last "
                                    f"comma) must also be in the first part, the whole picture's prompt "
                                    f"(missing: {', '.join(missing)})")
    negative_parts = _BREAK.split(negative_text.strip())
    negative_common = negative_parts.pop(0) if args.use_ncommon and len(negative_parts) > 1 else ""
    if len(negative_parts) != len(regions) + 1:
        negative_parts = [" ".join(negative_parts)] * (len(regions) + 1)
    return PromptModeTexts(base, [_join(common, r) for r in regions],
                           [_join(negative_common, n) for n in negative_parts], targets, uses_base)


@dataclass(frozen=True)
class ChunkLayout:
    positive: str                       # the text to encode for the positive side
    negative: str
    ranges: list[tuple[int, int]]       # each segment's chunks [start, end): base first when there is one
    total: int


def chunk_count(tokenizers, text: str) -> int:
    return max(len(tokenize(t, text).chunks) for t in tokenizers)


def lay_out(texts: RegionTexts, tokenizers) -> ChunkLayout:
    """Positive and negative texts where segment i fills chunks ranges[i] on both sides."""
    positives = ([texts.base] if texts.base is not None else []) + texts.regions
    pos_parts, neg_parts, ranges, start = [], [], [], 0
    for positive, negative in zip(positives, texts.negatives):
        p, n = chunk_count(tokenizers, positive), chunk_count(tokenizers, negative)
        size = max(p, n)
        pos_parts.append(positive + " BREAK" * (size - p))
        neg_parts.append(negative + " BREAK" * (size - n))
        ranges.append((start, start + size))
        start += size
    return ChunkLayout(" BREAK ".join(pos_parts), " BREAK ".join(neg_parts), ranges, start)
