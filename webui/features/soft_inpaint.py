"""Soft inpainting: a blurred mask acts as per-pixel weights instead of a binary cut.

AUTOMATIC1111 ships this as its "Soft Inpainting" always-on script; Easel keeps the same
six parameters, infotext keys and API argument order, with our own formulation of each
step. Let m in [0, 1] be the blurred mask (1 = change), sigma the current noise level.

1. Latent blend at every step (`SoftMaskedDenoiser`). The denoised estimate D and the
   original latents O are mixed per latent pixel with the weight

       w(sigma) = m ** (preservation_strength * sigma ** schedule_bias)    (w = 0 where m = 0)

   Early (large sigma) the exponent is large, so partially masked pixels stay close to
   the original; as sigma falls the exponent shrinks towards 0 and w -> 1 wherever m > 0,
   so the preserved area yields to the new content. *Schedule bias* moves that hand-over
   (above 1: more preservation early, below 1: more late); *preservation strength* scales
   it (0: none). Pixels with m = 0 keep the original exactly, m = 1 is fully generated.
   The mix keeps contrast: a linear blend of two unrelated latent vectors is shorter than
   either, which washes partially masked areas out, so the blend's direction is the
   linear one and its length the power mean of the two lengths,

       |result| = ((1 - w) * |O| ** p + w * |D| ** p) ** (1 / p),   p = transition_contrast_boost

   (p = 1: lengths interpolated linearly; large p: the longer vector's length wins).
2. Pixel composite after decoding (`composite_alpha`). How much each pixel changed is
   measured on the latents, d = |final - original| per latent pixel (L2 over channels,
   widened by a 3x3 max and smoothed by a 3x3 mean, then upsampled to pixels). The
   generated pixel's opacity is a logistic in log-difference, biased by the mask:

       logit(alpha) = (1 - mask_influence) * difference_contrast * ln(d / difference_threshold)
                      + mask_influence * logit(m)

   so with no mask influence a pixel that changed by exactly the threshold is a 50/50 mix,
   less change keeps more of the original, and *difference contrast* sets how sharp that
   step is; with mask influence 1 the opacity is the mask itself. alpha is 0 where m = 0
   and 1 where m = 1, so untouched pixels come back exactly and the masked core is new.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core import latents as latents_io
from ..core.denoiser import MaskedDenoiser, SigmaSpace
from ..core.pipeline import Feature, Run
from ..core.request import FieldError, is_number, script_args
from .img2img import PreparedImage, finish_image

# the Inpaint tab's and a pasted infotext's name for the checkbox (the sliders: Parameter.field)
ENABLED_FIELD = "soft_inpainting"
ENABLED_KEY = "Soft inpainting enabled"
# AUTOMATIC1111's script name in alwayson_scripts (matched case-insensitively): the request's only home for these
ALWAYSON_NAME = "soft inpainting"


@dataclass(frozen=True)
class Parameter:
    arg: str        # the argument's name in alwayson_scripts["soft inpainting"]["args"] (object form)
    key: str        # infotext key, as AUTOMATIC1111 writes it
    label: str      # UI label
    default: float
    low: float
    high: float
    step: float
    info: str

    @property
    def field(self) -> str:
        """The Inpaint tab's control (and a pasted infotext's field) for this argument."""
        return f"{ENABLED_FIELD}_{self.arg}"


# in AUTOMATIC1111's order: its API passes them positionally after `enabled`
PARAMETERS = (
    Parameter("schedule_bias", "Soft inpainting schedule bias", "Schedule bias", 1.0, 0, 8, 0.1,
              "When the original yields during denoising: above 1 preserves more early, below 1 more late."),
    Parameter("preservation_strength", "Soft inpainting preservation strength",
              "Preservation strength", 0.5, 0, 8, 0.05,
              "How strongly partially masked areas keep the original (0: not at all)."),
    Parameter("transition_contrast_boost", "Soft inpainting transition contrast boost",
              "Transition contrast boost", 4.0, 1, 32, 0.5,
              "Keeps the contrast a plain blend loses in the transition; high values may over-saturate."),
    Parameter("mask_influence", "Soft inpainting mask influence", "Mask influence", 0.0, 0, 1, 0.05,
              "0: the final blend follows only how much each area changed; 1: it follows the mask."),
    Parameter("difference_threshold", "Soft inpainting difference threshold", "Difference threshold",
              0.5, 0, 8, 0.25, "The change (latent units) at which the original pixels drop below 50% opacity."),
    Parameter("difference_contrast", "Soft inpainting difference contrast", "Difference contrast",
              2.0, 0, 8, 0.25, "How sharp the step from original to new pixels is (low: gradual, may ghost)."),
)

# the UI's and paste's field names: the checkbox, then one per parameter
UI_FIELDS = (ENABLED_FIELD, *(p.field for p in PARAMETERS))

@dataclass(frozen=True)
class SoftInpaintSettings:
    schedule_bias: float = 1.0
    preservation_strength: float = 0.5
    transition_contrast_boost: float = 4.0
    mask_influence: float = 0.0
    difference_threshold: float = 0.5
    difference_contrast: float = 2.0


def _has_mask(request: Any) -> bool:
    outpaint = any(getattr(request, f"outpaint_{side}", 0) for side in ("left", "right", "up", "down"))
    return getattr(request, "mode", "") == "img2img" and (request.mask is not None or bool(outpaint))


# ---- request data: the always-on script's args, validation, infotext ---------------------------------


def alwayson_value(request: Any) -> Any:
    """The request's `alwayson_scripts` entry for soft inpainting (any capitalisation), or None."""
    return next((v for k, v in request.alwayson().items() if isinstance(k, str) and k.strip().lower() ==
                 ALWAYSON_NAME), None)


