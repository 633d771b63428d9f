"""Which part of a checkpoint a separate file is, told by its tensors, for any family.

A chosen VAE / text encoder file (`module_choice.py`) may be named anything ("my_t5.safetensors"),
so names decide nothing here. A VAE is a file with encoder and decoder tensors whose latent width
is the family's; a text encoder is a file holding every tensor, by name and shape, that the
family's module for that component expects (built on the meta device: no memory, no weights).
Reading only safetensors headers keeps the test cheap for a 9 GB T5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VAE_PREFIXES = ("first_stage_model.", "vae.")


def file_shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes; from the header alone for safetensors."""
    if path.suffix.lower() == ".safetensors":
        from .library import read_safetensors_header

        header = read_safetensors_header(path)
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    from .loader import read_tensors

    return {k: tuple(v.shape) for k, v in read_tensors(path, allow_pickle).items()}


def fits_vae(shapes: dict[str, tuple[int, ...]], config: dict[str, Any]) -> bool:
    """Encoder and decoder tensors, and a decoder that takes the family's latent channels."""
    for prefix in ("", *VAE_PREFIXES):
        conv_in = shapes.get(prefix + "decoder.conv_in.weight")
        if conv_in is not None and any(k.startswith(prefix + "encoder.") for k in shapes):
            return len(conv_in) == 4 and conv_in[1] == int(config.get("latent_channels", 4))
    return False


def fits_module(component: str, config: dict[str, Any], family: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Every tensor the family's `component` module expects is in the file with its shape (as
    `loader.build_module` will need it: bare CLIP keys and tied weights handled the same way)."""
    from .loader import _factory, _uses_bare_text_keys

    try:
        with torch.device("meta"):
            model = _factory(component, config, family)()
    except (TypeError, ValueError, KeyError):
        return False
    if _uses_bare_text_keys(model):
        shapes = {k.removeprefix("text_model."): v for k, v in shapes.items()}
    tied = getattr(model, "_tied_weights_keys", None)
    for target, source in (tied.items() if isinstance(tied, dict) else ()):
        if target not in shapes and source in shapes:
            shapes = {**shapes, target: shapes[source]}
    return all(shapes.get(k) == tuple(v.shape) for k, v in model.state_dict().items())


def component_of(path: Path, components: list[str], configs: Any, family: str, allow_pickle: bool) -> str | None:
    """The first of `components` (the family's VAE and text encoders) the file fits, or None."""
    try:
        shapes = file_shapes(path, allow_pickle)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for component in components:
        if component == "vae":
            if fits_vae(shapes, configs["vae"]):
                return component
        elif fits_module(component, configs[component], family, shapes):
            return component
    return None
