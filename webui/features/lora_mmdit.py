"""LoRA files for SD 3 / SD 3.5 and Z-Image in their published non-diffusers layouts, turned into the
diffusers/PEFT layout (`transformer.<module>.lora_A/lora_B`, `.alpha` kept) the LoRA patcher reads.

- SD 3 in Stability's module names, as kohya's sd-scripts (`lora_unet_joint_blocks_0_x_block_attn_qkv`)
  and ComfyUI (`diffusion_model.joint_blocks.0.x_block.attn.qkv`) save them. diffusers has no
  conversion for these (its SD3 loader reads only its own layout), so this table is ours: the same
  module correspondence as diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` (families/sd3_layout.py
  is its inverse for weights). A fused `qkv` LoRA becomes three LoRAs with the same down matrix and a third of
  the up matrix each; where diffusers swaps the shift/scale halves of an adaLN weight (the last context block,
  the final layer), the up matrix's halves are swapped. The last context block is told by its shape: its adaLN
  has 2 x width rows where the others have 6 x width. LyCORIS modules (LoHa `hada_*`, LoKr `lokr_*`, `diff`)
  keep their tensors under the diffusers name; on a fused or swapped module each target also gets
  `fused_rows`, the row indices of the whole update it takes (a Kronecker or Hadamard product has no up matrix
  to cut, so the patcher computes the fused update and takes those rows: `LoraModule.delta`).
- Z-Image in its original names (`diffusion_model.layers.0.attention.qkv`, kohya's `lora_unet_layers_0_...`):
  diffusers' own `_convert_non_diffusers_z_image_lora_to_diffusers` (what ZImagePipeline.load_lora_weights runs).

SD 3's text-encoder LoRAs (`lora_te1_`, `lora_te2_`, `lora_te3_` for T5) need no renaming: the patcher
matches them by name.
"""
from __future__ import annotations

import re
from typing import Any

