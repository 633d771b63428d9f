"""A checkpoint file's tensors read one at a time, when the module that holds them is built.

Why (and not safetensors' `load_file`): reading the whole file first holds the complete checkpoint
in memory before the first module is built, so storing weights smaller (fp8, GGUF blocks) could
never bring the peak below the file's size, and `load_file`'s memory map adds the file's pages to
the resident set beside torch's copies. Here the header gives names, dtypes, shapes and offsets;
the family's key conversion runs on meta tensors (no data), which tells for every converted key the
file tensor it is (a rename keeps the very tensor object). The few tensors a conversion computes
(OpenCLIP's q/k/v split, a transposed projection, the VAE's flattened attention) are read for real
and converted again. `loader.build_module` then reads each tensor right before casting it to its
storage type, so loading peaks at the stored model plus one tensor. Reads are plain file reads.

GGUF: a quantized tensor gives its blocks (`blocks()`, diffusers' `GGUFParameter`) to a layer that
stays quantized, or its values (`load()`, dequantized with diffusers' own functions) to anything
else. A computed tensor stays quantized when the conversion only cut whole rows out of its blocks
(the same storage, contiguous, the expected shape); otherwise it is computed from the values.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}
_GGUF_PLAIN = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64, "I8": torch.int8,
               "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}


@dataclass(eq=False)
class StoredTensor:
    """One tensor of a file: where its bytes are, and what they are."""

    path: Path
    offset: int
    nbytes: int
    dtype: torch.dtype                  # the values' dtype (float32 for GGUF blocks, dequantized)
    shape: tuple[int, ...]              # the values' shape
    quant_type: Any = None              # GGUF's GGMLQuantizationType for quantized blocks
    block_shape: tuple[int, ...] = ()   # GGUF: the blocks' byte shape (rows, bytes per row)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def quantized(self) -> bool:
        return self.quant_type is not None

    def meta(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device="meta")

    def _read(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()).cast("B")
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.offset)
            done = 0
            while done < self.nbytes:
                got = handle.readinto(view[done:])
                if not got:
                    raise OSError(f"{self.path.name}: the file ends inside a tensor")
                done += got
        return out

    def blocks(self) -> torch.Tensor:
        """GGUF: the quantized blocks as diffusers' GGUFParameter (byte shape, quant type attached)."""
        from diffusers.quantizers.gguf.utils import GGUFParameter

        return GGUFParameter(self._read(torch.uint8, self.block_shape), quant_type=self.quant_type)

    def load(self) -> torch.Tensor:
        """The values (GGUF blocks dequantized by diffusers, as its GGUF layers do per call)."""
        if not self.quantized:
            return self._read(self.dtype, self.shape)
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        return dequantize_gguf_tensor(self.blocks()).reshape(self.shape).float()


def safetensors_tensors(path: Path) -> dict[str, StoredTensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt"):  # safetensors' own checks of the header (SafetensorError), no data read
        pass
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    start = 8 + length
    out: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = StoredTensor(path, start + begin, end - begin, SAFETENSORS_DTYPES[entry["dtype"]],
                                 tuple(entry["shape"]))
    return out


def gguf_tensors(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of a GGUF file; only the header is read (the reader's memory map is dropped)."""
    from .gguf import _reader, _shape

    reader = _reader(path)
    out: dict[str, StoredTensor] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        shape = _shape(reader, tensor)
        offset, nbytes = int(tensor.data_offset), int(tensor.n_bytes)
        if kind in _GGUF_PLAIN:
            out[tensor.name] = StoredTensor(path, offset, nbytes, _GGUF_PLAIN[kind], shape)
        else:
            out[tensor.name] = StoredTensor(path, offset, nbytes, torch.float32, shape, tensor.tensor_type,
                                            tuple(int(d) for d in tensor.data.shape))
    del reader
    return out


Converter = Callable[[dict[str, Any]], tuple[dict[str, dict[str, Any]], dict[str, Any]]]


def _row_cut(value: Any, expected: torch.Tensor, sources: dict[str, torch.Tensor]) -> bool:
    """Whether `value` (from quantized blocks) is whole rows of one source's blocks, in the expected shape."""
    shapes = {tuple(expected.shape), (expected.shape[0], expected[0].numel())}
    if tuple(getattr(value, "quant_shape", ())) not in shapes:
        return False
    if not value.is_contiguous():
        return False
    pointer = value.untyped_storage().data_ptr()
    return any(pointer == source.untyped_storage().data_ptr() for source in sources.values())


def convert_lazily(stored: dict[str, StoredTensor], convert: Converter) -> tuple[dict[str, dict[str, Any]],
                                                                                 dict[str, Any]]:
    """`convert` (a family's split into components) applied without reading the file: each converted
    value is a StoredTensor where the conversion only renamed it, else a tensor computed from the few
    file tensors it needs (GGUF blocks where only whole rows were cut)."""
    meta = {key: value.meta() for key, value in stored.items()}
    origin = {id(value): key for key, value in meta.items()}
    components, leftovers = convert(meta)
    passed = {origin[id(v)] for part in (*components.values(), leftovers) for v in part.values() if id(v) in origin}
    computed = {(c, k): v for c, part in components.items() for k, v in part.items() if id(v) not in origin}
    out = {c: {k: stored[origin[id(v)]] for k, v in part.items() if id(v) in origin} for c, part in components.items()}
    if computed:
        needed = [key for key in stored if key not in passed]
        found: dict[tuple[str, str], Any] = {}
        quantized = {key: stored[key].blocks() for key in needed if stored[key].quantized}
        if quantized:
            from diffusers.quantizers.gguf.utils import GGUFParameter

            parts, _ = convert({**meta, **quantized})
            for (c, k), expected in computed.items():
                value = parts.get(c, {}).get(k)
                if isinstance(value, GGUFParameter) and _row_cut(value, expected, quantized):
                    found[(c, k)] = value
            del parts, quantized
        if len(found) < len(computed):
            parts, _ = convert({**meta, **{key: stored[key].load() for key in needed}})
            for key in computed:
                if key not in found:
                    value = parts[key[0]][key[1]]
                    if value.is_meta:
                        raise ValueError(f"tensor {key[1]} is computed from tensors the conversion did not name")
                    # a view of a bigger tensor (one of q/k/v) gets its own storage now, while little is
                    # loaded, so each part is freed as soon as its layer has cast it
                    found[key] = value.clone() if value.untyped_storage().nbytes() > value.nbytes else value
            del parts
        for (c, k), value in found.items():
            out[c][k] = value
    kept = {k: stored[origin[id(v)]] if id(v) in origin else v for k, v in leftovers.items()}
    return out, kept
