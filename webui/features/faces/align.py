"""Cutting a face out upright at 512x512 and putting the restored face back seamlessly.

Restoration models (GFPGAN, CodeFormer, RestoreFormer) were trained on FFHQ-aligned
faces: eyes at fixed points of a 512x512 crop. A similarity transform (rotation, uniform
scale, shift) maps the detected eye centres onto those points; its inverse maps the
restored crop back, and a feathered mask (eroded, then blurred) blends it in so no edge
of the square shows.
"""
from __future__ import annotations

import numpy as np

FACE_SIZE = 512
# Eye centres of the FFHQ 512x512 alignment template (left, right as seen in the image).
TEMPLATE_LEFT_EYE = (192.98138, 239.94708)
TEMPLATE_RIGHT_EYE = (318.90277, 240.1936)


def similarity(src: tuple[tuple[float, float], tuple[float, float]],
               dst: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    """The 2x3 matrix of the rotation+scale+shift taking the two `src` points onto the two `dst` points."""
    s1, s2 = complex(*src[0]), complex(*src[1])
    d1, d2 = complex(*dst[0]), complex(*dst[1])
    if s1 == s2:
        raise ValueError("the two eye points coincide")
    a = (d2 - d1) / (s2 - s1)
    b = d1 - a * s1
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def face_matrix(left_eye: tuple[float, float], right_eye: tuple[float, float], size: int = FACE_SIZE) -> np.ndarray:
    """Image -> aligned crop of `size` pixels."""
    k = size / FACE_SIZE
    dst = ((TEMPLATE_LEFT_EYE[0] * k, TEMPLATE_LEFT_EYE[1] * k), (TEMPLATE_RIGHT_EYE[0] * k, TEMPLATE_RIGHT_EYE[1] * k))
    return similarity((left_eye, right_eye), dst)


def crop_face(image: np.ndarray, matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    import cv2

    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def paste_face(image: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`image` (HxWx3 uint8) with the aligned `face` crop blended back where it was cut from."""
    import cv2

    height, width = image.shape[:2]
    size = face.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(face, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(np.ones((size, size), np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    face_pixels = size / np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # side of the crop in image pixels
    edge = max(1, int(face_pixels / 20))
    # erode by 3 sigma so the blurred mask ends inside the crop (outside it `back` is only replicated edge)
    mask = cv2.erode(mask, np.ones((6 * edge + 1, 6 * edge + 1), np.uint8))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=edge)
    mask = mask[:, :, None]
    blended = image.astype(np.float32) * (1 - mask) + back.astype(np.float32) * mask
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
