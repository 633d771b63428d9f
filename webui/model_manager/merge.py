"""Checkpoint merger: weighted sum and add difference, per-block UNet weights, optional VAE bake.

Formulas (as in AUTOMATIC1111's merger):
  weighted sum     A*(1-M) + B*M
  add difference   A + (B-C)*M
computed in float32 per tensor and stored in A's dtype (or fp16 when asked). Only tensors
whose name contains "model" are merged; anything else (noise-schedule buffers) and integer
tensors come from A, like AUTOMATIC1111. Tensors only A has are kept from A; tensors only B
(or C) has are ignored; both are counted in the result's notes. An inpainting A (9-channel
UNet input) merged with a normal B merges the first 4 input channels and keeps the rest of
A; the opposite order is refused, as in AUTOMATIC1111.

Per-block weights follow the Merge Block Weighted / SuperMerger convention: one value per
UNet block, IN00..INnn, M00, OUT00..OUTnn (SD 1.x/2.x: 12+1+12 = 25 values; SDXL: 9+1+9 = 19),
optionally preceded by BASE (26 / 20 values). The block value replaces M for that block's
tensors; `time_embed`/`label_emb` count as IN00 and the final `out.` as the last OUT block.
BASE (or M when BASE is not given) applies to everything outside the UNet's blocks: the
text encoders, the VAE and any other tensor.

The inputs are read one tensor at a time (`safe_open`) and the output is streamed to disk,
so a merge holds one tensor of each model in memory, never whole checkpoints.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .architecture import family_label
from .convert import UNET_PREFIX
from .conversions import (
    ConversionFailed, ConversionResult, ProgressFn, TensorFile, _check_target, _hash, _say, carry_sidecars,
    checkpoint_configs, is_training_only, stream_safetensors, vae_replacements)
from .hashing import HashCache, autov2

MODES = {"weighted_sum": "A*(1-M)+B*M", "add_difference": "A+(B-C)*M"}
MODE_LABELS = {"weighted_sum": "Weighted sum", "add_difference": "Add difference"}
# A buffer the text encoder rebuilds itself; merging integer positions makes no sense.
SKIP_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)

_INPUT = re.compile(r"^input_blocks\.(\d+)\.")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.")


@dataclass
class MergeSpec:
    """What to merge. Paths come from the installed model lists; `names` are what the user saw."""

    primary: Path
    secondary: Path
    tertiary: Path | None = None
    mode: str = "weighted_sum"
    multiplier: float = 0.5
    block_weights: str | Sequence[float] | None = None
    vae: Path | None = None
    half: bool = False
    drop_ema: bool = True
    names: dict[str, str] = field(default_factory=dict)

    def name(self, role: str) -> str:
        path = {"A": self.primary, "B": self.secondary, "C": self.tertiary, "VAE": self.vae}[role]
        return self.names.get(role) or (path.name if path else "")


@dataclass(frozen=True)
class BlockWeights:
    """Per-block multipliers: `blocks` = IN00.., M00, OUT..; `base` for everything else (None: M)."""

    blocks: tuple[float, ...]
    base: float | None = None

    @property
    def depth(self) -> int:
        return (len(self.blocks) - 1) // 2

    def label(self, index: int) -> str:
        n = self.depth
        if index < n:
            return f"IN{index:02d}"
        return "M00" if index == n else f"OUT{index - n - 1:02d}"

    def as_text(self) -> str:
        values = ([self.base] if self.base is not None else []) + list(self.blocks)
        return ",".join(f"{v:g}" for v in values)


def block_labels(depth: int, with_base: bool = True) -> list[str]:
    """BASE, IN00..IN{depth-1}, M00, OUT00..: the names of the values a block-weight string holds."""
    labels = [f"IN{i:02d}" for i in range(depth)] + ["M00"] + [f"OUT{i:02d}" for i in range(depth)]
    return (["BASE"] if with_base else []) + labels


def parse_block_weights(value: str | Sequence[float] | None, depth: int) -> BlockWeights | None:
    """AUTOMATIC1111's string form "0.5,0.5,..." (or a list): 2*depth+1 values, or BASE first and 2*depth+2."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_number(p))
            raise ConversionFailed(f"block weights: {bad!r} is not a number") from None
    else:
        numbers = [float(v) for v in value]
    if not all(math.isfinite(n) for n in numbers):
        raise ConversionFailed("block weights: every value must be a finite number")
    plain = 2 * depth + 1
    if len(numbers) == plain:
        return BlockWeights(tuple(numbers))
    if len(numbers) == plain + 1:
        return BlockWeights(tuple(numbers[1:]), base=numbers[0])
    raise ConversionFailed(f"block weights: this model's UNet has {plain} blocks (IN00-IN{depth - 1:02d}, M00, "
                           f"OUT00-OUT{depth - 1:02d}); give {plain} values, or {plain + 1} with BASE first "
                           f"(got {len(numbers)})")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def unet_depth(keys: Sequence[str]) -> int:
    """Number of input blocks of a single-file UNet (12 for SD 1.x/2.x, 9 for SDXL)."""
    found = [int(m.group(1)) for k in keys if k.startswith(UNET_PREFIX)
             for m in [_INPUT.match(k[len(UNET_PREFIX):])] if m]
    if not found:
        raise ConversionFailed("the checkpoint has no UNet input blocks")
    return max(found) + 1


