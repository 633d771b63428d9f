"""What both upscale scripts share: the upscaler choice (AUTOMATIC1111 sends its list index or a name),
saving a finished picture as the engine saves samples, and keys added to an infotext."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from ...core.images import NamingContext, save_image
from ...core.infotext import format_infotext, parse_infotext
from ...extensions.script_args import ScriptArgsError


@dataclass
class ScriptServices:
    """What the scripts need from the app: the upscaler list and runner, and the engine (to save)."""

    upscaler_names: Callable[[], list[str]]
    upscale: Callable[..., Image.Image]     # (image, name, size=(w, h), check=...) -> image
    engine: Any = None


def upscaler_name(services: ScriptServices, value: Any, field: str) -> str:
    """AUTOMATIC1111's `upscaler_index`: a position in /sdapi/v1/upscalers' list, or a name (any case)."""
    names = services.upscaler_names()
    if isinstance(value, bool):
        raise ScriptArgsError(field, "must be an upscaler's index or name")
    if isinstance(value, (int, float)) and float(value).is_integer():
        if 0 <= int(value) < len(names):
            return names[int(value)]
        raise ScriptArgsError(field, f"must be an index from 0 to {len(names) - 1} of /sdapi/v1/upscalers")
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.strip().lower():
                return name
        raise ScriptArgsError(field, f"unknown upscaler {value!r} (known: {', '.join(names)})")
    raise ScriptArgsError(field, "must be an upscaler's index or name")


def with_params(text: str, params: dict[str, Any]) -> str:
    """`text` (an infotext) with these keys added or replaced."""
    info = parse_infotext(text)
    merged: dict[str, Any] = dict(info.params)
    merged.pop("Version", None)
    version = info.params.get("Version")
    merged.update(params)
    if version:
        merged["Version"] = version
    return format_infotext(info.prompt, info.negative_prompt, merged)


def save_sample(engine: Any, request: Any, image: Image.Image, text: str, seed: int) -> str | None:
    """Save as the engine saves a generated image (img2img's folder, the samples' pattern); None when not saving."""
    settings = engine.settings
    if not (request.save_images and settings.get("samples_save")):
        return None
    ctx = NamingContext(seed=seed, prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                        cfg_scale=request.cfg_scale, sampler=request.sampler_name, scheduler=request.scheduler,
                        width=image.width, height=image.height)
    path = save_image(image, engine.output_folder(request.mode), settings.get("samples_filename_pattern"), ctx,
                      settings.get("samples_format"), text if settings.get("enable_pnginfo") else None,
                      settings.get("jpeg_quality"))
    for listener in engine.image_listeners:
        listener(str(path), image, text)
    return str(path)


def round_up8(value: int, low: int = 64) -> int:
    """A request side: a multiple of 8, at least `low` (Easel's GenerationRequest needs both)."""
    return max(low, -(-int(value) // 8) * 8)
