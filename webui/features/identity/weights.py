"""Reading the published identity files: `.bin` pickles (weights only) or `.safetensors`.

Both hold groups of tensors (`id_encoder` + `lora_weights` for PhotoMaker, `image_proj` +
`ip_adapter` for InstantID's face adapter). A .safetensors file spells them flat, with the
group as the first part of each key.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...model_manager.weight_groups import read_weight_groups


class IdentityFileError(ValueError):
    user_facing = True


def read_groups(path: Path, groups: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {key: tensor}} for the named groups; the file must contain all of them."""
    # published .bin files are plain tensors; the weights_only unpickler cannot run code
    state = read_weight_groups(path, groups, allow_pickle=True)
    empty = [g for g in groups if not state.get(g)]
    if empty:
        raise IdentityFileError(f"{path.name}: the {', '.join(empty)} tensors are missing "
                                f"(is this the right file? expected {', '.join(groups)})")
    return state
