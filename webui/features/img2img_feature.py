"""img2img, inpainting and outpainting as one feature of the engine's first pass.

`validate` checks the img2img fields; `begin` prepares every input picture once (resize,
mask, outpaint canvas, only-masked crop) and gives the first pass its size, strength and
init step; the init step encodes the batch's pictures and, with a mask, fills the masked
latents, wraps the denoiser so the unmasked area follows the original (binary, or soft
inpainting's per-pixel weights) and hands 9-channel models their mask; `finish_images`
puts each result back into its original (the soft composite when that is on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from PIL import Image

from ..core import latents as latents_io
from ..core.pipeline import Batch, Feature, Pass, Run, Sampling
from ..core.request import FieldError, ValidationError, int_in, is_number
from . import soft_inpaint
from .hires import upscale_latents
from .img2img import (LATENT_NOISE, LATENT_NOTHING, MASKED_CONTENT, RESIZE_MODES, PreparedImage, latent_mask,
                      mask_blurs, prepare_image)

if TYPE_CHECKING:
    from ..core.request import GenerationRequest
    from ..model_manager.loader import LoadedModel


@dataclass(frozen=True)
class Img2ImgArgs:
    """img2img / inpaint / outpaint as the engine uses them, parsed once from AUTOMATIC1111's flat fields."""

    init_images: tuple[Image.Image, ...]
    mask: Image.Image | None
    denoising_strength: float
    width: int                      # the generation size (outpainting grows it to the canvas)
    height: int
    resize_mode: int                # index into RESIZE_MODES
    mask_blur: int
    inpainting_fill: int            # index into MASKED_CONTENT
    inpaint_full_res: bool          # "Only masked": generate the masked region at full size
    inpaint_full_res_padding: int
    inpainting_mask_invert: int
    outpaint_left: int
    outpaint_right: int
    outpaint_up: int
    outpaint_down: int
    mask_blur_x: int                # AUTOMATIC1111's separate blur radii (mask_blur when not given)
    mask_blur_y: int
    mask_round: bool                # False: the latent blend follows the mask's fractions
    latent_mask: Image.Image | None  # the latent blend's own mask (AUTOMATIC1111's)
    initial_noise_multiplier: float | None  # None: the `initial_noise_multiplier` setting

    @property
    def outpainting(self) -> bool:
        return any((self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down))


_FIELDS = [name for name in Img2ImgArgs.__dataclass_fields__ if name not in ("init_images",)]


@dataclass
class Img2ImgInputs:
    images: list[PreparedImage]
    size: tuple[int, int]