def block_index(key: str, depth: int) -> int | None:
    """Which UNet block (0..2*depth) a full checkpoint key belongs to; None outside the blocks."""
    if not key.startswith(UNET_PREFIX):
        return None
    rest = key[len(UNET_PREFIX):]
    if rest.startswith(("time_embed.", "label_emb.")):
        return 0
    if rest.startswith("out."):
        return 2 * depth
    if rest.startswith("middle_block."):
        return depth
    match = _INPUT.match(rest)
    if match:
        return int(match.group(1))
    match = _OUTPUT.match(rest)
    if match:
        return depth + 1 + int(match.group(1))
    return None


def multiplier_for(key: str, multiplier: float, weights: BlockWeights | None, depth: int) -> float:
    if weights is None:
        return multiplier
    index = block_index(key, depth)
    if index is None:
        return multiplier if weights.base is None else weights.base
    return weights.blocks[index]


def merge_tensor(mode: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float) -> torch.Tensor:
    """One tensor by the formula, in float32 (exact shortcuts where M leaves A or B unchanged)."""
    if mode == "weighted_sum":
        if m == 0:
            return a
        if m == 1:
            return b
        return a.float() * (1 - m) + b.float() * m
    if m == 0:
        return a
    return a.float() + (b.float() - c.float()) * m


# ---- the merge -------------------------------------------------------------------------------------


def _check_architectures(spec: MergeSpec, readers: dict[str, TensorFile]) -> tuple[Any, list[str]]:
    """Same family for every input; inpainting A with normal B/C is allowed, the reverse is not."""
    archs = {}
    configs_a = None
    for role, reader in readers.items():
        configs, _ = checkpoint_configs(reader.path, reader.shapes())
        archs[role] = configs.architecture
        if role == "A":
            configs_a = configs
    notes: list[str] = []
    a = archs["A"]
    for role, arch in archs.items():
        if arch.family != a.family:
            raise ConversionFailed(
                f"{spec.name('A')} is {family_label(a.family)} but {spec.name(role)} is {family_label(arch.family)}: "
                "checkpoints to merge must be the same architecture")
        if arch.inpainting and not a.inpainting:
            raise ConversionFailed(f"{spec.name(role)} is an inpainting model and {spec.name('A')} is not: "
                                   "to merge an inpainting model with a normal one, A must be the inpainting model")
    if a.inpainting and any(not arch.inpainting for arch in archs.values()):
        notes.append("inpainting A: the UNet input's first 4 channels merged, the mask/image channels kept from A")
    return configs_a, notes


