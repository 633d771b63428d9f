"""GGUF-quantized checkpoints: read with the `gguf` package, dequantize, then load like a single file
(after which `gguf_quantized.py` swaps the denoiser's Linear layers back to the file's quantized blocks).

Scope: a full checkpoint (UNet, VAE and text encoders under the original single-file names,
`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`/`conditioner.*`)
stored as GGUF, placed in models/Stable-diffusion. The loader reads it lazily
(lazy_tensors.py) and takes exactly the path a `.safetensors` checkpoint takes (detection,
conversion, meta-device build), its quantized layers keeping their blocks in memory
(gguf_quantized.py); `read_gguf_tensors` here dequantizes every tensor to float32 (companion
files, conversion).
UNet-only GGUF files (keys without the `model.diffusion_model.` prefix, as most published SDXL UNet
quantizations) load like UNet-only safetensors, their text encoders and VAE from models/text_encoder and
models/VAE (detect.py, loader.add_companions); a Flux transformer-only GGUF (city96's layout: BFL's keys) loads with
its companions from models/text_encoder and models/VAE, its layers kept quantized as diffusers' GGUF
layers (SD 3.x and Z-Image transformer-only GGUF files too). ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>` fields are
honoured for tensors stored reshaped.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .convert import UNET_PREFIX, with_unet_prefix
from .errors import ModelLoadError

_ORIG_SHAPE = "comfy.gguf.orig_shape."


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is in requirements.txt
        raise ModelLoadError("reading .gguf files needs the `gguf` package (pip install gguf)") from exc
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"{path.name}: not a readable GGUF file ({exc})") from exc


def _field_value(reader, name: str) -> Any:
    field = reader.fields.get(name)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:
        return None


def _shape(reader, tensor) -> tuple[int, ...]:
    original = _field_value(reader, _ORIG_SHAPE + tensor.name)
    if isinstance(original, list) and original:
        return tuple(int(v) for v in original)
    return tuple(int(v) for v in reversed(tensor.shape.tolist()))


def quantization_summary(types: Counter) -> str:
    """"Q8_0 ×120, F32 ×300": the tensor types, most common first."""
    return ", ".join(f"{name} ×{count}" for name, count in types.most_common())


def describe_gguf(path: Path) -> dict[str, Any]:
    """Library facts: tensor count, quantization types, and whether it is a full checkpoint."""
    reader = _reader(path)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    names = [t.name for t in reader.tensors]
    arch = _field_value(reader, "general.architecture") or ""
    label = str(arch)
    note = ""
    shapes = dict(with_unet_prefix({t.name: _shape(reader, t) for t in reader.tensors}))  # UNet-only too
    if any(n.startswith(UNET_PREFIX) for n in shapes) or _claimed(shapes):
        from .library import guess_architecture

        label, note = guess_architecture("checkpoint", shapes, {}, path.name)  # Kontext: told by name
    return {"architecture": label, "tensors": len(names), "quantization": quantization_summary(types), "note": note}


def _claimed(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a family loads this denoiser-only layout itself (Flux's transformer, with its text encoders
    and VAE taken from models/text_encoder and models/VAE)."""
    from ..families.registry import all_families

    return any(family.detect_file(shapes) is not None for family in all_families())


def read_gguf_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(float tensors under the file's names, quantization type per tensor)."""
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    reader = _reader(path)
    tensors: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        types[tensor.name] = kind
        shape = _shape(reader, tensor)
        if GGML_QUANT_SIZES[tensor.tensor_type][0] == 1 and kind != "BF16":  # plain F32/F16/I32...
            array = np.array(tensor.data, copy=True)
        else:
            try:
                array = dequantize(tensor.data, tensor.tensor_type)
            except NotImplementedError as exc:
                raise ModelLoadError(f"{path.name}: tensor {tensor.name} uses {kind}, which cannot be dequantized "
                                     f"by the installed gguf package") from exc
        tensors[tensor.name] = torch.from_numpy(np.ascontiguousarray(array).reshape(shape))
    return tensors, types


def read_gguf_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a GGUF file, dequantized, for the single-file loader (a full checkpoint or a UNet-only one)."""
    return read_gguf_tensors(path)[0]


def write_gguf_checkpoint(path: Path, tensors: dict[str, torch.Tensor], quant: str = "Q8_0",
                          architecture: str = "sd", convs: bool = False) -> Path:
    """Write a state dict as GGUF: 2-D weights whose rows fit the block size quantized, the rest F32.

    `convs`: conv weights (4-D) too, stored flattened to (out, in*kh*kw) with ComfyUI-GGUF's
    `comfy.gguf.orig_shape.<name>` field (blocks run along the last axis, too short in a kernel).
    Used by the tests and the benchmark (and handy for making small quantized files from a checkpoint).
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import quantize

    qtype = GGMLQuantizationType[quant]
    block = GGML_QUANT_SIZES[qtype][0]
    writer = GGUFWriter(str(path), architecture)
    for name, value in tensors.items():
        array = value.detach().float().cpu().numpy()
        if convs and array.ndim == 4 and name.endswith(".weight") and array[0].size % block == 0:
            writer.add_array(_ORIG_SHAPE + name, list(array.shape))
            array = array.reshape(array.shape[0], -1)
        if array.ndim == 2 and name.endswith(".weight") and array.shape[-1] % block == 0:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
