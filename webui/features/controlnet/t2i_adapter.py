"""T2I-Adapters: small networks that turn a control map into features added inside the UNet's
down blocks (Mou et al. 2023). Lighter than a ControlNet: they run once per image, not per step.

Files come in two layouts: TencentARC's original (`conv_in`, `body.<stage*blocks+j>.block1`,
`in_conv` where the width changes; the SD 1.x `t2iadapter_*.pth/.safetensors`) and diffusers'
(`adapter.conv_in`, `adapter.body.<stage>.resnets.<j>`; also as a folder with config.json, as
the SDXL adapters are published). diffusers' T2IAdapter does the computing; "light" adapters
are not supported.
"""
from __future__ import annotations

import re
from typing import Any

import torch

DIFFUSERS_PREFIX = "adapter."


class T2IAdapterError(ValueError):
    user_facing = True


def is_t2i_adapter(keys) -> bool:
    keys = set(keys)
    return "conv_in.weight" in keys and "body.0.block1.weight" in keys or \
        "adapter.conv_in.weight" in keys and "adapter.body.0.resnets.0.block1.weight" in keys


def _blocks_per_stage(count: int, in_conv_at: set[int]) -> int:
    """The original layout is a flat list; published adapters use 2 blocks per stage."""
    for per_stage in (2, 3, 1, 4):
        if count % per_stage == 0 and all(i % per_stage == 0 for i in in_conv_at):
            return per_stage
    raise T2IAdapterError("unrecognised T2I-Adapter layout")


def to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(DIFFUSERS_PREFIX) for k in tensors):
        return dict(tensors)
    indices = {int(m.group(1)) for k in tensors if (m := re.match(r"body\.(\d+)\.", k))}
    in_conv_at = {int(m.group(1)) for k in tensors if (m := re.match(r"body\.(\d+)\.in_conv\.", k))}
    if any(re.match(r"body\.\d+\.skep\.", k) for k in tensors):
        raise T2IAdapterError("this T2I-Adapter uses skip convolutions (sk=False), which diffusers does not support")
    per_stage = _blocks_per_stage(len(indices), in_conv_at)
    out = {}
    for key, value in tensors.items():
        if key.startswith("conv_in."):
            out[DIFFUSERS_PREFIX + key] = value
            continue
        m = re.match(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$", key)
        if m is None:
            raise T2IAdapterError(f"T2I-Adapter tensor {key} is not in a layout Easel knows")
        index, part, kind = int(m.group(1)), m.group(2), m.group(3)
        stage, block = divmod(index, per_stage)
        where = f"body.{stage}.in_conv" if part == "in_conv" else f"body.{stage}.resnets.{block}.{part}"
        out[f"{DIFFUSERS_PREFIX}{where}.{kind}"] = value
    return out


def adapter_config(tensors: dict[str, torch.Tensor], saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """T2IAdapter arguments from the (diffusers-layout) tensors or their shapes, or a folder's config.json."""
    if saved:
        return {k: saved[k] for k in ("in_channels", "channels", "num_res_blocks", "downscale_factor",
                                      "adapter_type") if k in saved}
    if any(".out_conv." in k for k in tensors):
        raise T2IAdapterError("light T2I-Adapters are not supported")
    stages = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"adapter\.body\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"adapter\.body\.0\.resnets\.(\d+)\.", k))}
    channels = [_shape(tensors[f"adapter.body.{i}.resnets.0.block1.weight"])[0] for i in stages]
    packed = _shape(tensors["adapter.conv_in.weight"])[1]
    xl = packed in (256, 768)  # pixel unshuffle by 16 (SDXL) of 1 or 3 channels, vs by 8: 64 or 192
    factor = 16 if xl else 8
    return {"in_channels": packed // factor ** 2, "channels": channels, "num_res_blocks": len(blocks),
            "downscale_factor": factor, "adapter_type": "full_adapter_xl" if xl else "full_adapter"}


def _shape(value) -> tuple[int, ...]:
    """Works on tensors and on the shape tuples read from a safetensors header."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def fits(config: dict[str, Any], unet_config: dict[str, Any]) -> bool:
    sdxl = unet_config.get("addition_embed_type") == "text_time"
    if (config["adapter_type"] == "full_adapter_xl") != sdxl:
        return False
    return sdxl or list(config["channels"]) == list(unet_config["block_out_channels"])


def build_adapter(tensors: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                  saved_config: dict[str, Any] | None = None):
    from diffusers import T2IAdapter

    converted = to_diffusers(tensors)
    config = adapter_config(converted, saved_config)
    with torch.device("meta"):
        model = T2IAdapter(**config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    if missing:
        raise T2IAdapterError(f"T2I-Adapter file is incomplete ({missing[0]} missing)")
    model.load_state_dict({k: converted[k].to(device, dtype) for k in expected}, assign=True, strict=True)
    return model.eval().requires_grad_(False)


def write_test_adapter(path, unet_config: dict[str, Any], layout: str = "original", in_channels: int = 3,
                       seed: int = 0):
    """A random SD 1.x-style T2I-Adapter for a UNet with `unet_config` (tests, benchmarks)."""
    from diffusers import T2IAdapter
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = T2IAdapter(in_channels=in_channels, channels=list(unet_config["block_out_channels"]), num_res_blocks=2,
                       downscale_factor=8, adapter_type="full_adapter")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        original = {}
        for key, value in tensors.items():
            m = re.match(r"adapter\.body\.(\d+)\.(?:resnets\.(\d+)\.)?(\w+)\.(weight|bias)$", key)
            if m is None:
                original[key.removeprefix(DIFFUSERS_PREFIX)] = value
                continue
            stage, block, part, kind = int(m.group(1)), int(m.group(2) or 0), m.group(3), m.group(4)
            original[f"body.{stage * 2 + block}.{part}.{kind}"] = value
        tensors = original
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
