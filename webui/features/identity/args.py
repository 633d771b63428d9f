"""The identity request: `alwayson_scripts["identity"]["args"]`, like ControlNet's units.

Keeping it request data (not UI state) means the tab, the API and a pasted infotext all
reach the engine the same way. Fields: method ("InstantID", "PhotoMaker v1", "PhotoMaker
v2"), images (1-4 photos; InstantID uses the first), pose_image (InstantID, optional),
adapter_strength / identitynet_strength (InstantID), guidance_start / guidance_end (InstantID:
the fractions of the steps between which the IdentityNet applies, like a ControlNet unit's
starting/ending control step; the face adapter applies throughout, as in the InstantID
pipeline), style_strength (PhotoMaker: percent of the steps before the identity applies) and
lora_weight (PhotoMaker's LoRA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ...core.image_input import ImageInputError, decode_base64_image
from ...core.request import FieldError, is_number

SCRIPT = "identity"
METHODS = ("InstantID", "PhotoMaker v1", "PhotoMaker v2")
TRIGGER = "img"
MAX_PHOTOS = 4
# numeric fields and their accepted ranges (the tab's sliders span the same)
RANGES = {"adapter_strength": (0, 2), "identitynet_strength": (0, 2), "guidance_start": (0, 1), "guidance_end": (0, 1),
          "style_strength": (0, 100), "lora_weight": (0, 2)}


@dataclass
class IdentityArgs:
    method: str = "InstantID"
    images: list[Image.Image] = field(default_factory=list)
    pose_image: Image.Image | None = None
    adapter_strength: float = 0.8
    identitynet_strength: float = 0.8
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    style_strength: float = 20.0
    lora_weight: float = 1.0

    @property
    def photomaker(self) -> bool:
        return self.method.startswith("PhotoMaker")


def _image(value: Any, name: str) -> Image.Image | None:
    """PIL images pass; strings are base64 (never a path)."""
    if value is None or isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return _image(value.get("image"), name)
    if isinstance(value, str):
        try:
            return decode_base64_image(value, name)
        except ImageInputError as exc:
            raise ValueError(f"must be a base64-encoded image ({str(exc).removeprefix(f'{name}: ')})") from None
    raise ValueError("must be an image")


def parse_identity(alwayson: dict[str, Any]) -> tuple[IdentityArgs | None, list[FieldError]]:
    """(args, errors); (None, []) when the request does not ask for identity."""
    entry = alwayson.get(SCRIPT) if isinstance(alwayson, dict) else None
    if entry is None:
        return None, []
    where = f"alwayson_scripts.{SCRIPT}.args"
    data = entry.get("args", entry) if isinstance(entry, dict) else None
    if isinstance(data, list):  # positional form: one dict in a list, as scripts send it
        data = data[0] if len(data) == 1 and isinstance(data[0], dict) else None
    if not isinstance(data, dict):
        return None, [FieldError(where, "must be an object with method, images and strengths")]
    if data.get("enabled") is False:
        return None, []
    errors: list[FieldError] = []
    args = IdentityArgs()
    method = data.get("method", args.method)
    if method not in METHODS:
        errors.append(FieldError(f"{where}.method", f"must be one of {', '.join(METHODS)}"))
    else:
        args.method = method
    raw_images = data.get("images") or []
    if not isinstance(raw_images, list):
        raw_images = [raw_images]
    for i, value in enumerate(raw_images):
        try:
            image = _image(value, f"images[{i}]")
        except ValueError as exc:
            errors.append(FieldError(f"{where}.images[{i}]", str(exc)))
            continue
        if image is not None:
            args.images.append(image)
    if not args.images:
        errors.append(FieldError(f"{where}.images", "upload a photo of the person (1 to 4 photos)"))
    elif len(args.images) > MAX_PHOTOS:
        errors.append(FieldError(f"{where}.images", f"at most {MAX_PHOTOS} photos"))
    try:
        args.pose_image = _image(data.get("pose_image"), "pose_image")
    except ValueError as exc:
        errors.append(FieldError(f"{where}.pose_image", str(exc)))
    for name, (low, high) in RANGES.items():
        value = data.get(name, getattr(args, name))
        if not is_number(value) or not low <= value <= high:
            errors.append(FieldError(f"{where}.{name}", f"must be a number from {low} to {high}"))
        else:
            setattr(args, name, float(value))
    if args.guidance_start > args.guidance_end:
        errors.append(FieldError(f"{where}.guidance_end", "must not be before guidance_start"))
    unknown = sorted(set(data) - {"enabled", "method", "images", "pose_image", *RANGES})
    errors += [FieldError(f"{where}.{name}", "unknown field") for name in unknown]
    return (None if errors else args), errors


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(round(float(value), 4))


def identity_infotext(args: IdentityArgs, files: dict[str, str]) -> str:
    """`Method: InstantID, Adapter: name [hash], ...` (the value of the `Identity` infotext key)."""
    parts = [("Method", args.method)] + list(files.items())
    if args.photomaker:
        parts += [("Style strength", _num(args.style_strength)), ("LoRA weight", _num(args.lora_weight)),
                  ("Photos", len(args.images))]
    else:
        parts += [("Adapter strength", _num(args.adapter_strength)),
                  ("IdentityNet strength", _num(args.identitynet_strength))]
        if (args.guidance_start, args.guidance_end) != (0.0, 1.0):  # the default (all steps) is left out
            parts += [("Guidance start", _num(args.guidance_start)), ("Guidance end", _num(args.guidance_end))]
        parts += [("Pose image", args.pose_image is not None)]
    return ", ".join(f"{k}: {v}" for k, v in parts)


def parse_identity_infotext(text: str) -> dict[str, Any]:
    """The `Identity` value back to fields (for PNG Info / Send to).

    Text from any image is untrusted: an entry whose number does not read (or is not finite)
    is left out rather than failing the whole paste.
    """
    fields: dict[str, Any] = {}
    names = {"Method": "method", "Adapter strength": "adapter_strength", "IdentityNet strength": "identitynet_strength",
             "Guidance start": "guidance_start", "Guidance end": "guidance_end",
             "Style strength": "style_strength", "LoRA weight": "lora_weight", "Adapter": "adapter",
             "IdentityNet": "identitynet", "Encoder": "encoder", "Photos": "photos", "Pose image": "pose_image"}
    for part in str(text).split(", "):
        key, _, value = part.partition(": ")
        name = names.get(key.strip())
        if name is None:
            continue
        value = value.strip()
        if name in RANGES or name == "photos":
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                fields[name] = int(number) if name == "photos" else number
        elif name == "pose_image":
            fields[name] = value == "True"
        else:
            fields[name] = value
    return fields
