"""Extras: upscale and restore faces of one image or a batch, as AUTOMATIC1111's Extras tab does.

Requests use the field names of A1111's /sdapi/v1/extra-single-image and extra-batch-images,
so an API route can map onto `ExtrasRequest` one to one. Work runs as a job in Easel's
queue (it shares the GPU with generation), reports progress per tile and per image, and
stops within one tile on Interrupt.

Per image, in A1111's current order: upscale (upscaler 1, optionally blended with
upscaler 2), then GFPGAN, then CodeFormer. Results go to outputs/extras-images/ as
`00000.png` (batch: `00000-<original name>.png`; A1111 reuses the bare original name and
can overwrite, Easel never does). The PNG keeps the source image's generation
`parameters` and adds `postprocessing` (and A1111's duplicate `extras`) with text like
"Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+".

In a batch, a file that cannot be read, or is too large, is reported by name and the
others are still processed.
"""
from __future__ import annotations

import io
import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from PIL import Image, PngImagePlugin

from ..core.image_input import ImageInputError, max_megapixels, open_image_checked, readable_formats
from ..core.images import encode_image, next_number, read_infotext, sanitize
from ..core.infotext import format_value, quote
from ..core.jobs import Interrupted, Job, JobQueue, Skipped
from ..core.request import FieldError, ValidationError
from ..fileio import atomic_write_bytes
from ..output_limits import image_error, total_error
from .faces import CODEFORMER, GFPGAN, FaceRestorers
from .upscalers import NONE, UpscaleError, Upscalers

MAX_BATCH_IMAGES = 1000
MAX_SCALE = 8.0
MAX_SIZE = 8192

ImageSource = Union[str, Path, bytes, BinaryIO, Image.Image]


@dataclass
class ExtrasRequest:
    """What to do to each image. Field names are A1111's extras API names."""

    resize_mode: int = 0                  # 0: scale by `upscaling_resize`; 1: scale to w x h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True           # scale to: crop to exactly w x h (else cover it, keeping aspect)
    upscaler_1: str = NONE
    upscaler_2: str = NONE
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = True            # A1111's current pipeline always upscales before restoring faces
    save_images: bool = True

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self, upscaler_names: list[str], restorers: list[str]) -> None:
        """Raise ValidationError naming every bad field."""
        errors: list[FieldError] = []

        def number(name: str, low: float, high: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                errors.append(FieldError(name, f"expected a number, got {value!r}"))
            elif not low <= value <= high:
                errors.append(FieldError(name, f"must be between {low:g} and {high:g}; got {value:g}"))

        if self.resize_mode not in (0, 1):
            errors.append(FieldError("resize_mode", f"must be 0 (scale by) or 1 (scale to); got {self.resize_mode!r}"))
        number("upscaling_resize", 0.05, MAX_SCALE)
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
                errors.append(FieldError(name, f"must be a whole number of pixels from 1 to {MAX_SIZE}; got {value!r}"))
        for name in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility",
                     "codeformer_weight"):
            number(name, 0.0, 1.0)
        lowered = {n.lower() for n in upscaler_names}
        for name in ("upscaler_1", "upscaler_2"):
            value = getattr(self, name)
            if not isinstance(value, str) or value.lower() not in lowered:
                errors.append(FieldError(name, f"unknown upscaler {value!r}; available: {', '.join(upscaler_names)}"))
        for name, restorer in (("gfpgan_visibility", GFPGAN), ("codeformer_visibility", CODEFORMER)):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and value > 0 and restorer not in restorers:
                folder = "models/GFPGAN" if restorer == GFPGAN else "models/Codeformer"
                errors.append(FieldError(name, f"no {restorer} model is installed (put one into {folder})"))
        if errors:
            raise ValidationError(errors)

    @property
    def does_anything(self) -> bool:
        return self.upscaler_1 != NONE or self.gfpgan_visibility > 0 or self.codeformer_visibility > 0


@dataclass
class ExtrasInput:
    """One image to process: where it comes from and the name to report and save it under."""

    source: ImageSource
    name: str = ""


@dataclass
class ExtrasResult:
    images: list[Image.Image] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)   # (name, why)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        notes = [why if why.startswith(name) else f"{name}: {why}" for name, why in self.failures]
        if self.interrupted:
            notes.append(f"Interrupted: kept {len(self.images)} finished image(s).")
        return notes


def upscale_size(size: tuple[int, int], request: ExtrasRequest) -> tuple[int, int]:
    """The size the upscaler makes from an image of `size` (before a scale-to crop)."""
    width, height = size
    if request.resize_mode == 1:
        factor = max(request.upscaling_resize_w / width, request.upscaling_resize_h / height)
    else:
        factor = float(request.upscaling_resize)
    return max(1, round(width * factor)), max(1, round(height * factor))