def from_alwayson(value: Any) -> dict[str, Any]:
    """{"enabled": ..., argument name: value} from AUTOMATIC1111's `alwayson_scripts["soft inpainting"]`.

    `args` is positional as A1111 sends it ([enabled, schedule bias, preservation strength,
    transition contrast boost, mask influence, difference threshold, difference contrast];
    missing trailing values take the defaults) or an object keyed by argument name.
    Raises ValueError naming the problem.
    """
    args = script_args(value)
    if args is None:
        args = []
    names = ["enabled", *(p.arg for p in PARAMETERS)]
    if isinstance(args, dict):
        unknown = [key for key in args if key not in names]
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} (known: {', '.join(names)})")
        return dict(args)
    if not isinstance(args, list):
        raise ValueError("args must be a list [enabled, schedule bias, preservation strength, transition contrast "
                         "boost, mask influence, difference threshold, difference contrast] or an object")
    if len(args) > len(names):
        raise ValueError(f"takes at most {len(names)} args (got {len(args)})")
    return dict(zip(names, args))


def alwayson_args(enabled: bool, values: dict[str, Any]) -> dict[str, Any]:
    """The `alwayson_scripts` entry for these settings (values by argument name; missing: the defaults)."""
    return {"args": [bool(enabled), *(values.get(p.arg, p.default) for p in PARAMETERS)]}


def parse_args(value: Any) -> tuple[dict[str, Any], list[FieldError]]:
    """The arguments by name (defaults filled in) and an error naming each invalid one."""
    field = f"alwayson_scripts.{ALWAYSON_NAME}.args"
    try:
        given = from_alwayson(value)
    except ValueError as exc:
        return {}, [FieldError(field, str(exc))]
    args = {"enabled": given.get("enabled", False), **{p.arg: given.get(p.arg, p.default) for p in PARAMETERS}}
    errors = []
    if not isinstance(args["enabled"], bool):
        errors.append(FieldError(f"{field}.enabled", "must be true or false"))
    for p in PARAMETERS:
        value = args[p.arg]
        if not is_number(value) or not p.low <= value <= p.high:
            errors.append(FieldError(f"{field}.{p.arg}", f"must be a number from {p.low:g} to {p.high:g} "
                                                          f"(got {value!r})"))
    return args, errors


def infotext_params(settings: SoftInpaintSettings) -> dict[str, Any]:
    """AUTOMATIC1111's infotext keys for settings that ran."""
    params: dict[str, Any] = {ENABLED_KEY: True}
    params.update({p.key: float(getattr(settings, p.arg)) for p in PARAMETERS})
    return params


def fields_from_params(params: dict[str, str], inpainting: bool = False) -> dict[str, Any]:
    """The Inpaint tab's values from infotext params (those it states; "Soft inpainting enabled" switches it on).

    An inpainting infotext without the keys was made with soft inpainting off, so it restores off.
    """
    if ENABLED_KEY not in params:
        return {ENABLED_FIELD: False} if inpainting else {}
    fields_: dict[str, Any] = {ENABLED_FIELD: params[ENABLED_KEY].strip().lower() == "true"}
    for p in PARAMETERS:
        try:
            value = float(params.get(p.key, ""))
        except ValueError:
            continue
        if math.isfinite(value):
            fields_[p.field] = value
    return fields_


