"""Reading the published identity files: `.bin` pickles (weights only) or `.safetensors`.

Both hold groups of tensors (`id_encoder` + `lora_weights` for PhotoMaker, `image_proj` +
`ip_adapter` for InstantID's face adapter). A .safetensors file spells them flat, with the
group as the first part of each key.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ...model_manager.safe_unpickle import load_pickle_data


class IdentityFileError(ValueError):
    user_facing = True


def read_groups(path: Path, groups: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {key: tensor}} for the named groups; the file must contain all of them."""
    if path.suffix == ".safetensors":
        flat = load_file(str(path))
        state: dict[str, dict[str, torch.Tensor]] = {g: {} for g in groups}
        for key, value in flat.items():
            group, _, rest = key.partition(".")
            if group in state:
                state[group][rest] = value
    else:
        # published .bin files are plain tensors; the weights_only unpickler cannot run code
        data = load_pickle_data(path, allow_pickle=True)
        if not isinstance(data, dict):
            raise IdentityFileError(f"{path.name}: not a weights file (expected groups {', '.join(groups)})")
        state = {g: {k: v for k, v in dict(data.get(g) or {}).items() if isinstance(v, torch.Tensor)} for g in groups}
    empty = [g for g in groups if not state.get(g)]
    if empty:
        raise IdentityFileError(f"{path.name}: the {', '.join(empty)} tensors are missing "
                                f"(is this the right file? expected {', '.join(groups)})")
    return state
