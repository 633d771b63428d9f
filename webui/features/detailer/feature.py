"""The detailer (ADetailer's job): after the image is made, find faces, hands or people and repaint each.

It runs in `finish_images`, after the features registered before it (img2img's paste-back, hires
fix): for every image and every pass in order, the pass's detector finds regions, each region
becomes a mask (masks.py), and each mask is inpainted by an ordinary img2img request run inside
the same job (`Run.generate`): the image, the mask, "only masked" with its padding (the region is
cropped, scaled to the inpaint size, repainted and pasted back through the blurred mask, so
everything outside the mask keeps its pixels exactly), the pass's prompt, negative prompt,
denoising strength, steps, CFG, sampler, checkpoint (loaded beside the job's, as the refiner's), VAE,
noise multiplier (the request's `initial_noise_multiplier`), face restoration (the
request's `restore_faces`, so Extras' restorers run on the repainted crop before it is pasted back) and
ControlNet unit, and the image's seed + the mask's number, as ADetailer
seeds them. So there is no second sampler path: the detailer is img2img inpainting, soft
inpainting included when the request has it on.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from ... import __version__
from ...core import samplers
from ...core.pipeline import Batch, Feature, Run
from ...core.request import FieldError, GenerationRequest, script_args
from .args import SAME_CHECKPOINT, SAME_SCHEDULER, SAME_VAE, DetailerArgs, PassArgs, alwayson_value, infotext_params, ordinal, parse
from .detect import DetectorError, Detectors
from .masks import pass_masks

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VERSION = f"Easel {__version__}"   # the "ADetailer version" key: which detailer made the image
# always-on scripts the inner inpainting keeps (ADetailer keeps soft inpainting too); others stay with the main pass
KEPT_SCRIPTS = ("soft inpainting",)
_SEP = re.compile(r"\s*\[SEP\]\s*")
_SKIP = re.compile(r"^\s*\[SKIP\]\s*$")


def pass_prompts(text: str, main: str) -> list[str]:
    """ADetailer's prompt rules: `[SEP]` gives each mask its own prompt, empty means the main prompt,
    `[PROMPT]` is replaced by it."""
    out = []
    for part in _SEP.split(text or ""):
        if not part:
            out.append(main)
        else:
            out.append(part.replace("[PROMPT]", f" {main} ") if "[PROMPT]" in part else part)
    return out


class Detailer(Feature):
    name = "adetailer"

    def __init__(self, detectors: Detectors, models: Any = None, controlnets: Any = None, restorer: Any = None,
                 vaes: Any = None):
        self.detectors = detectors
        self.models = models            # checkpoints, to check ad_checkpoint before the job is queued
        self.controlnets = controlnets  # ControlNet files, to check ad_controlnet_model likewise
        self.restorer = restorer        # the face restoration feature, to check ad_restore_face's model likewise
        self.vaes = vaes                # VAE files, to check ad_vae likewise

    # ---- request ---------------------------------------------------------------------------------

    def parse(self, request: GenerationRequest) -> tuple[DetailerArgs | None, list[FieldError]]:
        value = alwayson_value(request)
        if value is None:
            return None, []
        args, errors = parse(value, request.mode == "img2img")
        if args is None:
            return None, errors
        positions = _positions(value)
        for unit, position in zip(args.passes, positions):
            if not unit.active:
                continue
            where = f"alwayson_scripts.ADetailer.args.{position}"
            try:
                self.detectors.resolve(unit.ad_model)
            except DetectorError as exc:
                errors.append(FieldError(f"{where}.ad_model", str(exc)))
            if unit.ad_use_sampler:
                try:
                    samplers.resolve(unit.ad_sampler, _scheduler(unit, request.scheduler))
                except ValueError as exc:
                    errors.append(FieldError(f"{where}.ad_sampler", str(exc)))
            errors += self._check_models(unit, where)
            if unit.ad_restore_face and self.restorer is not None:  # the model restore_faces would use
                _, problems = self.restorer.parse(replace(request, restore_faces=True))
                errors += [FieldError(f"{where}.ad_restore_face", e.message) for e in problems]
        return (None, errors) if errors else (args, [])

    def _check_models(self, unit: PassArgs, where: str) -> list[FieldError]:
        """The pass's own checkpoint and ControlNet: installed, the unit well formed (a 422 before queueing)."""
        errors = []
        checkpoint = _own_checkpoint(unit)
        if checkpoint and self.models is not None:
            try:
                self.models.resolve(checkpoint)
            except LookupError as exc:
                errors.append(FieldError(f"{where}.ad_checkpoint", str(exc)))
        vae = own_vae(unit)
        if vae is not None and self.vaes is not None:
            try:
                self.vaes.check(vae)
            except (LookupError, ValueError) as exc:
                errors.append(FieldError(f"{where}.ad_vae", str(exc)))
        control = control_unit(unit)
        if control is not None:
            from ..controlnet.preprocessors import PREPROCESSORS
            from ..controlnet.units import parse_units

            _, problems = parse_units({"controlnet": {"args": [control]}})
            errors += [FieldError(f"{where}.ad_controlnet_module", e.message) for e in problems]
            if control["module"] not in PREPROCESSORS:
                errors.append(FieldError(f"{where}.ad_controlnet_module", f"unknown preprocessor; choose one of: "
                                                                          f"None, {', '.join(PREPROCESSORS)}"))
            if self.controlnets is not None:
                try:
                    self.controlnets.find(unit.ad_controlnet_model)
                except LookupError as exc:
                    errors.append(FieldError(f"{where}.ad_controlnet_model", str(exc)))
        return errors

    def infotext(self, run: Run) -> dict[str, Any]:
        args = run.args.get(self.name)
        return infotext_params(args, VERSION) if args is not None else {}

    # ---- after decoding ----------------------------------------------------------------------------

    def finish_images(self, run: Run, batch: Batch, images: list[Image.Image],
                      latents: "torch.Tensor") -> list[Image.Image]:
        args: DetailerArgs | None = run.args.get(self.name)
        if args is None or run.generate is None:
            return images
        starts = images
        if args.skip_img2img:  # ADetailer's "skip img2img": detail the input picture, not the img2img result
            prepared = batch.items.get("img2img") or []
            starts = [p.original if i < len(prepared) else image for i, (image, p) in
                      enumerate(zip(images, prepared))] or images
        out = []
        for offset, image in enumerate(starts):
            out.append(self._detail(run, args, image, batch.seeds[offset]))
            if run.job is not None and run.job.interrupted:
                out += list(images[len(out):])
                break
        return out

    def _detail(self, run: Run, args: DetailerArgs, image: Image.Image, seed: int) -> Image.Image:
        for n, unit in enumerate(args.passes):
            if not unit.active:
                continue
            masks = pass_masks(self.detectors.detect(unit.ad_model, image, unit.ad_confidence, unit.ad_model_classes),
                               unit, image.size)
            if not masks:
                log.info("ADetailer: nothing detected with the %s pass", ordinal(n + 1))
                continue
            prompts = pass_prompts(unit.ad_prompt, run.request.prompt)
            negatives = pass_prompts(unit.ad_negative_prompt, run.request.negative_prompt)
            for j, mask in enumerate(masks):
                prompt, negative = prompts[min(j, len(prompts) - 1)], negatives[min(j, len(negatives) - 1)]
                if _SKIP.match(prompt):
                    continue
                if run.job is not None:
                    run.job.report(text=f"ADetailer {ordinal(n + 1)}: region {j + 1} of {len(masks)}")
                result = run.generate(inpaint_request(run.request, unit, image, mask, prompt, negative, seed + j))
                for warning in result.warnings:
                    if warning not in run.context.warnings:
                        run.context.warnings.append(warning)
                if result.interrupted or not result.images:  # Interrupt or Skip: keep what is done
                    return image
                image = result.images[0]
        return image


