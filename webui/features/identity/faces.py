"""Face analysis with insightface: the face to copy, its 512-d identity embedding and 5 keypoints.

Models come from `models/insightface/<pack>` (setting `identity_insightface_pack`, e.g. the
antelopev2 pack: an SCRFD detector and an ArcFace recognizer as .onnx files; insightface
decides each file's task from its inputs and outputs). Only detection and recognition are
loaded. onnxruntime runs them on CUDA when its GPU provider is installed, else on the CPU.

When an image shows several faces, the largest one is used and the caller gets a note
saying so; when it shows none, the error names the image.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...paths import UnsafePathError, safe_join

DET_SIZE = (640, 640)
# the five keypoints: left eye, right eye, nose, left and right mouth corner (colours as InstantID draws them)
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # every keypoint joined to the nose


class FaceError(ValueError):
    user_facing = True


@dataclass
class Face:
    bbox: np.ndarray        # (4,) x1, y1, x2, y2 in image pixels
    kps: np.ndarray         # (5, 2)
    embedding: np.ndarray   # (512,) as the recognizer gives it (not normalised)
    score: float
    image_size: tuple[int, int]
    note: str = ""          # "several faces, used the largest" and the like

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def normed_embedding(self) -> np.ndarray:
        return self.embedding / max(float(np.linalg.norm(self.embedding)), 1e-12)


def providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def pack_folder(root: Path, pack: str) -> Path | None:
    """models/insightface/<pack> (or insightface's own <root>/models/<pack>, or a zip's doubled folder).

    `pack` comes from a setting: each candidate is joined with `safe_join`, so an absolute or
    `../` name finds nothing outside models/insightface."""
    for relative in (pack, f"models/{pack}", f"{pack}/{pack}"):
        try:
            candidate = safe_join(root, relative)
        except UnsafePathError:
            return None
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return candidate
    return None


class FaceAnalyzer:
    """One insightface detector + recognizer pair, loaded on first use and kept."""

    def __init__(self, root: Path, pack: str):
        self.root = root
        self.pack = pack
        self._app = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path | None:
        return pack_folder(self.root, self.pack)

    def _load(self):
        with self._lock:
            if self._app is not None:
                return self._app
            folder = self.folder
            if folder is None:
                raise FaceError(f"insightface models missing: put the {self.pack} pack (.onnx files) in "
                                f"{self.root / self.pack}")
            from insightface.app import FaceAnalysis

            chosen = providers()
            try:
                app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "recognition"], providers=chosen)
            except AssertionError:
                raise FaceError(f"{folder}: no face detection model among the .onnx files") from None
            if "recognition" not in app.models:
                raise FaceError(f"{folder}: no face recognition model (112x112 ArcFace) among the .onnx files")
            app.prepare(ctx_id=0 if "CUDAExecutionProvider" in chosen else -1, det_size=DET_SIZE)
            self._app = app
            return app

    def faces(self, image: Image.Image) -> list[Face]:
        """Every face found, largest first."""
        app = self._load()
        rgb = np.asarray(image.convert("RGB"))
        with self._lock:  # onnxruntime sessions are thread-safe, insightface's caches are not
            found = app.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # insightface expects BGR, as cv2 reads
        faces = [Face(np.asarray(f.bbox, dtype=np.float32), np.asarray(f.kps, dtype=np.float32),
                      np.asarray(f.embedding, dtype=np.float32), float(f.det_score), image.size) for f in found]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def largest(self, image: Image.Image, label: str) -> Face:
        """The largest face in `image`; `label` names the image in messages ("face image", "photo 2")."""
        faces = self.faces(image)
        if not faces:
            raise FaceError(f"No face found in the {label}. Use a clear photo where the face is visible "
                            "and not too small.")
        face = faces[0]
        if len(faces) > 1:
            face.note = f"{len(faces)} faces found in the {label}; used the largest."
        return face


def draw_keypoints(size: tuple[int, int], kps: np.ndarray) -> Image.Image:
    """IdentityNet's control image: the 5 keypoints on black, joined to the nose by coloured limbs.

    Limbs are ellipses 4 px wide at 60% brightness, keypoints discs of radius 10, as the
    published InstantID pipeline draws them (our drawing, same picture).
    """
    width, height = size
    limbs = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(limbs)
    for a, b in LIMBS:
        (x1, y1), (x2, y2) = kps[a], kps[b]
        length = math.hypot(x2 - x1, y2 - y1)
        angle = math.atan2(y2 - y1, x2 - x1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        points = []
        for t in range(0, 360, 10):  # an ellipse along the limb, half-width 2 (stick width 4)
            u, v = (length / 2) * math.cos(math.radians(t)), 2 * math.sin(math.radians(t))
            points.append((cx + u * math.cos(angle) - v * math.sin(angle), cy + u * math.sin(angle) + v * math.cos(angle)))
        draw.polygon(points, fill=KEYPOINT_COLOURS[a])
    picture = Image.fromarray((np.asarray(limbs, dtype=np.float32) * 0.6).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for (x, y), colour in zip(kps, KEYPOINT_COLOURS):
        draw.ellipse((x - 10, y - 10, x + 10, y + 10), fill=colour)
    return picture
