"""Face restoration (GFPGAN, CodeFormer) with whatever model file the user put in models/.

The pipeline is AUTOMATIC1111's: find faces, cut each out aligned at 512x512, run the
restoration model on it, paste it back with a soft edge. Models load through spandrel
like upscalers: GFPGAN and RestoreFormer files work with spandrel alone; CodeFormer files
work when the user has installed spandrel_extra_arches (see upscalers/loading.py).
GFPGAN and CodeFormer networks take and give images in [-1, 1] and are called directly;
other face architectures go through spandrel's call, which takes [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ...model_manager.store import ModelStore
from ...paths import model_files
from ..upscalers.catalog import PICKLE_SUFFIXES, SAFE_SUFFIXES
from ..upscalers.loading import LoadedUpscaler, ModelCache
from .align import FACE_SIZE, crop_face, face_matrix, paste_face
from .detect import Face, detect_faces

GFPGAN, CODEFORMER = "GFPGAN", "CodeFormer"
RESTORERS = {GFPGAN: "gfpgan", CODEFORMER: "codeformer"}  # name -> MODEL_FOLDERS kind


class FaceRestoreError(ValueError):
    user_facing = True


@dataclass
class FaceResult:
    image: Image.Image
    faces: list[Face]


def _to_tensor(face: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float().div_(255)


def _to_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def run_face_model(model: LoadedUpscaler, face: np.ndarray, codeformer_weight: float = 0.5) -> np.ndarray:
    """One aligned 512x512 RGB face (uint8) through the restoration network."""
    x = _to_tensor(face).to(model.device, model.dtype)
    arch = model.architecture
    with torch.inference_mode():
        if arch in ("GFPGAN", "CodeFormer"):
            net = model.descriptor.model
            net.eval()
            x = x * 2 - 1
            if arch == "GFPGAN":
                out = net(x, return_rgb=False)[0]
            else:
                out = net(x, weight=codeformer_weight, adain=True)[0]
            out = (out.float() + 1) / 2
        else:
            out = model.descriptor(x)
    return _to_array(out)


class FaceRestorers:
    """Finds the GFPGAN / CodeFormer model files and restores the faces of an image with one."""

    def __init__(self, folders: Callable[[], dict[str, list[Path]]], device: torch.device,
                 dtype: torch.dtype = torch.float32, allow_pickle: bool = False, store: ModelStore | None = None):
        self._folders = folders
        self.device = device
        self.dtype = dtype
        self.allow_pickle = allow_pickle
        self.cache = ModelCache(1, store, "face_restorer")

    def model_file(self, restorer: str) -> Path | None:
        """The file used for `restorer`: files named after it first, then the highest version by name."""
        kind = RESTORERS.get(restorer)
        if kind is None:
            raise FaceRestoreError(f"unknown face restorer {restorer!r}; choose {', '.join(RESTORERS)}")
        suffixes = SAFE_SUFFIXES + (PICKLE_SUFFIXES if self.allow_pickle else ())
        files = model_files(self._folders().get(kind, []), suffixes)
        if not files:
            return None
        named = [f for f in files if restorer.lower() in f.name.lower()]
        return sorted(named or files, key=lambda p: p.name.lower())[-1]

    def available(self) -> list[str]:
        return [name for name in RESTORERS if self.model_file(name) is not None]

    def load(self, restorer: str) -> LoadedUpscaler:
        path = self.model_file(restorer)
        if path is None:
            folder = "models/GFPGAN" if restorer == GFPGAN else "models/Codeformer"
            raise FaceRestoreError(f"no {restorer} model installed: put its .safetensors file into {folder}")
        model = self.cache.get(path, self.device, self.dtype, self.allow_pickle)
        if model.purpose != "FaceSR":
            raise FaceRestoreError(f"{path.name} is a {model.architecture} model, not a face restoration model")
        return model

    def restore(self, image: Image.Image, restorer: str, codeformer_weight: float = 0.5,
                check: Callable[[], None] | None = None, faces: list[Face] | None = None) -> FaceResult:
        """Restore every face found (or the given `faces`); an image without faces comes back unchanged."""
        model = self.load(restorer)
        rgb = image.convert("RGB")
        faces = detect_faces(rgb) if faces is None else faces
        if not faces:
            return FaceResult(rgb, [])
        pixels = np.asarray(rgb).copy()
        for face in faces:
            if check:
                check()
            matrix = face_matrix(face.left_eye, face.right_eye, FACE_SIZE)
            restored = run_face_model(model, crop_face(pixels, matrix, FACE_SIZE), codeformer_weight)
            pixels = paste_face(pixels, restored, matrix)
        return FaceResult(Image.fromarray(pixels, "RGB"), faces)

    def unload(self) -> None:
        self.cache.clear()