class Img2Img(Feature):
    name = "img2img"

    def parse(self, request: "GenerationRequest") -> tuple[Img2ImgArgs | None, list[FieldError]]:
        """The init images, mask and settings (None for txt2img); errors name AUTOMATIC1111's fields."""
        if request.mode != "img2img":
            return None, []
        errors = list(self._errors(request))
        if errors:
            return None, errors
        values = {name: getattr(request, name) for name in _FIELDS}
        values["inpaint_full_res"] = bool(values["inpaint_full_res"])
        values["mask_blur_x"], values["mask_blur_y"] = mask_blurs(request)
        return Img2ImgArgs(init_images=tuple(request.init_images), **values), []

    def _errors(self, request: "GenerationRequest") -> Iterator[FieldError]:
        if not isinstance(request.init_images, list) or not request.init_images:
            yield FieldError("init_images", "img2img needs at least one image")
        elif not all(isinstance(i, Image.Image) for i in request.init_images):
            yield FieldError("init_images", "must be images")
        if request.mask is not None and not isinstance(request.mask, Image.Image):
            yield FieldError("mask", "must be an image")
        if not is_number(request.denoising_strength) or not 0 <= request.denoising_strength <= 1:
            yield FieldError("denoising_strength", "must be a number from 0 to 1")
        yield from int_in(request, "resize_mode", 0, 3)
        yield from int_in(request, "mask_blur", 0, 64)
        yield from int_in(request, "inpainting_fill", 0, 3)
        yield from int_in(request, "inpaint_full_res_padding", 0, 256)
        yield from int_in(request, "inpainting_mask_invert", 0, 1)
        for side in ("left", "right", "up", "down"):
            yield from int_in(request, f"outpaint_{side}", 0, 2048)
        for name in ("mask_blur_x", "mask_blur_y"):
            if getattr(request, name) is not None:
                yield from int_in(request, name, 0, 64)
        if not isinstance(request.mask_round, bool):
            yield FieldError("mask_round", "must be true or false")
        if request.latent_mask is not None:
            if not isinstance(request.latent_mask, Image.Image):
                yield FieldError("latent_mask", "must be an image")
            elif request.mask is None:
                yield FieldError("latent_mask", "needs a mask: it replaces the mask in the latent blend")
            elif any((request.outpaint_left, request.outpaint_right, request.outpaint_up, request.outpaint_down)):
                yield FieldError("latent_mask", "is not used with outpainting, whose mask is the new border")
        multiplier = request.initial_noise_multiplier
        if multiplier is not None and (not is_number(multiplier) or not 0 <= multiplier <= 1.5):
            yield FieldError("initial_noise_multiplier", "must be empty or a number from 0 to 1.5")

    def begin(self, run: Run) -> None:
        args: Img2ImgArgs | None = run.args.get(self.name)
        if args is None:
            return
        prepared, sizes = [], set()
        for image in args.init_images:
            item, size = prepare_image(args, image, args.mask)
            prepared.append(item)
            sizes.add(size)
        if len(sizes) > 1:
            raise ValidationError([FieldError("init_images", "outpainting images of different sizes in one request")])
        inputs = run.state[self.name] = Img2ImgInputs(prepared, sizes.pop())
        first = run.first
        first.size, first.strength, first.init = inputs.size, args.denoising_strength, self._init
        first.source_image = inputs.images[0].target  # a ControlNet unit without an image of its own uses it

    def prepare_batch(self, run: Run, batch: Batch) -> None:
        inputs: Img2ImgInputs | None = run.state.get(self.name)
        if inputs is not None:
            images = inputs.images
            batch.items[self.name] = [images[(batch.first + i) % len(images)] for i in range(len(batch.seeds))]

    def _init(self, run: Run, p: Pass, sampling: Sampling) -> None:
        args, model = run.args[self.name], p.plan.model
        prepared: list[PreparedImage] = sampling.batch.items[self.name]
        init = _encode_targets(model, prepared, p.size)
        if model.architecture.adapter.image_reference:  # Kontext: the image is also a reference throughout
            sampling.denoiser.set_reference(init)
        masks = [item.mask for item in prepared]
        if all(m is not None for m in masks):
            latent_size = (init.shape[-1], init.shape[-2])
            blend = [item.latent_mask if item.latent_mask is not None else item.mask for item in prepared]
            change = torch.stack([torch.from_numpy(latent_mask(m, latent_size, args.mask_round))
                                  for m in blend])[:, None]
            change = change.to(init.device, init.dtype)
            if args.inpainting_fill == LATENT_NOISE:
                init = init * (1 - change) + sampling.first_noise * change
            elif args.inpainting_fill == LATENT_NOTHING:
                init = init * (1 - change)
            # the unmasked area follows the original: binary, or soft inpainting's per-pixel weights
            soft = run.args.get(soft_inpaint.SoftInpainting.name)
            sampling.denoiser = soft_inpaint.wrap_denoiser(soft, sampling.denoiser, init, change, masks)
            sampling.inpaint_inputs = ([item.target for item in prepared], masks)
            sampling.inpaint_mask_rounded = args.mask_round
        multiplier = noise_multiplier(run)
        if multiplier != 1:  # AUTOMATIC1111 scales the noise img2img starts from (not latent noise's fill)
            sampling.first_noise = sampling.first_noise * multiplier
        if args.denoising_strength == 0:  # nothing to change: the encoded image as it is
            sampling.result = init
            return
        sampling.init = init

    def finish_images(self, run: Run, batch: Batch, images: list[Image.Image],
                      latents: torch.Tensor) -> list[Image.Image]:
        prepared = batch.items.get(self.name)
        if not prepared:
            return images
        soft = run.args.get(soft_inpaint.SoftInpainting.name)
        return soft_inpaint.finish_images(run.model, soft, images, prepared, latents)

    def infotext(self, run: Run) -> dict[str, Any]:
        args = run.args.get(self.name)
        if args is None:
            return {}
        params = img2img_params(args)
        if noise_multiplier(run) != 1:
            params["Noise multiplier"] = noise_multiplier(run)
        return params