def _own_checkpoint(unit: PassArgs) -> str | None:
    """The pass's separate checkpoint (ADetailer's "Use same checkpoint" and empty: None)."""
    name = unit.ad_checkpoint if unit.ad_use_checkpoint else None
    return None if name in (None, "", "None", SAME_CHECKPOINT) else name


def own_vae(unit: PassArgs) -> str | None:
    """The pass's separate VAE (a file from models/VAE or "Automatic"); None: the job's ("None" too, as ADetailer)."""
    name = unit.ad_vae if unit.ad_use_vae else None
    return None if name in (None, "", "None", SAME_VAE) else name


def control_unit(unit: PassArgs) -> dict[str, Any] | None:
    """The ControlNet unit of the pass's inpainting (None without a model): its map made from the repainted
    picture (the img2img input), as ADetailer's unit has no image of its own. Module "None" is the picture
    itself (ADetailer would pick one by the model's kind; Easel's preprocessors are named in the API)."""
    if unit.ad_controlnet_model in ("", "None"):
        return None
    module = unit.ad_controlnet_module if unit.ad_controlnet_module not in ("", "None") else "none"
    return {"enabled": True, "model": unit.ad_controlnet_model, "module": module,
            "weight": unit.ad_controlnet_weight, "guidance_start": unit.ad_controlnet_guidance_start,
            "guidance_end": unit.ad_controlnet_guidance_end, "pixel_perfect": True, "image": None}


