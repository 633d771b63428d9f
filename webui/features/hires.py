"""Hires fix: generate small, upscale, then refine at the target size with img2img.

The upscale either stays in latent space (AUTOMATIC1111's "Latent" modes: interpolate the
latents) or goes through pixels with any image upscaler (Lanczos, Nearest, or a model).
`HiresFix` is the whole feature: its request fields' validation, the second pass it adds
(its own prompts, sampler and LoRAs; every other feature contributes to it as to the first),
and its infotext keys. As in AUTOMATIC1111, the second pass may run on another checkpoint
(`hr_checkpoint_name`, loaded beside the job's through the model store, as the refiner is: a latent
upscale hands it the first pass's latents, an image upscale the first checkpoint's decoded pixels, and
that checkpoint's VAE decodes the result), and may start from a given picture instead of a generated
first pass (`firstpass_image`: no first pass is sampled).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from ..core import latents as latents_io
from ..core import samplers
from ..core.pipeline import Feature, Pass, Run, Sampling
from ..core.request import MAX_SIDE, MAX_STEPS, FieldError, ValidationError, int_in, is_int, is_number
from .upscalers.catalog import BUILTIN

if TYPE_CHECKING:
    from ..core.request import GenerationRequest
    from ..model_manager.manager import ModelManager
    from .upscalers import Upscalers

SAME_CHECKPOINT = "Use same checkpoint"  # AUTOMATIC1111's dropdown entry for "the job's checkpoint"

# AUTOMATIC1111's names -> (torch interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def target_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0) -> tuple[int, int]:
    """Second-pass size: by scale, or to resize_x/resize_y (one of them 0 keeps the aspect ratio).

    Rounded down to multiples of 8, the VAE's granularity.
    """
    if resize_x == 0 and resize_y == 0:
        w, h = width * scale, height * scale
    elif resize_y == 0:
        w, h = resize_x, resize_x * height / width
    elif resize_x == 0:
        w, h = resize_y * width / height, resize_y
    else:
        w, h = resize_x, resize_y
    return max(64, int(w) // 8 * 8), max(64, int(h) // 8 * 8)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize latents to (width, height) in pixels / 8."""
    interpolation, antialias = LATENT_MODES[mode]
    latent_size = (size[1] // 8, size[0] // 8)
    kwargs = {"antialias": antialias} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(latents, size=latent_size, mode=interpolation, **kwargs)


def model_upscaler_names(upscalers: "Upscalers | None") -> list[str]:
    """Model upscalers (models/ESRGAN and A1111's other folders) hires fix can use, by display name.

    Re-read on every call, so a file dropped into the folder is accepted without a restart.
    """
    if upscalers is None:
        return []
    return [name for name in upscalers.list_upscalers() if name not in BUILTIN]


def upscale_image(image: Image.Image, name: str, size: tuple[int, int],
                  builtin: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image]],
                  upscalers: "Upscalers | None", check: Callable[[], None] | None = None) -> Image.Image:
    """The hires "image" upscale: a built-in resize, or a model upscaler run (tiled) to exactly `size`.

    `check` runs before each tile, so Interrupt stops a long model upscale between tiles.
    """
    if name in builtin:
        return builtin[name](image, size)
    if upscalers is None:
        raise KeyError(f"unknown hires upscaler {name!r}")
    return upscalers.upscale(image, name, size=size, check=check)


# ---- the feature: a second, larger pass ------------------------------------------------------


@dataclass(frozen=True)
class HiresSettings:
    """Hires fix as the engine uses it, parsed once from AUTOMATIC1111's flat `hr_*` fields."""

    size: tuple[int, int]           # the second pass's (width, height)
    scale: float                    # hr_scale (used when resize is (0, 0))
    resize: tuple[int, int]         # (hr_resize_x, hr_resize_y); one 0 keeps the aspect ratio
    upscaler: str                   # a latent mode, an image upscaler or a model upscaler's name
    steps: int                      # hr_second_pass_steps; 0: the first pass's steps
    sampler: str                    # "" = the first pass's sampler
    scheduler: str                  # "" = the first pass's schedule
    prompt: str                     # "" = the first pass's prompt
    negative_prompt: str
    denoising_strength: float
    checkpoint: str = ""            # the hires pass's checkpoint (registry name); "": the job's
    firstpass: Image.Image | None = None  # the first pass's picture, given rather than generated


@dataclass
class HiresState:
    """What `begin` found for one request: the hires pass's own checkpoint (None: the job's)."""

    model: Any = None


def same_checkpoint(name: Any) -> bool:
    return name is None or (isinstance(name, str) and name.strip() in ("", SAME_CHECKPOINT, "None"))


