"""Pick the compute device and dtypes once, from flags and what the machine has."""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DeviceConfig:
    """Where models run and in which dtype. The VAE may be forced to fp32 separately."""

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype

    @property
    def label(self) -> str:
        name = self.device.type
        if self.device.type == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {str(self.dtype).removeprefix('torch.')}"


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple MPS, then CPU; an explicit name is honoured or refused clearly."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {requested}: MPS is not available on this machine")
    return device


def device_config(device: str = "auto", precision: str = "auto", no_half_vae: bool = False) -> DeviceConfig:
    """fp16 on GPUs (bf16 where asked), fp32 on CPU; the VAE follows unless `no_half_vae`."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    dev = pick_device(device)
    if precision == "auto":
        dtype = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    vae_dtype = torch.float32 if no_half_vae else dtype
    return DeviceConfig(dev, dtype, vae_dtype)


def empty_cache(device: torch.device) -> None:
    """Give freed memory back to the driver after unloading a model."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