_SD3_PREFIXES = ("lora_unet_", "diffusion_model.", "model.diffusion_model.")
_ROLES = {".lora_down.weight": "lora_A.weight", ".lora_up.weight": "lora_B.weight", ".lora_A.weight": "lora_A.weight",
          ".lora_B.weight": "lora_B.weight", ".alpha": "alpha",
          # LyCORIS (LoHa, LoKr, full diff), kept under their own names for the patcher
          **{f".{name}": name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w2",
                                           "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "diff")}}
_LORA_ROLES = ("lora_A.weight", "lora_B.weight", "alpha")
# Stability module -> (diffusers modules, op): "copy", "cat" (fused qkv: split the up matrix), "swap" (halves)
_BLOCK = {"x_block.attn.qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), "cat"),
          "x_block.attn.proj": (("attn.to_out.0",), "copy"),
          "x_block.attn2.qkv": (("attn2.to_q", "attn2.to_k", "attn2.to_v"), "cat"),
          "x_block.attn2.proj": (("attn2.to_out.0",), "copy"),
          "x_block.mlp.fc1": (("ff.net.0.proj",), "copy"), "x_block.mlp.fc2": (("ff.net.2",), "copy"),
          "x_block.adaLN_modulation.1": (("norm1.linear",), "copy"),
          "context_block.attn.qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "cat"),
          "context_block.attn.proj": (("attn.to_add_out",), "copy"),
          "context_block.mlp.fc1": (("ff_context.net.0.proj",), "copy"),
          "context_block.mlp.fc2": (("ff_context.net.2",), "copy"),
          "context_block.adaLN_modulation.1": (("norm1_context.linear",), "adaln")}
_GLOBAL = {"x_embedder.proj": (("pos_embed.proj",), "copy"), "context_embedder": (("context_embedder",), "copy"),
           "t_embedder.mlp.0": (("time_text_embed.timestep_embedder.linear_1",), "copy"),
           "t_embedder.mlp.2": (("time_text_embed.timestep_embedder.linear_2",), "copy"),
           "y_embedder.mlp.0": (("time_text_embed.text_embedder.linear_1",), "copy"),
           "y_embedder.mlp.2": (("time_text_embed.text_embedder.linear_2",), "copy"),
           "final_layer.linear": (("proj_out",), "copy"),
           "final_layer.adaLN_modulation.1": (("norm_out.linear",), "swap")}
_FLAT_BLOCK = re.compile(r"joint_blocks_(\d+)_(x_block|context_block)_(.+)$")
_ZIMAGE = re.compile(r"(^|[._])(noise_refiner|context_refiner|layers)[._]\d+[._](attention|feed_forward|adaLN)")


def _split(key: str) -> tuple[str, str] | None:
    for ending, role in _ROLES.items():
        if key.endswith(ending):
            return key[: -len(ending)], role
    return None


def _sd3_module(name: str) -> tuple[int | None, str] | None:
    """(block index or None, Stability module name) for a file's module name in any SD 3 spelling."""
    for prefix in _SD3_PREFIXES:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if rest.startswith("joint_blocks."):
            index, _, module = rest[len("joint_blocks."):].partition(".")
            return (int(index), module) if index.isdigit() and module in _BLOCK else None
        if rest in _GLOBAL:
            return None, rest
        flat = _FLAT_BLOCK.match(rest)  # kohya writes every dot as "_"
        if flat:
            module = next((m for m in _BLOCK if m.replace(".", "_") == f"{flat.group(2)}_{flat.group(3)}"), None)
            return (int(flat.group(1)), module) if module else None
        return next(((None, m) for m in _GLOBAL if m.replace(".", "_") == rest), None)
    return None


def layout(tensors: dict[str, Any]) -> str | None:
    """"sd3" or "zimage" when the keys are one of those families' published non-diffusers layouts, else None."""
    splits = [split for split in map(_split, tensors) if split]
    if any(_sd3_module(base) for base, _ in splits):
        return "sd3"
    # Z-Image: LoRA files only (diffusers' conversion reads no LyCORIS; kohya LoHa/LoKr match by name as they are)
    if any(_ZIMAGE.search(base) for base, role in splits if role in _LORA_ROLES) and (
            any(k.startswith(("lora_unet_", "diffusion_model.")) or k.endswith(".alpha") or "default." in k
                for k in tensors)):
        return "zimage"
    return None


def _rows(parts: dict[str, Any]) -> int:
    """A module's output rows, from its LoRA up matrix or its LyCORIS factors (0 when they do not say)."""
    for role in ("lora_B.weight", "diff", "hada_w1_a"):
        if role in parts:
            return int(parts[role].shape[0])
    w1, w2 = parts.get("lokr_w1", parts.get("lokr_w1_a")), parts.get("lokr_w2", parts.get("lokr_w2_a"))
    return int(w1.shape[0]) * int(w2.shape[0]) if w1 is not None and w2 is not None else 0


def _width(groups: dict[tuple[int | None, str], dict[str, Any]]) -> int | None:
    """The transformer's width, from a module whose output is it (or a multiple)."""
    for (_, module), parts in groups.items():
        rows = _rows(parts)
        if not rows:
            continue
        if module.endswith("attn.proj") or module.endswith("mlp.fc2"):
            return rows
        if module.endswith("attn.qkv"):
            return rows // 3
    return None


def sd3_to_diffusers(tensors: dict[str, Any]) -> dict[str, Any]:
    """SD 3 LoRA tensors in Stability's names -> `transformer.<diffusers module>.lora_A/lora_B/.alpha`; keys that
    are not the transformer's (text encoders) stay as they are."""
    import torch

    groups: dict[tuple[int | None, str], dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        split = _split(key)
        found = _sd3_module(split[0]) if split else None
        if found is None:
            out[key] = value
            continue
        groups.setdefault(found, {})[split[1]] = value
    width = _width(groups)
    for (index, module), parts in groups.items():
        targets, op = _BLOCK[module] if index is not None else _GLOBAL[module]
        up = parts.get("lora_B.weight")
        if op == "adaln":  # the last context block's adaLN (2 x width rows) is swapped by diffusers
            rows = _rows(parts)
            op = "swap" if (rows == 2 * width if width else rows % 6 != 0) else "copy"
        prefix = "transformer." + (f"transformer_blocks.{index}." if index is not None else "")
        if op in ("cat", "swap") and set(parts) - set(_LORA_ROLES):  # LoHa / LoKr: no up matrix to cut
            for target, rows in zip(targets, _row_indices(op, _rows(parts), len(targets))):
                out.update({f"{prefix}{target}.{role}": value for role, value in parts.items()})
                out[f"{prefix}{target}.fused_rows"] = rows
            continue
        if op == "cat" and up is not None:
            ups = list(up.chunk(3, dim=0))
        elif op == "swap" and up is not None:
            first, second = up.chunk(2, dim=0)
            ups = [torch.cat([second, first], dim=0)]
        else:
            ups = [up]
        for target, part in zip(targets, ups):
            for role, value in parts.items():
                out[f"{prefix}{target}.{role}"] = part if role == "lora_B.weight" else value
    return out


def _row_indices(op: str, rows: int, targets: int) -> list[Any]:
    """Which rows of a fused module's update each diffusers module takes: a third each of a qkv ("cat"), or the
    halves swapped ("swap", diffusers' order of an adaLN's shift and scale)."""
    import torch

    if op == "cat":
        return list(torch.arange(rows).chunk(targets))
    half = rows // 2
    return [torch.cat([torch.arange(half, rows), torch.arange(half)])]


def to_diffusers_layout(tensors: dict[str, Any]) -> dict[str, Any]:
    """The same LoRA in the diffusers/PEFT layout when it is an SD 3 or Z-Image file in another layout, else as is.
    Raises ValueError naming the layout when diffusers' Z-Image conversion cannot read it."""
    kind = layout(tensors)
    if kind == "sd3":
        return sd3_to_diffusers(tensors)
    if kind == "zimage":
        from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_z_image_lora_to_diffusers

        try:
            return _convert_non_diffusers_z_image_lora_to_diffusers(dict(tensors))
        except (ValueError, KeyError, RuntimeError, IndexError) as exc:
            raise ValueError(f"a Z-Image LoRA that diffusers' conversion cannot read ({exc})") from exc
    return tensors
