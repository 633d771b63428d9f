"""A tiny random-weight RestoreFormer face model file, for the tests.

RestoreFormer's layout (a VQ autoencoder with attention at 16x16) is large to write by
hand, so its keys come from spandrel's own RestoreFormer module built with tiny sizes
(32 channels, one block per level, a 16-entry codebook). spandrel then has to recognise
the file from its keys and shapes alone, like any file a user drops into models/GFPGAN.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def write_tiny_restoreformer(path: Path, seed: int = 0) -> Path:
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    model = RestoreFormer(n_embed=16, embed_dim=32, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                          attn_resolutions=(16,), in_channels=3, resolution=512, z_channels=32, double_z=False,
                          enable_mid=True, head_size=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
