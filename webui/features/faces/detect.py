"""Finding faces and eyes offline with the Haar cascades that ship inside opencv-python-headless.

AUTOMATIC1111 finds faces with facexlib's RetinaFace, whose weights are downloaded on
first use; Easel must work offline, and insightface's detectors download their models
too. OpenCV's Viola-Jones cascades (frontal face, eyes) are data files inside the
opencv-python-headless wheel, so they are always there. They find upright frontal faces
well and profiles or strongly tilted faces poorly; that is the trade. For each face the
two eye centres are looked for inside the upper part of the face box; when the eye
cascade does not find a plausible pair, the eyes are placed where they sit in a typical
frontal-face box, which is enough to align a face for restoration.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

DETECT_MAX_SIDE = 1024          # faces are looked for on a copy at most this large
# Eye centres as fractions of an OpenCV frontal-face box (x, y), used when the eyes are not found.
TYPICAL_LEFT_EYE = (0.33, 0.39)
TYPICAL_RIGHT_EYE = (0.67, 0.39)

_lock = threading.Lock()
_cascades: dict[str, object] = {}


class FaceDetectionUnavailable(RuntimeError):
    user_facing = True


@dataclass(frozen=True)
class Face:
    """A face in image pixels: its box (x, y, w, h) and eye centres (left/right as seen in the image)."""

    box: tuple[int, int, int, int]
    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    eyes_found: bool


def _cv2():
    try:
        import cv2
    except ImportError:
        raise FaceDetectionUnavailable("face restoration needs the opencv-python-headless package "
                                       "(see requirements.txt)") from None
    return cv2


def _cascade(name: str):
    cv2 = _cv2()
    with _lock:
        if name not in _cascades:
            classifier = cv2.CascadeClassifier(cv2.data.haarcascades + name)
            if classifier.empty():
                raise FaceDetectionUnavailable(f"OpenCV's {name} is missing from the installed opencv package")
            _cascades[name] = classifier
        return _cascades[name]


def _eye_pair(gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The most plausible pair of eye centres inside the upper 60% of a face box, or None."""
    x, y, w, h = box
    roi = gray[y:y + int(h * 0.6), x:x + w]
    if roi.size == 0:
        return None
    found = _cascade("haarcascade_eye.xml").detectMultiScale(
        roi, scaleFactor=1.05, minNeighbors=3, minSize=(max(4, w // 10),) * 2, maxSize=(max(5, w // 3),) * 2)
    centres = [(x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in found]
    expected_left = (x + TYPICAL_LEFT_EYE[0] * w, y + TYPICAL_LEFT_EYE[1] * h)
    expected_right = (x + TYPICAL_RIGHT_EYE[0] * w, y + TYPICAL_RIGHT_EYE[1] * h)
    best, best_cost = None, float("inf")
    for a in centres:
        for b in centres:
            if not a[0] < b[0]:
                continue
            separation = b[0] - a[0]
            if not (0.25 * w <= separation <= 0.65 * w) or abs(b[1] - a[1]) > 0.15 * w:
                continue
            cost = (np.hypot(a[0] - expected_left[0], a[1] - expected_left[1])
                    + np.hypot(b[0] - expected_right[0], b[1] - expected_right[1]))
            if cost < best_cost:
                best, best_cost = (a, b), cost
    return best


def detect_faces(image: Image.Image, max_faces: int = 32, min_face_fraction: float = 0.04) -> list[Face]:
    """Upright frontal faces, largest first. `min_face_fraction` of the shorter side is the smallest face."""
    cv2 = _cv2()
    rgb = np.asarray(image.convert("RGB"))
    factor = min(1.0, DETECT_MAX_SIDE / max(rgb.shape[:2]))
    if factor < 1.0:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor)),
                         interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    smallest = max(24, int(min(gray.shape) * min_face_fraction))
    boxes = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    faces = []
    for bx, by, bw, bh in sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])[:max_faces]:
        pair = _eye_pair(gray, (bx, by, bw, bh))
        if pair is None:
            pair = ((bx + TYPICAL_LEFT_EYE[0] * bw, by + TYPICAL_LEFT_EYE[1] * bh),
                    (bx + TYPICAL_RIGHT_EYE[0] * bw, by + TYPICAL_RIGHT_EYE[1] * bh))
            found = False
        else:
            found = True
        (lx, ly), (rx, ry) = pair
        faces.append(Face((round(bx / factor), round(by / factor), round(bw / factor), round(bh / factor)),
                          (lx / factor, ly / factor), (rx / factor, ry / factor), found))
    return faces
