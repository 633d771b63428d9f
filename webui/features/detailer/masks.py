"""Detections -> the masks a detailer pass inpaints, one after the other (ADetailer's mask options).

Order of operations as ADetailer applies them: keep detections whose area is within the
min/max ratio of the image, keep the k largest (0: all), then per mask: dilate (positive
`ad_dilate_erode`) or erode (negative) with a square kernel of that size, shift by the x/y
offset (y up is positive, as ADetailer's UI says), and optionally merge all masks into one
(and invert it). A box detector's mask is its box; a segmentation model's is its mask.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .args import PassArgs
from .detect import Detection


def detection_mask(detection: Detection, size: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the segmentation mask, or the box rounded outwards."""
    if detection.mask is not None:
        return detection.mask.astype(bool)
    width, height = size
    x1, y1, x2, y2 = detection.box
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, int(np.floor(y1))):min(height, int(np.ceil(y2))), max(0, int(np.floor(x1))):min(width, int(np.ceil(x2)))] = True
    return mask


def _area(detection: Detection) -> float:
    if detection.mask is not None:
        return float(detection.mask.sum())
    x1, y1, x2, y2 = detection.box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def filter_detections(detections: list[Detection], unit: PassArgs, size: tuple[int, int]) -> list[Detection]:
    total = float(size[0] * size[1])
    kept = [d for d in detections if unit.ad_mask_min_ratio <= _area(d) / total <= unit.ad_mask_max_ratio]
    if unit.ad_mask_k_largest > 0:
        largest = sorted(range(len(kept)), key=lambda i: -_area(kept[i]))[:unit.ad_mask_k_largest]
        kept = [kept[i] for i in sorted(largest)]  # the detector's order, as ADetailer keeps it
    return kept


def dilate_erode(mask: np.ndarray, value: int) -> np.ndarray:
    """Grow (value > 0) or shrink (value < 0) with a value x value square kernel."""
    if value == 0:
        return mask
    import cv2

    kernel = np.ones((abs(value), abs(value)), np.uint8)
    operation = cv2.dilate if value > 0 else cv2.erode
    return operation(mask.astype(np.uint8), kernel, iterations=1).astype(bool)


def offset(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """Shift right by x and up by y pixels; what leaves the picture is dropped."""
    if x == 0 and y == 0:
        return mask
    height, width = mask.shape
    out = np.zeros_like(mask)
    dy = -y
    src = mask[max(0, -dy):height - max(0, dy), max(0, -x):width - max(0, x)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, x):max(0, x) + src.shape[1]] = src
    return out


def pass_masks(detections: list[Detection], unit: PassArgs, size: tuple[int, int]) -> list[Image.Image]:
    """The masks ("L", white = repaint) this pass inpaints, in order; [] when nothing is left to do."""
    kept = filter_detections(detections, unit, size)
    masks = [offset(dilate_erode(detection_mask(d, size), unit.ad_dilate_erode), unit.ad_x_offset, unit.ad_y_offset)
             for d in kept]
    masks = [m for m in masks if m.any()]
    if masks and unit.ad_mask_merge_invert != "None":
        merged = np.logical_or.reduce(masks)
        if unit.ad_mask_merge_invert == "Merge and Invert":
            merged = ~merged
        masks = [merged] if merged.any() else []
    return [Image.fromarray(m.astype(np.uint8) * 255, "L") for m in masks]
