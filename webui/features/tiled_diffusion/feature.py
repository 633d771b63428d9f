"""Tiled diffusion as an engine feature: the first pass's denoiser runs per latent tile and blends.

`parse` reads the Tiled Diffusion extension's always-on args (args.py). `begin` applies "Overwrite
image size" (txt2img). `begin_pass` (the first pass only, as the extension leaves a hires pass
alone) lays out the tiles for the pass's latent size, encodes each region's prompts (the image's
prompts with the region's appended, as the extension builds them) and adds a denoiser edit that
makes every CFG denoiser of the pass predict tile by tile (blend.py). A region with its own seed
gets its own noise in its box (the extension's create_random_tensors): the pass's init step is
wrapped to replace that part of the first noise. ControlNet units see their maps cut per tile
(control.py). With Noise Inversion (img2img) the init step is wrapped again (noise_inversion.py). Nothing is tiled, and nothing is written to the
infotext, when one tile covers the canvas and no region is set (as the extension does).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ...core.conditioning import PromptEncoder
from ...core.pipeline import Feature, Pass, Run
from ...core.prompts import schedule_prompt
from ...core.request import FieldError
from .args import FOREGROUND, TiledArgs, alwayson_value, infotext_value, parse
from .noise_inversion import with_noise_inversion
from .blend import RegionPlan, TilePlan, tile_denoiser
from .tiles import feather_mask, grid_boxes, region_box, splittable

def append_prompt(prompt: str, extra: str) -> str:
    """The extension's rule: the region's text after the image's, joined by ", " (nothing when empty)."""
    return f"{prompt}, {extra}" if extra else prompt