def _scheduler(unit: PassArgs, main: str) -> str:
    return main if unit.ad_scheduler in ("", SAME_SCHEDULER) else unit.ad_scheduler


def _positions(value: Any) -> list[int]:
    args = script_args(value)
    return [i for i, a in enumerate(args or []) if isinstance(a, dict)]


def inpaint_request(request: GenerationRequest, unit: PassArgs, image: Image.Image, mask: Image.Image, prompt: str,
                    negative: str, seed: int) -> GenerationRequest:
    """The img2img inpainting request for one region, as ADetailer builds its inner img2img."""
    if unit.ad_use_inpaint_width_height:
        width, height = unit.ad_inpaint_width, unit.ad_inpaint_height
    else:
        width, height = request.width, request.height
    overrides = dict(request.override_settings)
    if unit.ad_use_clip_skip:
        overrides["CLIP_stop_at_last_layers"] = unit.ad_clip_skip
    vae = own_vae(unit)
    if vae is not None:
        overrides["sd_vae"] = vae
    sampler, scheduler = request.sampler_name, request.scheduler
    if unit.ad_use_sampler:
        sampler, scheduler = unit.ad_sampler, _scheduler(unit, request.scheduler)
    kept = {k: v for k, v in request.alwayson().items() if isinstance(k, str) and k.strip().lower() in KEPT_SCRIPTS}
    control = control_unit(unit)
    if control is not None:
        kept["controlnet"] = {"args": [control]}
    return replace(
        request, mode="img2img", prompt=prompt, negative_prompt=negative, init_images=[image.convert("RGB")],
        mask=mask, resize_mode=0, denoising_strength=unit.ad_denoising_strength, mask_blur=unit.ad_mask_blur,
        inpainting_fill=1, inpaint_full_res=unit.ad_inpaint_only_masked,
        inpaint_full_res_padding=unit.ad_inpaint_only_masked_padding, inpainting_mask_invert=0,
        outpaint_left=0, outpaint_right=0, outpaint_up=0, outpaint_down=0, width=width, height=height,
        steps=unit.ad_steps if unit.ad_use_steps else request.steps,
        cfg_scale=unit.ad_cfg_scale if unit.ad_use_cfg_scale else request.cfg_scale,
        sampler_name=sampler, scheduler=scheduler, seed=seed, subseed=-1, subseed_strength=0.0,
        seed_resize_from_w=0, seed_resize_from_h=0, batch_size=1, n_iter=1, enable_hr=False, save_images=False,
        restore_faces=unit.ad_restore_face,  # ADetailer's: the job's own restore_faces does not apply here
        script_name="", script_args={}, alwayson_scripts=kept, override_settings=overrides,
        checkpoint=_own_checkpoint(unit) or request.checkpoint,
        mask_blur_x=None, mask_blur_y=None, mask_round=True, latent_mask=None,  # the job's masks are not this one's
        # ADetailer's: its own multiplier, else None (the setting), not the job's
        initial_noise_multiplier=unit.ad_noise_multiplier if unit.ad_use_noise_multiplier else None)