def declared_size(source: ImageSource) -> tuple[int, int] | None:
    """An input's size from its header alone (no pixels decoded); None when it cannot be read."""
    if isinstance(source, Image.Image):
        return source.size
    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    position = stream.tell() if hasattr(stream, "tell") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(stream, formats=readable_formats()) as image:
                return image.size
    except Exception:  # noqa: BLE001 - damaged files are reported when the batch opens them
        return None
    finally:
        if position is not None:
            stream.seek(position)


def format_postprocess(info: dict[str, Any]) -> str:
    """A1111's postprocessing text: `key: value` pairs joined by ", ", values quoted where needed."""
    return ", ".join(f"{k}: {quote(format_value(v))}" for k, v in info.items() if v is not None)


def _center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


class ExtrasService:
    """Runs extras requests on Easel's queue and saves the results."""

    def __init__(self, upscalers: Upscalers, faces: FaceRestorers, settings, outputs_dir: Path):
        self.upscalers = upscalers
        self.faces = faces
        self.settings = settings
        self.outputs_dir = outputs_dir

    # ---- submitting --------------------------------------------------------------------------------

    def validate(self, request: ExtrasRequest, inputs: list[ExtrasInput],
                 fields: list[str] | None = None) -> None:
        """Raise ValidationError naming every bad field, including outputs over the size limits.

        `fields`: the request field each input came in (e.g. `imageList.3.data`), for messages.
        """
        request.validate(self.upscalers.list_upscalers(), self.faces.available())
        if not inputs:
            raise ValidationError([FieldError("image", "no image given")])
        if len(inputs) > MAX_BATCH_IMAGES:
            raise ValidationError([FieldError("imageList", f"at most {MAX_BATCH_IMAGES} images per batch; "
                                                           f"got {len(inputs)}")])
        errors = self.output_errors(request, inputs, fields)
        if errors:
            raise ValidationError(errors)

    def output_errors(self, request: ExtrasRequest, inputs: list[ExtrasInput],
                      fields: list[str] | None = None) -> list[FieldError]:
        """The upscale each input asks for, against img_max_output_mp and job_max_output_mp (before any work)."""
        field = "upscaling_resize" if request.resize_mode == 0 else "upscaling_resize_w"
        errors: list[FieldError] = []
        sizes: list[tuple[int, int]] = []
        for index, item in enumerate(inputs):
            size = declared_size(item.source)
            if size is None or size[0] * size[1] / 1e6 > self._max_megapixels():
                continue  # unreadable or over the input limit: reported by name when the batch runs
            if request.upscaler_1 != NONE:
                size = upscale_size(size, request)
            sizes.append(size)
            where = (fields[index] if fields else "") or item.name or f"image {index + 1}"
            error = image_error(field, size, self.settings, what=where if len(inputs) > 1 else "")
            if error:
                errors.append(error)
        total = None if errors else total_error("imageList" if len(inputs) > 1 else field, sizes, self.settings)
        return errors + ([total] if total else [])

    def submit(self, queue: JobQueue, request: ExtrasRequest, inputs: list[ExtrasInput],
               owner: str | None = None) -> Job:
        """Validate now (bad fields fail at once), then queue the work."""
        self.validate(request, inputs)
        description = f"extras: {len(inputs)} image(s)"
        store = self.upscalers.cache.store  # the app's model store: as for generations, what the job uses stays
        # loaded until it ends, and then memory modes park what it onloaded (an upscaler in model offload)

        def run(job: Job):
            with store.in_use():
                return self.run(request, inputs, job)

        return queue.submit(run, kind="extras", owner=owner, description=description)

    # ---- running ------------------------------------------------------------------------------------

    def output_folder(self) -> Path:
        configured = self.settings.get("outdir_extras_samples") or ""
        return Path(configured) if configured else self.outputs_dir / "extras-images"

    def _max_megapixels(self) -> float:
        return max_megapixels(self.settings)

    def _open(self, item: ExtrasInput) -> Image.Image:
        if isinstance(item.source, Image.Image):
            width, height = item.source.size
            if width * height / 1e6 > self._max_megapixels():
                raise ImageInputError(f"{item.name or 'the image'}: {width}x{height} is larger than "
                                      f"{self._max_megapixels():g} megapixels")
            return item.source
        return open_image_checked(item.source, self._max_megapixels(), name=item.name or None)

    def run(self, request: ExtrasRequest, inputs: list[ExtrasInput], job: Job | None = None) -> ExtrasResult:
        """Process every input; unreadable or too large ones are reported, the rest go on."""
        started = time.monotonic()
        result = ExtrasResult()
        check = job.check if job else None
        if job:
            job.progress.job_count = len(inputs)
        try:
            for index, item in enumerate(inputs):
                name = item.name or f"image {index + 1}"
                if job:
                    job.progress.job_no = index
                    job.report(step=0, total=1, text=f"{name}")
                    job.check()
                try:
                    image = self._open(item)
                    processed, info = self.process(image, request, job, check)
                except (ImageInputError, UpscaleError) as exc:
                    result.failures.append((name, str(exc)))
                    continue
                except Skipped:
                    result.failures.append((name, "skipped"))
                    continue
                text = format_postprocess(info)
                result.images.append(processed)
                result.infotexts.append(text)
                result.names.append(name)
                if request.save_images:
                    path = self.save(processed, text, read_infotext(image), item.name if len(inputs) > 1 else "")
                    result.paths.append(str(path))
        except Interrupted:
            result.interrupted = True
        result.seconds = time.monotonic() - started
        return result

    def process(self, image: Image.Image, request: ExtrasRequest, job: Job | None = None,
                check: Callable[[], None] | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """One image through the requested steps; returns it with the infotext entries."""
        info: dict[str, Any] = {}

        def progress(done: int, total: int) -> None:
            if job:
                job.report(step=done, total=total)

        steps = [self._upscale, self._restore] if request.upscale_first else [self._restore, self._upscale]
        for step in steps:
            image = step(image, request, info, progress, check)
        return image, info

    def _upscale(self, image: Image.Image, request: ExtrasRequest, info: dict[str, Any], progress, check) -> Image.Image:
        if request.upscaler_1 == NONE:
            return image
        if request.resize_mode == 1:
            width, height = request.upscaling_resize_w, request.upscaling_resize_h
            info["Postprocess upscale to"] = f"{width}x{height}"
        else:
            info["Postprocess upscale by"] = request.upscaling_resize
        target = upscale_size(image.size, request)
        result = self.upscalers.upscale(image, request.upscaler_1, size=target, progress=progress, check=check)
        info["Postprocess upscaler"] = request.upscaler_1
        if request.upscaler_2 != NONE and request.extras_upscaler_2_visibility > 0:
            second = self.upscalers.upscale(image, request.upscaler_2, size=target, progress=progress, check=check)
            if second.mode != result.mode:
                second = second.convert(result.mode)
            result = Image.blend(result, second, float(request.extras_upscaler_2_visibility))
            info["Postprocess upscaler 2"] = request.upscaler_2
            info["Postprocess upscaler 2 visibility"] = round(float(request.extras_upscaler_2_visibility), 3)
        if request.resize_mode == 1 and request.upscaling_crop and result.size != (width, height):
            result = _center_crop(result, width, height)
            info["Postprocess crop to"] = f"{width}x{height}"
        return result

    def _restore(self, image: Image.Image, request: ExtrasRequest, info: dict[str, Any], progress, check) -> Image.Image:
        for restorer, visibility in ((GFPGAN, request.gfpgan_visibility), (CODEFORMER, request.codeformer_visibility)):
            if visibility <= 0:
                continue
            alpha = image.getchannel("A") if image.mode == "RGBA" else None
            rgb = image.convert("RGB")
            restored = self.faces.restore(rgb, restorer, codeformer_weight=float(request.codeformer_weight),
                                          check=check).image
            if visibility < 1:
                restored = Image.blend(rgb, restored, float(visibility))
            if alpha is not None:
                restored.putalpha(alpha)
            image = restored
            info[f"{restorer} visibility"] = round(float(visibility), 3)
            if restorer == CODEFORMER:
                info["CodeFormer weight"] = round(float(request.codeformer_weight), 3)
        return image

    # ---- saving ----------------------------------------------------------------------------------------

    def save(self, image: Image.Image, postprocessing: str, parameters: str | None, original_name: str = "") -> Path:
        """Write `NNNNN[-name].<ext>` into the extras folder, never replacing a file."""
        folder = self.output_folder()
        folder.mkdir(parents=True, exist_ok=True)
        fmt = (self.settings.get("samples_format") or "png").lower()
        with_info = bool(self.settings.get("enable_pnginfo"))
        data = encode_extras(image, fmt, postprocessing if with_info else None, parameters if with_info else None,
                             int(self.settings.get("jpeg_quality") or 80))
        stem = sanitize(Path(original_name).stem.replace("[", "(").replace("]", ")")) if original_name else ""
        ext = "jpg" if fmt == "jpeg" else fmt
        number = next_number(folder)
        while True:
            path = folder / (f"{number:05}-{stem}.{ext}" if stem else f"{number:05}.{ext}")
            if not path.exists():
                break
            number += 1
        atomic_write_bytes(path, data)
        return path


def encode_extras(image: Image.Image, fmt: str, postprocessing: str | None, parameters: str | None,
                  quality: int = 80) -> bytes:
    """PNG: the source's `parameters` kept, `postprocessing` and `extras` added. JPEG/WebP: EXIF UserComment."""
    if fmt != "png":
        return encode_image(image, fmt, postprocessing, quality)
    meta = PngImagePlugin.PngInfo()
    if parameters:
        meta.add_text("parameters", parameters)
    if postprocessing:
        meta.add_text("postprocessing", postprocessing)
        meta.add_text("extras", postprocessing)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=meta)
    return buffer.getvalue()
