"""Loading pickle checkpoints (.ckpt/.pt/.bin) without running their code.

A pickle can call any Python function while it loads. Easel refuses these files unless
the user passes --allow-pickle, and even then reads them only through torch's
`weights_only` unpickler, which accepts tensors, containers and numbers and nothing
callable. Old training checkpoints also carry PyTorch Lightning callback objects
and a few numpy scalars; those names are mapped to an inert placeholder that
stores its state and does nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class PickleRefusedError(PermissionError):
    """The user has not allowed pickle files."""

    user_facing = True


class UnsafePickleError(ValueError):
    """The file asks to run something the restricted unpickler does not allow."""

    user_facing = True


class InertObject:
    """Stands in for harmless bookkeeping objects found in training checkpoints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Fully qualified names seen in published SD 1.x training checkpoints.
_INERT_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


def refuse_message(path: Path) -> str:
    return (f"{path.name} is a pickle file ({path.suffix}), which can run code when it is opened. "
            "Use the .safetensors version of this model, or start Easel with --allow-pickle to read it "
            "with the restricted unpickler.")


def load_pickle_checkpoint(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Tensors of a pickle checkpoint, flattened from the usual `state_dict` wrapper."""
    data = load_pickle_data(path, allow_pickle)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UnsafePickleError(f"{path.name} does not contain a state dict")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def load_pickle_data(path: Path, allow_pickle: bool) -> Any:
    """Whatever a pickle file holds, read with the restricted unpickler (tensors, containers, numbers)."""
    if not allow_pickle:
        raise PickleRefusedError(refuse_message(path))
    safe = [(InertObject, name) for name in _INERT_NAMES]
    try:
        with torch.serialization.safe_globals(safe):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError with the offending global
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "global" in str(exc).lower():
            raise UnsafePickleError(f"{path.name} was refused by the restricted unpickler: {_first_line(exc)}") from None
        raise
    return data


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    for line in text:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return text[0] if text else type(exc).__name__
