"""Bounds on what the server makes, checked before any work starts.

`img_max_size_mp` bounds what comes in; these bound what goes out. A 13 KB extras request
asking for an 8x upscale of a 1500x1500 image would otherwise make a 144-megapixel image
(432 MB of pixels, more while it is encoded). Two settings:

- `img_max_output_mp`: the largest single image (an upscale, a hires pass, an outpainted canvas);
- `job_max_output_mp`: the pixels one job returns in all (images x their size), which bounds
  the memory a job holds and the bytes of its response.

Each refusal is a FieldError on the field that asked for the size, saying the size and the
setting, e.g. "the result would be 12000x12000 (144 MP), over the 40 MP limit (setting
img_max_output_mp)".
"""
from __future__ import annotations

from typing import Any, Iterable

from .core.request import FieldError

DEFAULT_MAX_OUTPUT_MP = 40.0
DEFAULT_MAX_JOB_OUTPUT_MP = 1000.0


def _setting(settings: Any, key: str, default: float) -> float:
    value = settings.get(key) if settings is not None else None
    return float(value) if value else default


def max_output_mp(settings: Any) -> float:
    return _setting(settings, "img_max_output_mp", DEFAULT_MAX_OUTPUT_MP)


def max_job_output_mp(settings: Any) -> float:
    return _setting(settings, "job_max_output_mp", DEFAULT_MAX_JOB_OUTPUT_MP)


def image_error(field: str, size: tuple[int, int], settings: Any, what: str = "") -> FieldError | None:
    """A FieldError when one image of `size` would be over `img_max_output_mp`; None when it fits."""
    width, height = size
    limit = max_output_mp(settings)
    megapixels = width * height / 1e6
    if megapixels <= limit:
        return None
    subject = f"{what} would become" if what else "the result would be"
    return FieldError(field, f"{subject} {width}x{height} ({megapixels:.0f} MP), over the {limit:g} MP limit "
                             "(setting img_max_output_mp)")


def total_error(field: str, sizes: Iterable[tuple[int, int]], settings: Any) -> FieldError | None:
    """A FieldError when all of `sizes` together would be over `job_max_output_mp`; None when they fit."""
    sizes = list(sizes)
    limit = max_job_output_mp(settings)
    megapixels = sum(w * h for w, h in sizes) / 1e6
    if megapixels <= limit:
        return None
    return FieldError(field, f"{len(sizes)} images would be {megapixels:.0f} MP in all, over the {limit:g} MP "
                             "limit for one job (setting job_max_output_mp)")


def generation_errors(prepared: Any, settings: Any) -> list[FieldError]:
    """Output bounds of a prepared txt2img/img2img request: the final image size and the job's total."""
    request = prepared.request
    size, field = (int(request.width), int(request.height)), "width"
    img2img = prepared.args.get("img2img")
    if img2img is not None:
        size = (int(img2img.width), int(img2img.height))
        field = "outpaint_left" if img2img.outpainting else "width"
        if img2img.mask is not None and img2img.inpaint_full_res and img2img.init_images:
            size, field = img2img.init_images[0].size, "init_images.0"  # only masked: pasted back at full size
    hires = prepared.args.get("hires")
    if hires is not None:
        size = tuple(hires.size)
        field = "hr_resize_x" if any(hires.resize) else "hr_scale"
    errors = [e for e in (image_error(field, size, settings),) if e]
    count = int(request.batch_size) * int(request.n_iter)
    total = None if errors else total_error("n_iter", [size] * count, settings)
    if total:
        errors.append(total)
    return errors
