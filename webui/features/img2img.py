"""Image-side preparation for img2img, inpainting and outpainting (pixels only, no model).

- resize modes as AUTOMATIC1111 numbers them: 0 just resize, 1 crop and resize,
  2 resize and fill, 3 just resize (latent upscale: the resize happens on latents);
- masks: white = change; blur in x/y; invert; a binary latent-resolution copy;
- "fill" masked content: the masked area painted with the blurred colours around it;
- "only masked": the padded bounding box of the mask, widened to the output's aspect
  ratio, is what gets generated, then scaled back and pasted into the original;
- outpainting: a larger canvas with the image placed inside, the new border filled,
  and a mask over the new border that reaches a little into the image for blending;
- overlay: after generation the original pixels are put back outside the (blurred) mask,
  so untouched areas come back exactly (soft inpainting passes its own per-pixel opacity).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_JUST, RESIZE_CROP, RESIZE_FILL, RESIZE_LATENT = 0, 1, 2, 3
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = 0, 1, 2, 3
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


def resize_image(image: Image.Image, width: int, height: int, mode: int = RESIZE_JUST) -> Image.Image:
    image = image.convert("RGB")
    if mode in (RESIZE_JUST, RESIZE_LATENT):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == RESIZE_CROP:
        scale = width / image.width if ratio > src_ratio else height / image.height
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.Resampling.LANCZOS)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # resize and fill: fit inside, then stretch the edge pixels into the empty bands
    scale = width / image.width if ratio < src_ratio else height / image.height
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    left, top = (width - fitted.width) // 2, (height - fitted.height) // 2
    canvas.paste(fitted, (left, top))
    if left > 0:
        canvas.paste(fitted.crop((0, 0, 1, fitted.height)).resize((left, fitted.height)), (0, top))
        right = width - left - fitted.width
        canvas.paste(fitted.crop((fitted.width - 1, 0, fitted.width, fitted.height)).resize((right, fitted.height)),
                     (left + fitted.width, top))
    if top > 0:
        canvas.paste(fitted.crop((0, 0, fitted.width, 1)).resize((fitted.width, top)), (left, 0))
        bottom = height - top - fitted.height
        canvas.paste(fitted.crop((0, fitted.height - 1, fitted.width, fitted.height)).resize((fitted.width, bottom)),
                     (left, top + fitted.height))
    return canvas


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur_x: int = 4, blur_y: int = 4,
                 invert: bool = False) -> Image.Image:
    """Greyscale mask at `size`, white = area to change, blurred separately along x and y."""
    mask = mask_to_l(mask)
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    if invert:
        mask = ImageOps.invert(mask)
    array = np.asarray(mask, dtype=np.float32)
    for axis, radius in ((1, blur_x), (0, blur_y)):
        if radius > 0:
            array = _gaussian_1d(array, radius, axis)
    return Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8), "L")


def mask_to_l(mask: Image.Image) -> Image.Image:
    """A painted layer (transparent where untouched) counts by its opacity; otherwise by brightness."""
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
        return mask.getchannel("A")
    return mask.convert("L")


def _gaussian_1d(array: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    half = max(1, int(round(2.5 * sigma)))
    xs = np.arange(-half, half + 1, dtype=np.float32)
    kernel = np.exp(-(xs ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(array, [(half, half) if a == axis else (0, 0) for a in range(2)], mode="edge")
    return np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, padded)


def latent_mask(mask: Image.Image, latent_size: tuple[int, int], rounded: bool = True) -> np.ndarray:
    """The mask at latent resolution: binary (0/1) as AUTOMATIC1111 rounds it, or its fractions (`mask_round`
    off, AUTOMATIC1111's unrounded latent mask: the blend follows the blurred edge)."""
    small = mask.convert("L").resize(latent_size, Image.Resampling.BILINEAR)
    values = np.asarray(small, dtype=np.float32) / 255.0
    return np.round(values) if rounded else values


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Paint the masked area with progressively blurred colours from around it ("fill").

    The kept pixels are blurred with premultiplied alpha at shrinking radii and layered, so
    the hole fills with the surrounding colours; the kept pixels themselves stay exact.
    """
    image = image.convert("RGB")
    keep = ImageOps.invert(mask.convert("L")).point(lambda v: 255 if v > 0 else 0)
    source = image.convert("RGBA")
    source.putalpha(keep)
    premultiplied = source.convert("RGBa")
    layers = Image.new("RGBA", image.size, (0, 0, 0, 0))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = (premultiplied.filter(ImageFilter.GaussianBlur(radius)) if radius else premultiplied).convert("RGBA")
        for _ in range(repeats):
            layers.alpha_composite(blurred)
    return Image.composite(image, layers.convert("RGB"), keep)


@dataclass(frozen=True)
class CropRegion:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


def masked_region(mask: Image.Image, padding: int, target: tuple[int, int]) -> CropRegion | None:
    """Bounding box of the mask plus padding, widened to the target aspect ratio, inside the image."""
    bbox = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
    if bbox is None:
        return None
    width, height = mask.size
    left, top = max(bbox[0] - padding, 0), max(bbox[1] - padding, 0)
    right, bottom = min(bbox[2] + padding, width), min(bbox[3] + padding, height)
    ratio = target[0] / target[1]
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < ratio:  # widen
        grow = min(width, round(box_h * ratio)) - box_w
        left, right = _grow(left, right, grow, width)
    else:  # make taller
        grow = min(height, round(box_w / ratio)) - box_h
        top, bottom = _grow(top, bottom, grow, height)
    return CropRegion(left, top, right, bottom)


def _grow(low: int, high: int, amount: int, limit: int) -> tuple[int, int]:
    low -= amount // 2
    high += amount - amount // 2
    if low < 0:
        high, low = min(limit, high - low), 0
    if high > limit:
        low, high = max(0, low - (high - limit)), limit
    return low, high


def outpaint_canvas(image: Image.Image, left: int, right: int, up: int, down: int,
                    overlap: int = 8) -> tuple[Image.Image, Image.Image]:
    """(canvas with the image inside and the new border filled, mask over the border + overlap)."""
    image = image.convert("RGB")
    width, height = image.width + left + right, image.height + up + down
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (left, up))
    mask = Image.new("L", (width, height), 255)
    inner = (left + (overlap if left else 0), up + (overlap if up else 0),
             left + image.width - (overlap if right else 0), up + image.height - (overlap if down else 0))
    mask.paste(0, inner)
    original_area = Image.new("L", (width, height), 255)
    original_area.paste(0, (left, up, left + image.width, up + image.height))
    return fill_masked(canvas, original_area), mask


def overlay(result: Image.Image, original: Image.Image, mask: Image.Image,
            region: CropRegion | None = None, alpha: np.ndarray | None = None) -> Image.Image:
    """Put `result` into the original through the mask (white = take the result).

    `alpha` (float 0..1 at the original's size; soft inpainting) replaces the mask; where
    it is 0 the original's pixels come back exactly.
    """
    original = original.convert("RGB")
    if region is not None:
        placed = original.copy()
        placed.paste(result.resize(region.size, Image.Resampling.LANCZOS), (region.left, region.top))
        result = placed
    if alpha is not None:
        base = np.asarray(original, dtype=np.float64)
        new = np.asarray(result.convert("RGB"), dtype=np.float64)
        mixed = base + alpha[..., None] * (new - base)
        return Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8), "RGB")
    return Image.composite(result.convert("RGB"), original, mask.convert("L"))


@dataclass
class PreparedImage:
    """One init image made ready for the model, plus what is needed to put the result back."""

    target: Image.Image                 # what is encoded, at the generation size
    mask: Image.Image | None            # blurred mask at the generation size (white = change)
    original: Image.Image               # the picture the result is composited into
    overlay_mask: Image.Image | None    # mask at the original's size
    region: CropRegion | None = None    # "only masked": where the generated crop goes back
    resize_latents: bool = False        # resize mode 3: encode at the image's own size, resize latents
    latent_mask: Image.Image | None = None  # `latent_mask` at the generation size: the latent blend's own mask


def round8(value: int) -> int:
    return max(64, (value + 7) // 8 * 8)


def generation_size(request, image: Image.Image) -> tuple[int, int]:
    """Outpainting generates the whole enlarged canvas (rounded up to /8); otherwise the request's size."""
    sides = (request.outpaint_left, request.outpaint_right, request.outpaint_up, request.outpaint_down)
    if any(sides):
        return round8(image.width + sides[0] + sides[1]), round8(image.height + sides[2] + sides[3])
    return request.width, request.height


def mask_blurs(request) -> tuple[int, int]:
    """(x, y) blur radii: AUTOMATIC1111's `mask_blur_x` / `mask_blur_y`, each `mask_blur` when not given."""
    blur = request.mask_blur
    x, y = getattr(request, "mask_blur_x", None), getattr(request, "mask_blur_y", None)
    return (blur if x is None else x), (blur if y is None else y)


def _shaped_latent_mask(request, image: Image.Image, size: tuple[int, int],
                        region: CropRegion | None) -> Image.Image | None:
    """`latent_mask` (not blurred, not inverted, as AUTOMATIC1111 uses it) in the generated picture's geometry."""
    given = getattr(request, "latent_mask", None)
    if given is None:
        return None
    mask = mask_to_l(given)
    if region is not None:
        return mask.resize(image.size, Image.Resampling.LANCZOS).crop(region.box).resize(size, Image.Resampling.LANCZOS)
    return resize_image(mask.convert("RGB"), *size, request.resize_mode).convert("L")


def prepare_image(request, image: Image.Image, user_mask: Image.Image | None) -> tuple[PreparedImage, tuple[int, int]]:
    image = image.convert("RGB")
    size = generation_size(request, image)
    blur = request.mask_blur
    blur_x, blur_y = mask_blurs(request)
    sides = (request.outpaint_left, request.outpaint_right, request.outpaint_up, request.outpaint_down)
    if any(sides):
        canvas, border = outpaint_canvas(image, *sides, overlap=max(8, blur * 2))
        full_mask = prepare_mask(border, canvas.size, blur, blur)
        target = canvas.resize(size, Image.Resampling.LANCZOS)
        mask = full_mask.resize(size, Image.Resampling.LANCZOS)
        if request.inpainting_fill == FILL:
            target = fill_masked(target, mask)
        return PreparedImage(target, mask, canvas, full_mask), size
    if user_mask is None:
        prepared = PreparedImage(resize_image(image, *size, request.resize_mode), None, image, None,
                                 resize_latents=request.resize_mode == RESIZE_LATENT)
        if prepared.resize_latents:
            prepared.target = image.resize((round8(image.width), round8(image.height)), Image.Resampling.LANCZOS)
        return prepared, size
    invert = bool(request.inpainting_mask_invert)
    if request.inpaint_full_res:
        full_mask = prepare_mask(user_mask, image.size, blur_x, blur_y, invert)
        region = masked_region(full_mask, request.inpaint_full_res_padding, size)
        if region is not None:
            target = image.crop(region.box).resize(size, Image.Resampling.LANCZOS)
            mask = full_mask.crop(region.box).resize(size, Image.Resampling.LANCZOS)
            latent = _shaped_latent_mask(request, image, size, region)
            if request.inpainting_fill == FILL:  # AUTOMATIC1111 fills where the latent mask says
                target = fill_masked(target, latent if latent is not None else mask)
            return PreparedImage(target, mask, image, full_mask, region, latent_mask=latent), size
    resized = resize_image(image, *size, request.resize_mode)
    mask = prepare_mask(resize_image(mask_to_l(user_mask).convert("RGB"), *size, request.resize_mode).convert("L"),
                        size, blur_x, blur_y, invert)
    latent = _shaped_latent_mask(request, image, size, None)
    fill_area = latent if latent is not None else mask
    target = fill_masked(resized, fill_area) if request.inpainting_fill == FILL else resized
    return PreparedImage(target, mask, resized, mask, latent_mask=latent), size


def finish_image(result: Image.Image, prepared: PreparedImage, alpha: np.ndarray | None = None) -> Image.Image:
    """Composite the generated picture back: exact original pixels outside the mask.

    `alpha`: per-pixel opacity at the original's size instead of the mask (soft inpainting).
    """
    if prepared.overlay_mask is None:
        return result
    if prepared.region is not None:
        return overlay(result, prepared.original, prepared.overlay_mask, prepared.region, alpha)
    if result.size != prepared.original.size:
        result = result.resize(prepared.original.size, Image.Resampling.LANCZOS)
    return overlay(result, prepared.original, prepared.overlay_mask, alpha=alpha)