def noise_multiplier(run: Run) -> float:
    """The request's `initial_noise_multiplier`, else the setting (AUTOMATIC1111's "Noise multiplier for img2img")."""
    args: Img2ImgArgs = run.args["img2img"]
    if args.initial_noise_multiplier is not None:
        return float(args.initial_noise_multiplier)
    return float(run.first.plan.options.get("initial_noise_multiplier", 1.0))


def _encode_targets(model: "LoadedModel", prepared: list[PreparedImage], size: tuple[int, int]) -> torch.Tensor:
    latents = latents_io.encode(model, [p.target for p in prepared])
    if any(p.resize_latents for p in prepared):  # resize mode 3: upscale in latent space
        latents = upscale_latents(latents, size, "Latent")
    return latents.to(model.device.device)


def img2img_params(request: "Img2ImgArgs | GenerationRequest") -> dict[str, Any]:
    """The img2img keys AUTOMATIC1111 writes (plus outpainting's)."""
    params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
    if request.mask is not None or any((request.outpaint_left, request.outpaint_right, request.outpaint_up,
                                        request.outpaint_down)):
        blur_x, blur_y = mask_blurs(request)
        if blur_x == blur_y:  # AUTOMATIC1111 writes no "Mask blur" when x and y differ
            params["Mask blur"] = blur_x
        params["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
    if request.mask is not None:
        if request.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_full_res_padding
        if request.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
    for side in ("left", "right", "up", "down"):
        amount = getattr(request, f"outpaint_{side}")
        if amount:
            params[f"Outpaint {side}"] = amount
    if request.resize_mode:
        params["Resize mode"] = RESIZE_MODES[request.resize_mode]
    return params


def fields_from_infotext(p: dict[str, str]) -> dict[str, Any]:
    """Masked content, Inpaint area, Mask mode and Resize mode back as request fields.

    Easel and AUTOMATIC1111 leave the defaults out (whole picture, inpaint masked, just
    resize), so an inpainting infotext without them means the defaults, not "unchanged".
    """
    fields: dict[str, Any] = {}
    inpainting = "Mask blur" in p or "Masked content" in p
    if p.get("Masked content") in MASKED_CONTENT:
        fields["inpainting_fill"] = MASKED_CONTENT.index(p["Masked content"])
    if inpainting or "Inpaint area" in p:
        fields["inpaint_full_res"] = p.get("Inpaint area", "Whole picture") == "Only masked"
    if inpainting or "Mask mode" in p:
        fields["inpainting_mask_invert"] = 1 if p.get("Mask mode") == "Inpaint not masked" else 0
    if p.get("Resize mode") in RESIZE_MODES:
        fields["resize_mode"] = RESIZE_MODES.index(p["Resize mode"])
    elif "Denoising strength" in p and not any(k.startswith("Hires") for k in p):
        fields["resize_mode"] = 0
    fields.update(soft_inpaint.fields_from_params(p, inpainting))  # AUTOMATIC1111's "Soft inpainting ..." keys
    return fields