class TiledDiffusion(Feature):
    name = "tiled_diffusion"

    def __init__(self, upscalers: Any = None):
        self.upscalers = upscalers  # Extras' upscalers: img2img's "Upscaler" before tiling

    def parse(self, request: Any) -> tuple[TiledArgs | None, list[FieldError]]:
        value = alwayson_value(request)
        if value is None:
            return None, []
        names = self.upscalers.list_upscalers() if self.upscalers is not None else ["None"]
        args, errors = parse(value, request.mode, names)
        if args is not None and args.noise_inverse and request.sampler_name != "Euler":
            return None, [FieldError("alwayson_scripts.Tiled Diffusion.args.noise_inverse",
                                     "Noise Inversion needs the Euler sampler (as the extension)")]
        return args, errors

    def begin(self, run: Run) -> None:
        args: TiledArgs | None = run.args.get(self.name)
        if args is None:
            return
        if args.overwrite_size:
            size = args.image_size
            run.first.size = size
            run.first.request = replace(run.first.request, width=size[0], height=size[1])
        self._img2img_canvas(run, args)

    def _img2img_canvas(self, run: Run, args: TiledArgs) -> None:
        """The extension's img2img canvas: the input upscaled first (all inputs replaced by the first's upscale,
        as it does), then the canvas the (upscaled) image's size with "Keep input size", else scale x the
        request's size. Pictures with a mask or outpainting keep img2img's own canvas."""
        from ..img2img import prepare_image
        from ..img2img_feature import Img2ImgInputs

        img = run.args.get("img2img")
        if img is None or img.mask is not None or img.outpainting or \
                (args.upscaler == "None" and not args.keep_input_size):
            return
        images = list(img.init_images)
        if args.upscaler != "None":
            first = images[0].convert("RGB")
            size = (round(first.width * args.scale_factor), round(first.height * args.scale_factor))
            images = [self.upscalers.upscale(first, args.upscaler, size=size)] * len(images)
        if args.keep_input_size:
            size = images[0].size
        else:
            size = (round(args.scale_factor * img.width), round(args.scale_factor * img.height))
        size = (max(64, size[0] // 8 * 8), max(64, size[1] // 8 * 8))
        shaped = replace(img, init_images=tuple(images), width=size[0], height=size[1])
        prepared = [prepare_image(shaped, image, None)[0] for image in images]
        run.state["img2img"] = Img2ImgInputs(prepared, size)
        run.first.size = size
        run.first.request = replace(run.first.request, width=size[0], height=size[1])
        run.first.source_image = prepared[0].target

    def _active(self, run: Run, p: Pass) -> bool:
        args: TiledArgs | None = run.args.get(self.name)
        if args is None or p is not run.first:
            return False
        factor = p.plan.model.vae_scale_factor
        width, height = p.size[0] // factor, p.size[1] // factor
        return bool(args.regions) or splittable(width, height, args.tile_width, args.tile_height, args.overlap)

    def begin_pass(self, run: Run, p: Pass) -> None:
        if not self._active(run, p):
            return
        args: TiledArgs = run.args[self.name]
        model, prompts, options = p.plan.model, p.plan.prompts, p.plan.options
        factor = model.vae_scale_factor
        width, height = p.size[0] // factor, p.size[1] // factor
        boxes = grid_boxes(width, height, args.tile_width, args.tile_height, args.overlap) if args.draws_tiles else []
        regions: list[RegionPlan] = []
        if args.regions:
            encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], list(prompts.embeddings.values()),
                                    options["comma_padding_backtrack"], options["emphasis"] == "Original",
                                    options)
            steps = p.request.steps
            for region in args.regions:
                box = region_box(region.x, region.y, region.w, region.h, width, height)
                if box.w <= 0 or box.h <= 0:
                    continue
                cond = encoder.encode_scheduled(schedule_prompt(append_prompt(prompts.prompt, region.prompt), steps))
                uncond = encoder.encode_scheduled(schedule_prompt(
                    append_prompt(prompts.negative_prompt, region.neg_prompt), steps, allow_and=False))
                foreground = region.blend_mode == FOREGROUND
                regions.append(RegionPlan(box, cond, uncond, foreground,
                                          feather_mask(box.w, box.h, region.feather_ratio) if foreground else None))
        plan = TilePlan((height, width), args.method, boxes, args.tile_batch_size, regions)
        run.state[self.name] = plan
        prompts.denoiser_edits.append(lambda denoiser: tile_denoiser(denoiser, plan))
        seeded = [(r, region_box(r.x, r.y, r.w, r.h, width, height)) for r in args.regions if r.seed != -1]
        if seeded:
            p.init = _with_region_noise(p.init, seeded)
        if args.noise_inverse and p.init is not None:
            p.init = with_noise_inversion(p.init, args)

    def infotext(self, run: Run) -> dict[str, Any]:
        args: TiledArgs | None = run.args.get(self.name)
        if args is None:
            return {}
        params: dict[str, Any] = {}
        if args.upscaler != "None":  # written whether or not the canvas needed tiles, as the extension does
            params["Tiled Diffusion upscaler"], params["Tiled Diffusion scale factor"] = args.upscaler, args.scale_factor
        if run.state.get(self.name) is not None:
            params["Tiled Diffusion"] = infotext_value(args, img2img=run.request.mode == "img2img")
        return params


def _with_region_noise(init: Any, seeded: list) -> Any:
    """The pass's init step, after which each seeded region's box gets noise from its own seed (CPU generator).

    As the extension does: Background boxes' noises are averaged where they overlap, Foreground boxes'
    likewise and laid over them."""

    def step(run: Run, p: Pass, sampling: Any) -> None:
        if init is not None:
            init(run, p, sampling)
        noise = sampling.first_noise
        layers = {}
        for region, box in seeded:
            if box.w <= 0 or box.h <= 0:
                continue
            generator = torch.Generator().manual_seed(int(region.seed))
            drawn = torch.randn((1, noise.shape[1], box.h, box.w), generator=generator).to(noise)
            total, count = layers.setdefault(region.blend_mode == FOREGROUND, (torch.zeros_like(noise[:1]),
                                                                               torch.zeros_like(noise[:1, :1])))
            box.of(total).add_(drawn)
            box.of(count).add_(1)
        out = noise
        for foreground in (False, True):
            if foreground in layers:
                total, count = layers[foreground]
                out = torch.where(count > 0, total / count.clamp(min=1), out)
        sampling.first_noise = out

    return step