# ---- step 1: the latent blend ---------------------------------------------------------------------


def latent_weights(mask: torch.Tensor, sigma: float, settings: SoftInpaintSettings) -> torch.Tensor:
    """w = m ** (preservation * sigma ** bias), 0 where m = 0: how much of the new latent each pixel takes."""
    exponent = settings.preservation_strength * float(sigma) ** settings.schedule_bias
    return torch.where(mask > 0, mask.clamp(0, 1) ** exponent, torch.zeros_like(mask))


def blend_latents(original: torch.Tensor, current: torch.Tensor, weight: torch.Tensor, boost: float) -> torch.Tensor:
    """Linear blend's direction, power-mean length (see the module docstring); exact at w = 0 and w = 1."""
    a, b, w = original.double(), current.double(), weight.double().clamp(0, 1)
    mixed = a + (b - a) * w
    log_a = a.norm(dim=1, keepdim=True).clamp_min(1e-12).log()
    log_b = b.norm(dim=1, keepdim=True).clamp_min(1e-12).log()
    p = float(boost)
    # the power mean in log space, so large boosts cannot overflow
    terms = torch.stack([torch.log1p(-w) + p * log_a, w.log() + p * log_b])
    length = (torch.logsumexp(terms, dim=0) / p).exp()
    norm = mixed.norm(dim=1, keepdim=True)
    scaled = torch.where(norm > 1e-8, mixed * (length / norm.clamp_min(1e-8)), mixed)
    out = torch.where(w <= 0, a, torch.where(w >= 1, b, scaled))
    return out.to(original.dtype)