class HiresFix(Feature):
    """txt2img with `enable_hr`: adds the "hires" pass, which starts from the upscaled first pass."""

    name = "hires"

    def __init__(self, upscalers: "Upscalers | None" = None, models: "ModelManager | None" = None):
        self.upscalers = upscalers  # the model upscalers Extras uses (models/ESRGAN ...)
        self.models = models        # loads `hr_checkpoint_name` beside the job's checkpoint
        self.image_upscalers: dict[str, Callable[[Image.Image, tuple[int, int]], Image.Image]] = {
            "Lanczos": lambda image, size: image.resize(size, Image.Resampling.LANCZOS),
            "Nearest": lambda image, size: image.resize(size, Image.Resampling.NEAREST),
        }
        self.catalog = samplers.Catalog()

    def upscaler_names(self) -> list[str]:
        return [*LATENT_MODES, *self.image_upscalers, *model_upscaler_names(self.upscalers)]

    @staticmethod
    def wanted(request: "GenerationRequest") -> bool:
        return request.mode == "txt2img" and request.enable_hr is True

    def parse(self, request: "GenerationRequest") -> tuple[HiresSettings | None, list[FieldError]]:
        """AUTOMATIC1111's flat hr_* fields, checked and turned into one typed value (None: hires off)."""
        if not self.wanted(request):
            if request.firstpass_image is not None and request.mode == "txt2img":
                return None, [FieldError("firstpass_image", "needs enable_hr: the picture is the hires pass's start")]
            return None, []
        errors = list(self._errors(request))
        checkpoint = ""
        if not same_checkpoint(request.hr_checkpoint_name):
            checkpoint, problem = self._checkpoint(request.hr_checkpoint_name)
            errors += problem
        if errors:
            return None, errors
        resize = (request.hr_resize_x, request.hr_resize_y)
        return HiresSettings(size=target_size(request.width, request.height, request.hr_scale, *resize),
                             scale=request.hr_scale, resize=resize, upscaler=request.hr_upscaler,
                             steps=request.hr_second_pass_steps, sampler=request.hr_sampler_name,
                             scheduler=request.hr_scheduler, prompt=request.hr_prompt,
                             negative_prompt=request.hr_negative_prompt,
                             denoising_strength=request.denoising_strength, checkpoint=checkpoint,
                             firstpass=request.firstpass_image), []

    def _checkpoint(self, name: Any) -> tuple[str, list[FieldError]]:
        if not isinstance(name, str):
            return "", [FieldError("hr_checkpoint_name", "must be a checkpoint name")]
        if self.models is None:
            return "", [FieldError("hr_checkpoint_name", "no model manager to load a hires checkpoint with")]
        try:
            return self.models.find(name.strip()).name, []
        except LookupError as exc:
            return "", [FieldError("hr_checkpoint_name", str(exc))]

    def _errors(self, request: "GenerationRequest") -> Iterator[FieldError]:
        if not is_number(request.denoising_strength) or not 0 <= request.denoising_strength <= 1:
            yield FieldError("denoising_strength", "must be a number from 0 to 1")
        if not is_number(request.hr_scale) or not 1 <= request.hr_scale <= 4:
            yield FieldError("hr_scale", "must be a number from 1 to 4")
        yield from int_in(request, "hr_second_pass_steps", 0, MAX_STEPS)
        for name in ("hr_resize_x", "hr_resize_y"):
            yield from int_in(request, name, 0, MAX_SIDE)
        names = self.upscaler_names()
        if request.hr_upscaler not in names:
            yield FieldError("hr_upscaler", f"unknown upscaler {request.hr_upscaler!r}; choose one of: {', '.join(names)}")
        for name in ("hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"):
            if not isinstance(getattr(request, name), str):
                yield FieldError(name, "must be text")
        if isinstance(request.hr_sampler_name, str) and request.hr_sampler_name:
            for error in self.catalog.check(request.hr_sampler_name, request.hr_scheduler or "Automatic"):
                yield FieldError("hr_" + error.field if error.field != "sampler_name" else "hr_sampler_name",
                                 error.message)
        if request.firstpass_image is not None and not isinstance(request.firstpass_image, Image.Image):
            yield FieldError("firstpass_image", "must be an image")
        if is_number(request.hr_scale) and is_int(request.width) and is_int(request.height):
            w, h = target_size(request.width, request.height, request.hr_scale, int(request.hr_resize_x or 0),
                               int(request.hr_resize_y or 0))
            if max(w, h) > MAX_SIDE:
                yield FieldError("hr_scale", f"the hires size {w}x{h} is larger than {MAX_SIDE} pixels")

    def begin(self, run: Run) -> None:
        hires: HiresSettings | None = run.args.get(self.name)
        if hires is None:
            return
        request, first = run.request, run.first
        steps = hires.steps or request.steps
        second = replace(request, steps=steps, width=hires.size[0], height=hires.size[1],
                         prompt=hires.prompt or request.prompt,
                         negative_prompt=hires.negative_prompt or request.negative_prompt,
                         sampler_name=hires.sampler or request.sampler_name,
                         scheduler=hires.scheduler or request.scheduler)
        state = run.state[self.name] = HiresState()
        if hires.firstpass is not None:  # no first pass to sample: the given picture is its result
            first.steps, first.init = 0, self._given_first_pass
        if hires.checkpoint and hires.checkpoint != run.model.info.name:
            state.model = self._load(run, hires)
            plan = run.plan_for(second, state.model)
        elif second.prompt == request.prompt and second.negative_prompt == request.negative_prompt and steps == request.steps:
            # same texts and steps: the same conditioning serves, but the pass gets its own plan to add to
            sampler, schedule = samplers.resolve(second.sampler_name, second.scheduler)
            plan = replace(first.plan, sampler=sampler, schedule=schedule, controls=None, vae=None,
                           prompts=replace(first.plan.prompts, extra_patches=[], denoiser_edits=[]))
        else:
            plan = run.plan_for(second)
        run.passes.append(Pass("hires", second, plan, hires.size, steps, strength=hires.denoising_strength,
                               exact_steps=True, init=self._upscaled))

    def _load(self, run: Run, hires: HiresSettings) -> Any:
        """The hires checkpoint, beside the job's (pinned until the job ends; the job's model stays active)."""
        run.job.report(text="loading the hires checkpoint")
        model = self.models.get_companion(hires.checkpoint, progress=lambda msg: run.job.report(text=msg))
        channels = [m.configs["vae"].get("latent_channels", 4) for m in (run.model, model)]
        if hires.upscaler in LATENT_MODES and channels[0] != channels[1]:
            raise ValidationError([FieldError("hr_checkpoint_name", f"its latents have {channels[1]} channels, the "
                                              f"first pass's {channels[0]}: choose an image upscaler, not "
                                              f"{hires.upscaler!r}")])
        return model

    def _given_first_pass(self, run: Run, p: Pass, sampling: Sampling) -> None:
        """`firstpass_image` as the first pass's result: encoded for a latent upscale (an image upscale takes the
        picture itself, as AUTOMATIC1111 does, so nothing is encoded)."""
        hires: HiresSettings = run.args[self.name]
        if hires.upscaler not in LATENT_MODES:
            sampling.result = torch.zeros_like(sampling.first_noise)
            return
        picture = self._first_pass_picture(hires, p.size)
        sampling.result = latents_io.encode(p.plan.model, [picture] * len(sampling.batch.seeds)).to(
            sampling.first_noise.device)

    @staticmethod
    def _first_pass_picture(hires: HiresSettings, size: tuple[int, int]) -> Image.Image:
        picture = hires.firstpass.convert("RGB")
        return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

    def _upscaled(self, run: Run, p: Pass, sampling: Sampling) -> None:
        """The first pass's latents at the hires size: interpolated, or through pixels and an upscaler (decoded by
        the first pass's checkpoint, encoded by this pass's)."""
        model, hires, latents = p.plan.model, run.args[self.name], sampling.previous
        upscaler = hires.upscaler
        run.job.report(text="hires upscale")
        if upscaler in LATENT_MODES:
            init = upscale_latents(latents, p.size, upscaler)
        else:
            if hires.firstpass is not None:
                pictures = [self._first_pass_picture(hires, run.first.size)] * len(sampling.batch.seeds)
            else:
                pictures = latents_io.decode(run.first.plan.model, latents)
            images = [upscale_image(image, upscaler, p.size, self.image_upscalers, self.upscalers, run.job.check)
                      for image in pictures]
            init = latents_io.encode(model, images).to(latents.device)
        run.job.check()
        sampling.init = init

    def infotext(self, run: Run) -> dict[str, Any]:
        hires, settings, request = run.pass_named("hires"), run.args.get(self.name), run.request
        if hires is None or settings is None:
            return {}
        params: dict[str, Any] = {"Denoising strength": settings.denoising_strength}
        if any(settings.resize):
            params["Hires resize"] = f"{settings.size[0]}x{settings.size[1]}"
        else:
            params["Hires upscale"] = settings.scale
        if settings.steps:
            params["Hires steps"] = settings.steps
        params["Hires upscaler"] = settings.upscaler
        state: HiresState | None = run.state.get(self.name)
        if state is not None and state.model is not None:  # AUTOMATIC1111's short title: "name [hash]"
            model = state.model
            params["Hires checkpoint"] = f"{model.info.model_name} [{model.short_hash}]" if model.short_hash \
                else model.info.model_name
        if settings.sampler and settings.sampler != request.sampler_name:
            params["Hires sampler"] = hires.plan.sampler.name
        if settings.scheduler and settings.scheduler != request.scheduler:
            params["Hires schedule type"] = hires.plan.schedule
        if settings.prompt and settings.prompt != request.prompt:
            params["Hires prompt"] = settings.prompt
        if settings.negative_prompt and settings.negative_prompt != request.negative_prompt:
            params["Hires negative prompt"] = settings.negative_prompt
        return params
