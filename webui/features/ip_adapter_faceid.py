"""IP-Adapter FaceID units: the face's insightface embedding instead of (or beside) a CLIP image.

The published h94/IP-Adapter-FaceID files (`ip-adapter-faceid_sd15.bin`, `..._sdxl.bin`,
`ip-adapter-faceid-plus(v2)_sd15.bin`, `..._sdxl.bin`) hold, under `image_proj`:

- FaceID: an MLP `proj.0` (512 -> 1024) / GELU / `proj.2` (-> tokens x cross-attention width)
  and a LayerNorm `norm`, mapping the normalised 512-d ArcFace embedding to 4 tokens;
- FaceID Plus / Plus v2: the same MLP and norm, whose tokens then attend (a four-layer
  `perceiver_resampler.*`) over the CLIP vision encoder's penultimate hidden states of the
  aligned face crop. v2 adds the MLP tokens back on top (`shortcut`, scale `s_scale` = 1,
  as AUTOMATIC1111's ControlNet extension runs it); v1 and v2 have the same keys, so the
  file name ("v2") tells them apart.

`ip_adapter.N.to_k_ip / to_v_ip` are the usual decoupled cross-attention. The files also
carry `ip_adapter.N.to_q_lora...` weights: those are the companion LoRA
(`ip-adapter-faceid_sd15_lora.safetensors` and the like) which users apply as any LoRA with
`<lora:...>` in the prompt, so they are not read here.

The face comes from the unit's image through the app's FaceAnalyzer (the Identity tab's, so
the ONNX models are loaded once): the largest face, with a note when there were several.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

FACE_CROP = 224  # the aligned face crop the Plus adapters give the CLIP encoder


def faceid_variant(name: str, image_proj: dict[str, torch.Tensor]) -> str | None:
    """faceid, faceid-plus or faceid-plusv2 from the image projection's keys (None: not FaceID)."""
    if "perceiver_resampler.proj_in.weight" in image_proj:
        return "faceid-plusv2" if "v2" in name.lower() else "faceid-plus"
    if "norm.weight" in image_proj and "proj.0.weight" in image_proj and "proj.2.weight" in image_proj:
        return "faceid"
    return None


def reads_without_allow_pickle(path: Path) -> bool:
    """FaceID adapters are published only as .bin: read them with the weights-only unpickler, as identity files are."""
    return path.suffix != ".safetensors" and "faceid" in path.name.lower()


def unit_face(analyzer_factory: Callable[[], object] | None, image: Image.Image, index: int, adapter_name: str):
    """The largest face in unit `index`'s image (insightface Face), or a message naming the unit / files."""
    from .ip_adapter import IPAdapterError

    if analyzer_factory is None:
        raise IPAdapterError(f"ControlNet unit {index}: {adapter_name} is a FaceID adapter, and face analysis "
                             "(insightface) is not set up in this Easel")
    analyzer = analyzer_factory()
    if analyzer.folder is None:
        raise IPAdapterError(
            f"ControlNet unit {index}: FaceID adapter {adapter_name} needs insightface models ({analyzer.pack} "
            f"pack: detection and recognition .onnx files): {analyzer.root / analyzer.pack}/")
    return analyzer.largest(image, f"ControlNet unit {index} image")


def aligned_crop(image: Image.Image, keypoints: np.ndarray, size: int = FACE_CROP) -> Image.Image:
    """The face warped onto insightface's canonical 5-point template (what the Plus adapters' CLIP sees)."""
    from insightface.utils import face_align

    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    return Image.fromarray(face_align.norm_crop(rgb, landmark=np.asarray(keypoints, dtype=np.float32), image_size=size))


def face_embedding(face) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) id embeddings laid out (batch 1, one image, 512): the normalised face, zeros."""
    positive = torch.from_numpy(np.asarray(face.normed_embedding, dtype=np.float32)).reshape(1, 1, -1)
    return positive, torch.zeros_like(positive)


def configure_projection(layer, shortcut: bool) -> None:
    """Plus v2 adds the MLP's tokens to the perceiver's output (s_scale 1); v1 does not."""
    layer.shortcut = shortcut
    layer.shortcut_scale = 1.0
