"""Adapter files that hold named groups of tensors: IP-Adapter (`image_proj`, `ip_adapter`),
PhotoMaker (`id_encoder`, `lora_weights`), InstantID's face adapter.

Published as a `.bin` pickle of {group: {key: tensor}} (read only with the restricted
unpickler), or as `.safetensors`, where the group is the first part of each flat key.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .safe_unpickle import load_pickle_data


def read_weight_groups(path: Path, groups: tuple[str, ...], allow_pickle: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {key: tensor}} for each named group (empty when the file lacks it); the caller says what is required."""
    state: dict[str, dict[str, torch.Tensor]] = {group: {} for group in groups}
    if path.suffix == ".safetensors":
        for key, value in load_file(str(path)).items():
            group, _, rest = key.partition(".")
            if group in state:
                state[group][rest] = value
        return state
    data = load_pickle_data(path, allow_pickle)
    if not isinstance(data, dict):
        return state
    for group in groups:
        state[group] = {k: v for k, v in dict(data.get(group) or {}).items() if isinstance(v, torch.Tensor)}
    return state
