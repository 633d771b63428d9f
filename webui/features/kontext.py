"""A Kontext reference image for txt2img (and its hires pass): FLUX.1 Kontext dev edits or follows a picture.

In img2img a Kontext checkpoint takes the input picture as its reference (img2img_feature.py). txt2img has
no input picture, so this feature gives it one: `alwayson_scripts["Kontext"]` = `{"args": [image, resize]}`
(or `{"args": {"image": ..., "resize": ...}}`), the image as base64 over the API or a PIL image from the UI.
`resize` is how FluxKontextPipeline sizes its `image`: "Kontext resolutions" (its default: the preferred
Kontext resolution nearest the picture's aspect ratio) or "Image size" (its `_auto_resize=False`: the
picture's own size, each side floored to a multiple of 16). The picture is encoded once (posterior mean,
as the pipeline's `_encode_vae_image`) and every pass's init step is wrapped so the denoiser gets its
latents (`set_reference`): the first pass and the hires pass see the same reference tokens. In img2img an
explicit Kontext reference replaces the input picture as the reference (the picture stays the start).
Infotext: `Kontext reference: <w>x<h>` (the encoded size) and `Kontext resize`; paste (ui/kontext_ui.py)
restores the resize choice (an image is not in the infotext).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..core import latents as latents_io
from ..core.image_input import ImageInputError, decode_base64_image
from ..core.pipeline import Feature, Pass, Run, Sampling
from ..core.request import FieldError, ValidationError, script_args

ALWAYSON_NAME = "kontext"
FIELD = "alwayson_scripts.Kontext.args"
PREFERRED = "Kontext resolutions"
IMAGE_SIZE = "Image size"
RESIZE_MODES = (PREFERRED, IMAGE_SIZE)
# FluxKontextPipeline's PREFERRED_KONTEXT_RESOLUTIONS (width, height): what Kontext was trained on
PREFERRED_RESOLUTIONS = ((672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
                         (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
                         (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672))
MULTIPLE = 16  # the VAE's 8 times the 2x2 token patch


@dataclass(frozen=True)
class KontextArgs:
    image: Image.Image
    resize: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) the reference is encoded at, as FluxKontextPipeline picks it."""
        width, height = self.image.size
        if self.resize == PREFERRED:
            aspect = width / height
            _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_RESOLUTIONS)
        return width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE


def alwayson_value(request: Any) -> Any:
    return next((v for k, v in request.alwayson().items()
                 if isinstance(k, str) and k.strip().lower() == ALWAYSON_NAME), None)


def parse_args(value: Any) -> tuple[KontextArgs | None, list[FieldError]]:
    """The reference and its resize mode (None: no reference); errors name the argument."""
    args = script_args(value)
    if args is None or args == [] or args == {}:
        return None, []
    if isinstance(args, dict):
        unknown = [k for k in args if k not in ("image", "resize")]
        if unknown:
            return None, [FieldError(f"{FIELD}.{unknown[0]}", "unknown argument (known: image, resize)")]
        image, resize = args.get("image"), args.get("resize", PREFERRED)
    elif isinstance(args, list) and len(args) <= 2:
        image, resize = (list(args) + [PREFERRED])[:2]
    else:
        return None, [FieldError(FIELD, "must be [image, resize] or {\"image\": ..., \"resize\": ...}")]
    if image is None or image == "":
        return None, []
    if isinstance(image, str):
        try:
            image = decode_base64_image(image, f"{FIELD}.image")
        except ImageInputError as exc:
            return None, [FieldError(f"{FIELD}.image", str(exc).removeprefix(f"{FIELD}.image: "))]
    if not isinstance(image, Image.Image):
        return None, [FieldError(f"{FIELD}.image", "must be a base64-encoded image")]
    if resize not in RESIZE_MODES:
        return None, [FieldError(f"{FIELD}.resize", f"must be one of: {', '.join(RESIZE_MODES)}")]
    if min(image.size) < MULTIPLE:
        return None, [FieldError(f"{FIELD}.image", f"must be at least {MULTIPLE}x{MULTIPLE} pixels")]
    return KontextArgs(image.convert("RGB"), resize), []


class KontextReference(Feature):
    name = "kontext"

    def parse(self, request: Any) -> tuple[KontextArgs | None, list[FieldError]]:
        value = alwayson_value(request)
        return parse_args(value) if value is not None else (None, [])

    def begin(self, run: Run) -> None:
        args: KontextArgs | None = run.args.get(self.name)
        if args is None:
            return
        if not run.model.architecture.adapter.image_reference:
            raise ValidationError([FieldError(f"{FIELD}.image", f"{run.model.architecture.label} takes no Kontext "
                                              "reference (a FLUX.1 Kontext checkpoint does)")])
        picture = args.image.resize(args.size, Image.Resampling.LANCZOS) if args.image.size != args.size \
            else args.image
        run.state[self.name] = latents_io.encode(run.model, [picture])

    def begin_pass(self, run: Run, p: Pass) -> None:
        """Every pass (the first, hires) sees the reference: its init step is wrapped to hand it over."""
        latents = run.state.get(self.name)
        if latents is None:
            return
        before = p.init

        def init(run: Run, p: Pass, sampling: Sampling) -> None:
            if before is not None:
                before(run, p, sampling)
            reference = latents.to(run.model.device.device)
            sampling.denoiser.set_reference(reference.expand(len(sampling.batch.seeds), -1, -1, -1))

        p.init = init

    def infotext(self, run: Run) -> dict[str, Any]:
        args: KontextArgs | None = run.args.get(self.name)
        if args is None:
            return {}
        width, height = args.size
        return {"Kontext reference": f"{width}x{height}", "Kontext resize": args.resize}