def _merge_one(spec: MergeSpec, key: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
               m: float) -> torch.Tensor:
    shapes = [tuple(a.shape), tuple(b.shape)] + ([tuple(c.shape)] if c is not None else [])
    if all(s == shapes[0] for s in shapes):
        return merge_tensor(spec.mode, a, b, c, m)
    partial = all(len(s) == 4 and s[0] == shapes[0][0] and s[2:] == shapes[0][2:] and s[1] == 4 for s in shapes[1:])
    if a.ndim == 4 and a.shape[1] == 9 and partial:
        out = a.float().clone()
        out[:, 0:4] = merge_tensor(spec.mode, a[:, 0:4], b, c, m)
        return out
    names = f"{spec.name('A')} {shapes[0]}, {spec.name('B')} {shapes[1]}"
    if c is not None:
        names += f", {spec.name('C')} {shapes[2]}"
    raise ConversionFailed(f"tensor {key} differs in shape: {names}")


def merge_checkpoints(spec: MergeSpec, target: Path, *, allow_pickle: bool = False, overwrite: bool = False,
                      hashes: HashCache | None = None, progress: ProgressFn | None = None) -> ConversionResult:
    """Merge by `spec` into `target` (a .safetensors file) and describe the recipe in its metadata."""
    if spec.mode not in MODES:
        raise ConversionFailed(f"merge mode must be one of {', '.join(MODES)}")
    if not math.isfinite(spec.multiplier):
        raise ConversionFailed("multiplier M must be a finite number")
    if spec.mode == "add_difference" and spec.tertiary is None:
        raise ConversionFailed("add difference needs a third model C (A + (B - C) * M)")
    _check_target(target, overwrite)
    paths = {"A": spec.primary, "B": spec.secondary}
    if spec.mode == "add_difference":
        paths["C"] = spec.tertiary
    if target.resolve() in {p.resolve() for p in paths.values()}:
        raise ConversionFailed(f"{target.name} is one of the models being merged; choose another output name")

    readers = {role: TensorFile(path, allow_pickle) for role, path in paths.items()}
    try:
        return _merge(spec, readers, target, allow_pickle, overwrite, hashes, progress)
    finally:
        for reader in readers.values():
            reader.close()


def _merge(spec: MergeSpec, readers: dict[str, TensorFile], target: Path, allow_pickle: bool, overwrite: bool,
           hashes: HashCache | None, progress: ProgressFn | None) -> ConversionResult:
    configs, notes = _check_architectures(spec, readers)
    a_reader, b_reader, c_reader = readers["A"], readers["B"], readers.get("C")
    a_keys = a_reader.keys()
    depth = unet_depth(a_keys)
    weights = parse_block_weights(spec.block_weights, depth)
    hashes_by_role: dict[str, str] = {}
    for role in readers:
        _say(progress, 0, len(a_keys), f"hashing {spec.name(role)}")
        hashes_by_role[role] = _hash(readers[role].path, hashes)

    vae: dict[str, torch.Tensor] = {}
    if spec.vae is not None:
        _say(progress, 0, len(a_keys), f"reading {spec.name('VAE')}")
        vae = vae_replacements(a_reader.path, a_reader.shapes(), configs, spec.vae, allow_pickle)
        hashes_by_role["VAE"] = _hash(spec.vae, hashes)
    b_keys, c_keys = set(b_reader.keys()), set(c_reader.keys()) if c_reader else set()
    a_set = set(a_keys)
    keys = [k for k in a_keys if not (spec.drop_ema and is_training_only(k))]
    dropped = len(a_keys) - len(keys)
    keys += [k for k in vae if k not in a_set]
    counts = {"merged": 0, "only_a": 0, "kept": 0}
    dtypes: dict[str, torch.dtype] = {}
    layout = []
    for key in keys:
        dtype = a_reader.dtype(key) if key in a_set else vae[key].dtype
        dtypes[key] = torch.float16 if spec.half and dtype.is_floating_point else dtype
        layout.append((key, dtypes[key], a_reader.shape(key) if key in a_set else tuple(vae[key].shape)))

    def tensor_for(key: str) -> torch.Tensor:
        if key in vae:
            value = vae[key]
        else:
            value = _merged(key)
        return value.to(dtypes[key]) if value.dtype != dtypes[key] else value

    def _merged(key: str) -> torch.Tensor:
        a = a_reader.get(key)
        if "model" not in key or key in SKIP_KEYS or not a.is_floating_point():
            counts["kept"] += 1
            return a
        if key not in b_keys or (c_reader is not None and key not in c_keys):
            counts["only_a"] += 1
            return a
        b = b_reader.get(key)
        c = c_reader.get(key) if c_reader is not None else None
        counts["merged"] += 1
        return _merge_one(spec, key, a, b, c, multiplier_for(key, spec.multiplier, weights, depth))

    recipe = _recipe(spec, weights, hashes_by_role, readers)
    metadata = {"format": "pt", "sd_merge_recipe": json.dumps(recipe),
                "sd_merge_models": json.dumps(_merge_models(spec, hashes_by_role, readers)),
                "easel_merge": describe(spec, weights, hashes_by_role)}
    stream_safetensors(target, layout, tensor_for, metadata, progress)

    ignored = len(b_keys - a_set) + len(c_keys - a_set)
    notes.insert(0, describe(spec, weights, hashes_by_role))
    notes.append(f"{counts['merged']} tensors merged, {counts['kept']} kept from A (buffers, integers)")
    if counts["only_a"]:
        notes.append(f"{counts['only_a']} tensors only in A were kept from A")
    if ignored:
        notes.append(f"{ignored} tensors only in B/C were left out")
    if dropped:
        notes.append(f"dropped {dropped} EMA/optimizer tensors")
    if vae:
        notes.append(f"baked in {spec.name('VAE')}: {len(vae)} VAE tensors")
    notes += [f"copied {name} from A" for name in carry_sidecars(a_reader.path, target, overwrite)]
    return ConversionResult(target, _hash(target, hashes), notes)


