"""GGUF weights kept quantized in memory: each layer dequantizes its blocks when it runs.

`loader.build_module` calls `quantize_layers` on a model still on the meta device: every Linear,
Conv2d and Embedding whose file weight is quantized (Q8_0, Q6_K, Q5_K, Q4_K, Q4_0, ...) becomes a layer that
holds the file's blocks (diffusers' `GGUFParameter`) and never a dequantized copy. Linear layers
use diffusers' `GGUFLinear`. Convolutions use `GGUFConv2d` below: diffusers ships only the Linear
layer, yet a UNet's convolutions hold about a third of SDXL's weights, so leaving them dequantized
would keep a GGUF UNet near fp16 size. It dequantizes with diffusers' own `dequantize_gguf_tensor`
per call, as `GGUFLinear` does, but a big kernel in slices of output channels (at most
`CONV_SLICE_BYTES` dequantized at once): the convolution copies its kernel into its own layout, so a
whole dequantized kernel costs twice its size, and SDXL's largest (1280x2560x3x3) would add 225 MiB
to the peak while one slice adds 64. Conv weights are stored in GGUF flattened to rows (out, in*kh*kw),
with ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>` field giving the real shape (gguf.py reads it),
since blocks run along the last axis and a 3x3 kernel's axis is too short for a block.

Embedding tables (the CLIP encoders' token and position embeddings, T5's shared table) use
`GGUFEmbedding` below: it takes the looked-up rows of the blocks (each row is whole blocks) and
dequantizes only those, so SDXL's two token tables (101 M values) stay 1.06 bytes a value instead
of 4. diffusers has no quantized embedding; it is built from its `GGUFParameter` and
`dequantize_gguf_tensor`. It is still an `nn.Embedding`, so `get_input_embeddings()` and the
forward hook textual inversion puts on it see the same module and the same output; a table shared
by two modules (T5's `shared` and `encoder.embed_tokens`) stays one table.

The family's key conversion runs on the blocks too (lazy_tensors.py): a tensor it only cut into
whole rows (Flux's fused q/k/v) stays quantized; anything else is dequantized at load.
"""
from __future__ import annotations

from typing import Any

import torch

from .lazy_tensors import StoredTensor


# the most dequantized kernel a GGUFConv2d holds at once; a bigger kernel runs in slices of output channels
CONV_SLICE_BYTES = 32 * 2 ** 20


class GGUFConv2d(torch.nn.Conv2d):
    """A Conv2d whose weight is GGUF blocks of shape (out, in*kh*kw), dequantized per call; a kernel of more
    than CONV_SLICE_BYTES (in the compute dtype) in slices of output channels."""

    compute_dtype: torch.dtype

    def _kernel(self, start: int, stop: int) -> torch.Tensor:
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        # one expression: diffusers dequantizes to fp16 first, and that copy goes before the convolution runs
        return dequantize_gguf_tensor(self.weight[start:stop]).to(self.compute_dtype).reshape(
            stop - start, -1, *self.kernel_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        row_bytes = self.weight.quant_shape[-1] * self.compute_dtype.itemsize  # no tensor made per call
        step = max(1, CONV_SLICE_BYTES // row_bytes)
        if self.groups != 1 or step >= self.out_channels:
            return self._conv_forward(inputs, self._kernel(0, self.out_channels), bias)
        out = None
        for start in range(0, self.out_channels, step):
            stop = min(start + step, self.out_channels)
            part = self._conv_forward(inputs, self._kernel(start, stop), None if bias is None else bias[start:stop])
            if out is None:
                out = part.new_empty((part.shape[0], self.out_channels, *part.shape[2:]))
            out[:, start:stop] = part
            del part
        return out


class GGUFEmbedding(torch.nn.Embedding):
    """An Embedding whose table is GGUF blocks of shape (rows, bytes per row): only the looked-up rows are
    dequantized, in the compute dtype."""

    compute_dtype: torch.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

        rows = self.weight.as_tensor()[ids]  # the rows' bytes: (..., bytes per row), whole blocks each
        values = dequantize_gguf_tensor(GGUFParameter(rows, quant_type=self.weight.quant_type))
        return values.to(self.compute_dtype)


def _blocks(value: Any) -> Any:
    """The GGUFParameter of a quantized file tensor (read now), or None."""
    if isinstance(value, StoredTensor):
        return value.blocks() if value.quantized else None
    return value if hasattr(value, "quant_type") else None


def _fits(value: Any, child: torch.nn.Module) -> bool:
    if isinstance(value, StoredTensor):
        return value.quantized and tuple(value.shape) == tuple(child.weight.shape)
    shape = tuple(getattr(value, "quant_shape", ()))
    return shape in {tuple(child.weight.shape), (child.weight.shape[0], child.weight[0].numel())}


def _swap(child: torch.nn.Module, compute: torch.dtype) -> torch.nn.Module | None:
    from diffusers.quantizers.gguf.utils import GGUFLinear

    if type(child) is torch.nn.Linear:
        with torch.device("meta"):
            layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None, compute_dtype=compute)
        layer.source_cls = torch.nn.Linear
        return layer
    if type(child) is torch.nn.Embedding and child.max_norm is None:  # max_norm would rewrite the table
        with torch.device("meta"):
            layer = GGUFEmbedding(child.num_embeddings, child.embedding_dim, child.padding_idx)
        layer.compute_dtype = compute
        return layer
    if type(child) is torch.nn.Conv2d and child.padding_mode == "zeros":
        with torch.device("meta"):
            layer = GGUFConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                               child.padding, child.dilation, child.groups, child.bias is not None)
        layer.compute_dtype = compute
        return layer
    return None


def quantize_layers(model: torch.nn.Module, tensors: dict[str, Any], compute: torch.dtype) -> set[str]:
    """Swap (on the meta device) each Linear/Conv2d whose weight in `tensors` is quantized for a layer
    holding its blocks; returns the weight keys now set (the caller loads the rest). A module that two
    parents share becomes one quantized module, and keys given the same file tensor (tied weights, T5's
    `shared` and `encoder.embed_tokens`) one table, read once."""
    done: set[str] = set()
    swapped: dict[int, torch.nn.Module] = {}
    read: dict[int, Any] = {}  # id(file tensor) -> its blocks
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            key = f"{parent_name}.{name}.weight" if parent_name else f"{name}.weight"
            if id(child) in swapped:
                parent._modules[name] = swapped[id(child)]
                done.add(key)
                continue
            value = tensors.get(key)
            if value is None or not _fits(value, child):
                continue
            layer = _swap(child, compute)
            if layer is None:
                continue
            if id(value) not in read:
                read[id(value)] = _blocks(value)
            layer.weight = read[id(value)]
            layer.requires_grad_(False)
            parent._modules[name] = layer
            swapped[id(child)] = layer
            done.add(key)
    return done


def float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (a quantized layer's blocks are bytes)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a module computes in: a module whose weights are stored in another type (layerwise casting,
    loader._store_weights) says so in `stored_compute_dtype`; else its parameters' (`float_dtype`)."""
    return getattr(module, "stored_compute_dtype", None) or float_dtype(module)


def set_dtype(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """`module.to(dtype)`, and its quantized layers compute in `dtype` too (their blocks stay as they are)."""
    module.to(dtype)
    for layer in module.modules():
        if hasattr(getattr(layer, "weight", None), "quant_type") and hasattr(layer, "compute_dtype"):
            layer.compute_dtype = dtype


def is_quantized(model: Any) -> bool:
    """Whether layers were kept quantized (fp8 storage and weight patches must leave them alone)."""
    return bool(getattr(model, "patches", {}).get("gguf_quantized"))