class SoftMaskedDenoiser(MaskedDenoiser):
    """MaskedDenoiser with per-pixel, per-step weights instead of a binary mask."""

    def __init__(self, inner: SigmaSpace, init_latent: torch.Tensor, soft_mask: torch.Tensor,
                 settings: SoftInpaintSettings):
        super().__init__(inner, init_latent, (soft_mask > 0).to(init_latent.dtype))
        self.soft_mask = soft_mask.to(init_latent.device, init_latent.dtype)
        self.settings = settings

    def _blend(self, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
        weight = latent_weights(self.soft_mask, sigma, self.settings)
        return blend_latents(self.init, denoised, weight, self.settings.transition_contrast_boost)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self._blend(self.inner.denoise(x, sigma), float(sigma))

    def predict(self, x_in: torch.Tensor, t) -> torch.Tensor:
        """Diffusers schedulers (VP space): blend the implied clean latents, then express them as a prediction."""
        out = self.inner.predict(x_in, t)
        sigma = self.sigma_at(t)
        clean = self._blend(self.parameterisation.clean_from_output(x_in.float(), sigma, out), sigma)
        return self.parameterisation.output_for_clean(x_in.float(), sigma, clean)


def latent_soft_masks(masks: list[Image.Image], latent_size: tuple[int, int]) -> torch.Tensor:
    """The blurred masks at latent resolution, not rounded: (batch, 1, h, w) in 0..1."""
    arrays = [np.asarray(m.convert("L").resize(latent_size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
              for m in masks]
    return torch.from_numpy(np.stack(arrays))[:, None]


def wrap_denoiser(settings: "SoftInpaintSettings | None", denoiser: SigmaSpace, init: torch.Tensor,
                  change: torch.Tensor, masks: list[Image.Image]) -> MaskedDenoiser:
    """The inpainting denoiser: soft with the request's settings when soft inpainting is on, else the binary one."""
    if settings is None:
        return MaskedDenoiser(denoiser, init, change)
    soft = latent_soft_masks(masks, (init.shape[-1], init.shape[-2])).to(init.device, init.dtype)
    return SoftMaskedDenoiser(denoiser, init, soft, settings)


# ---- step 2: the pixel composite ------------------------------------------------------------------


def difference_map(final: torch.Tensor, original: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """How much each pixel changed, in latent units: (height, width) for a (1, C, h, w) latent pair.

    A latent pixel covers 8x8 pixels and the decoder spreads a change to its neighbours,
    so the distance is widened (3x3 max) and smoothed (3x3 mean) before upsampling.
    """
    distance = (final.double() - original.double()).norm(dim=1, keepdim=True)
    distance = torch.nn.functional.max_pool2d(distance, 3, stride=1, padding=1)
    distance = torch.nn.functional.avg_pool2d(distance, 3, stride=1, padding=1, count_include_pad=False)
    upsampled = torch.nn.functional.interpolate(distance, size=(size[1], size[0]), mode="bilinear",
                                                align_corners=False)
    return upsampled[0, 0].cpu().numpy()


def composite_alpha(mask: np.ndarray, difference: np.ndarray, settings: SoftInpaintSettings) -> np.ndarray:
    """Opacity of the generated pixels (0..1) from the mask (0..1) and the difference map (module docstring)."""
    m = np.clip(mask.astype(np.float64), 0, 1)
    d = np.maximum(difference.astype(np.float64), 1e-12)
    threshold = max(settings.difference_threshold, 1e-9)  # 0: any change at all takes the new pixels
    influence = settings.mask_influence
    with np.errstate(divide="ignore"):
        mask_logit = np.log(m) - np.log1p(-m)
    inner = (m > 0) & (m < 1)
    z = np.zeros_like(m)
    z[inner] = ((1 - influence) * settings.difference_contrast * np.log(d[inner] / threshold)
                + influence * mask_logit[inner])
    alpha = 0.5 * (1 + np.tanh(0.5 * z))  # the logistic, without overflow
    alpha[m <= 0] = 0.0
    alpha[m >= 1] = 1.0
    return alpha


def soft_finish(result: Image.Image, prepared: PreparedImage, final: torch.Tensor, original: torch.Tensor,
                settings: SoftInpaintSettings) -> Image.Image:
    """Composite one generated image into the original by the soft alpha (exact where the mask is 0)."""
    difference = difference_map(final[None], original[None], result.size)
    if prepared.region is not None:  # "only masked": the crop goes back into the full picture
        region = prepared.region
        crop = Image.fromarray(difference.astype(np.float32), "F").resize(region.size, Image.Resampling.BILINEAR)
        full = np.zeros((prepared.original.height, prepared.original.width), dtype=np.float64)
        full[region.top:region.bottom, region.left:region.right] = np.asarray(crop, dtype=np.float64)
        difference = full
    elif result.size != prepared.original.size:  # outpainting: the canvas rounded to /8 and back
        resized = Image.fromarray(difference.astype(np.float32), "F").resize(prepared.original.size,
                                                                             Image.Resampling.BILINEAR)
        difference = np.asarray(resized, dtype=np.float64)
    mask = np.asarray(prepared.overlay_mask.convert("L"), dtype=np.float64) / 255.0
    return finish_image(result, prepared, alpha=composite_alpha(mask, difference, settings))


def finish_images(model: Any, settings: "SoftInpaintSettings | None", images: list[Image.Image],
                  prepared: list[PreparedImage],
                  latents: torch.Tensor) -> list[Image.Image]:
    """Put a batch's images back into their originals: the soft composite when it is on, else the mask's."""
    if settings is None or any(p.overlay_mask is None for p in prepared):
        return [finish_image(image, p) for image, p in zip(images, prepared)]
    originals: dict[int, torch.Tensor] = {}  # the same input repeated in a batch is encoded once
    out = []
    for image, p, final in zip(images, prepared, latents):
        if id(p) not in originals:
            originals[id(p)] = latents_io.encode(model, [p.target])[0].to(final.device)
        out.append(soft_finish(image, p, final, originals[id(p)], settings))
    return out


class SoftInpainting(Feature):
    """Soft inpainting's always-on args and infotext; img2img's init and finish steps call the rest."""

    name = "soft_inpainting"

    def parse(self, request: Any) -> tuple[SoftInpaintSettings | None, list[FieldError]]:
        """The settings when soft inpainting is on and there is a mask to soften (else None), parsed once."""
        value = alwayson_value(request)
        if value is None:
            return None, []
        args, errors = parse_args(value)
        if errors or not args["enabled"] or not _has_mask(request):
            return None, errors
        return SoftInpaintSettings(*(float(args[p.arg]) for p in PARAMETERS)), []

    def infotext(self, run: Run) -> dict[str, Any]:
        settings = run.args.get(self.name)
        return infotext_params(settings) if settings is not None else {}