def describe(spec: MergeSpec, weights: BlockWeights | None, hashes: dict[str, str]) -> str:
    """One line naming the sources (with AutoV2 hashes) and the formula, for notes and metadata."""
    parts = [f"{role}: {spec.name(role)} [{autov2(hashes[role])}]" for role in ("A", "B", "C") if role in hashes]
    text = f"{MODE_LABELS[spec.mode]} {MODES[spec.mode]}, M={spec.multiplier:g}; " + "; ".join(parts)
    if weights is not None:
        text += f"; block weights {weights.as_text()}"
    if "VAE" in hashes:
        text += f"; VAE {spec.name('VAE')} [{autov2(hashes['VAE'])}]"
    return text


def _recipe(spec: MergeSpec, weights: BlockWeights | None, hashes: dict[str, str],
            readers: dict[str, TensorFile]) -> dict[str, Any]:
    roles = {"A": "primary", "B": "secondary", "C": "tertiary"}
    recipe: dict[str, Any] = {"type": "easel", "method": spec.mode, "formula": MODES[spec.mode],
                              "multiplier": spec.multiplier,
                              "block_weights": weights.as_text() if weights else None,
                              "save_as_half": spec.half, "discard_ema": spec.drop_ema}
    for role, word in roles.items():
        if role in readers:
            recipe[f"{word}_model"] = f"{spec.name(role)} [{autov2(hashes[role])}]"
            recipe[f"{word}_model_hash"] = hashes[role]
    if "VAE" in hashes:
        recipe["vae"] = f"{spec.name('VAE')} [{autov2(hashes['VAE'])}]"
        recipe["vae_hash"] = hashes["VAE"]
    return recipe


def _merge_models(spec: MergeSpec, hashes: dict[str, str], readers: dict[str, TensorFile]) -> dict[str, Any]:
    """sha256 -> name (+ that model's own recipe when it was itself a merge), as AUTOMATIC1111 records it."""
    models: dict[str, Any] = {}
    for role, reader in readers.items():
        entry: dict[str, Any] = {"name": spec.name(role)}
        own = reader.metadata.get("sd_merge_recipe")
        if own:
            try:
                entry["sd_merge_recipe"] = json.loads(own)
            except ValueError:
                pass
        models[hashes[role]] = entry
    return models


def default_name(spec: MergeSpec) -> str:
    """AUTOMATIC1111-like default output name: A_0.5-B_0.5-weighted_sum-merged."""
    def stem(role: str) -> str:
        return Path(spec.name(role)).name.rsplit(".", 1)[0]
    m = round(spec.multiplier, 2)
    return f"{stem('A')}_{round(1 - m, 2):g}-{stem('B')}_{m:g}-{spec.mode}-merged"
