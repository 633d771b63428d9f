"""Token tables kept in their storage type: only the looked-up rows are cast to the compute type.

diffusers' layerwise casting (fp8 storage; fp16/bf16 storage under fp32 compute on the CPU) treats an
`nn.Embedding` like any layer: before each call it casts the whole table to the compute type. For a
text encoder that is the full vocabulary for a prompt of 77 tokens: SDXL's OpenCLIP table is 49,408 x
1,280, a 253 MB fp32 copy on every encode, and T5-XXL's (Flux, SD 3) 32,128 x 4,096 is 526 MB. That
copy set the generation peak of the full-SDXL weight rows (+268 MiB over the loaded model in both
the fp16 and the fp8 row, `python -m webui.bench_weights --breakdown`).

`store_embeddings(model, storage, compute)` runs on the empty (meta) model, after layerwise casting
was set up with `nn.Embedding` skipped: each embedding's table is declared in the storage type (the
loader casts the file's table to it as it reads it) and the layer looks up its rows in the stored
table and casts just those. The result is the same number for number (a cast commutes with picking
rows). The layer stays an `nn.Embedding`, so textual inversion's hook on `get_input_embeddings()`
still sees (and edits) the rows, now in the compute type. (diffusers' hook can't be taken off a
layer once set, hence skipping embeddings when it is set up.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SKIPPED_CLASSES = (torch.nn.Embedding,)  # given to diffusers' layerwise casting: store_embeddings does these


class StoredEmbedding(torch.nn.Embedding):
    """An embedding whose table stays in its storage type; each call casts only the rows it returns."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        table = self.weight
        if table.element_size() == 1 and table.is_floating_point():  # fp8: pick rows as bytes on any device
            rows = F.embedding(input, table.view(torch.uint8), self.padding_idx).view(table.dtype)
        else:
            rows = F.embedding(input, table, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
        return rows.to(self.compute_dtype)


def store_embeddings(model: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Every plain `nn.Embedding` of the (meta) model becomes a StoredEmbedding whose table is declared in
    `storage`; returns how many. Layers with `max_norm` (renormalised in place) are left as they are."""
    changed = 0
    for module in model.modules():
        if type(module) is not torch.nn.Embedding or module.max_norm is not None:
            continue
        if module.weight.is_floating_point() and module.weight.dtype != storage:
            module.weight = torch.nn.Parameter(module.weight.to(storage), requires_grad=False)
        module.__class__ = StoredEmbedding
        module.compute_dtype = compute
        changed += 1
    return changed
