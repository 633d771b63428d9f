"""What every way in (UI, API, CLI, extensions) asks for, and what it gets back.

Field names are AUTOMATIC1111's `/sdapi/v1/txt2img` names, so the API maps onto this
dataclass one to one. `validate()` checks every field and reports each problem under
the field's name; nothing runs (and nothing is written) until a request is valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

MAX_SIDE = 4096
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 20_000
LORA_COMPOSITIONS = ("Merge", "Switch", "Composite")


@dataclass
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(ValueError):
    """One or more fields are invalid; `errors` names each."""

    user_facing = True

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as every way in asks for it; frozen: a change is `dataclasses.replace(request, ...)`."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    # guidance-distilled models (Flux dev): the guidance value the network is told (Forge's "Distilled CFG Scale")
    distilled_cfg_scale: float = 3.5
    width: int = 512
    height: int = 512
    seed: int = -1
    # variation seed: slerp the seed's noise towards this seed's by subseed_strength
    subseed: int = -1
    subseed_strength: float = 0.0
    # make the noise at this size and centre it (keeps a composition when the size changes)
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # sampler parameters for this request (None: the settings' values)
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    # AUTOMATIC1111's NGMS: skip the negative prompt below this sigma (None: the setting; 0: off)
    s_min_uncond: float | None = None
    # guidance: CFG rescale phi (Lin et al. 2023) and the step fractions where CFG applies
    cfg_rescale: float = 0.0
    cfg_interval_start: float = 0.0
    cfg_interval_end: float = 1.0
    batch_size: int = 1
    n_iter: int = 1
    # checkpoint by name, title, stem or hash; None = the one selected in the UI/settings
    checkpoint: str | None = None
    # styles from styles.csv applied to both prompts, in order
    styles: list[str] = field(default_factory=list)
    # per-request settings (AUTOMATIC1111's override_settings), e.g. {"CLIP_stop_at_last_layers": 2}
    override_settings: dict[str, Any] = field(default_factory=dict)
    # how several LoRAs combine: Merge (sum into the weights), Switch (rotate), Composite (average)
    lora_composition: str = "Merge"
    lora_switch_steps: int = 1
    # hires fix (txt2img): generate, upscale, refine at the larger size
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str = ""
    hr_scheduler: str = ""
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # the hires pass on another checkpoint ("" or "Use same checkpoint": the job's), AUTOMATIC1111's field
    hr_checkpoint_name: str = ""
    # hires fix from this picture instead of a generated first pass (a PIL image), AUTOMATIC1111's field
    firstpass_image: Any = None
    denoising_strength: float = 0.75
    # after decoding: restore faces with the face_restoration_model setting (features/face_restore.py)
    restore_faces: bool = False
    # a picture that repeats seamlessly: circular padding in the UNet and VAE (features/tiling.py)
    tiling: bool = False
    # AUTOMATIC1111's switch: <lora:...> tags are taken out of the prompts but not applied
    disable_extra_networks: bool = False
    # SDXL refiner handoff: sampling continues with this checkpoint from the step given as a fraction
    refiner_checkpoint: str = ""
    refiner_switch_at: float = 0.8
    # img2img / inpainting (mode "img2img"); images are PIL images here, base64 only at the API edge
    init_images: list[Any] = field(default_factory=list)
    resize_mode: int = 0
    mask: Any = None
    mask_blur: int = 4
    # AUTOMATIC1111's separate blur along x and y (None: mask_blur); unrounded latent mask; a separate mask for
    # the latent blend (a PIL image); img2img's initial noise multiplier (None: the setting)
    mask_blur_x: int | None = None
    mask_blur_y: int | None = None
    mask_round: bool = True
    latent_mask: Any = None
    initial_noise_multiplier: float | None = None
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    # outpainting: grow the canvas by this many pixels on each side, then inpaint the border
    outpaint_left: int = 0
    outpaint_right: int = 0
    outpaint_up: int = 0
    outpaint_down: int = 0
    save_images: bool = True
    # where the request came from, for output folders and infotext ("txt2img", ...)
    mode: str = "txt2img"
    # scripts (AUTOMATIC1111's names): a selectable script and its named arguments; always-on
    # scripts' arguments keyed by script name ({"name": {"args": {...}}})
    script_name: str = ""
    script_args: dict[str, Any] = field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)
    # free-form values extensions attach, keyed by extension name
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Constructing is validating: a GenerationRequest that exists has valid common fields.

        What needs the engine (sampler names, each feature's arguments) is checked by
        `Engine.prepare`, which turns the request into a PreparedRequest.
        """
        self.validate()

    def alwayson(self) -> dict[str, Any]:
        """`alwayson_scripts`, or {} when it is not an object (validation reports that on its own field)."""
        return self.alwayson_scripts if isinstance(self.alwayson_scripts, dict) else {}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build from loosely typed input (JSON, form values); unknown keys are errors."""
        known = set(cls.field_names())
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValidationError([FieldError(k, "unknown field") for k in unknown])
        return cls(**data)

    def validate(self, samplers: "SamplerCatalog | None" = None) -> None:
        """The fields every request has; features (img2img, hires fix ...) check their own (Engine.validate)."""
        errors = list(self._field_errors())
        if samplers is not None and isinstance(self.sampler_name, str) and isinstance(self.scheduler, str):
            errors.extend(samplers.check(self.sampler_name, self.scheduler))
        if errors:
            raise ValidationError(errors)

    def _field_errors(self):
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                yield FieldError(name, "must be text")
            elif len(value) > MAX_PROMPT_CHARS:
                yield FieldError(name, f"is longer than {MAX_PROMPT_CHARS} characters")
        yield from int_in(self, "steps", 1, MAX_STEPS)
        for name in ("width", "height"):
            problem = next(int_in(self, name, 64, MAX_SIDE), None)
            if problem:
                yield problem
            elif getattr(self, name) % 8:
                yield FieldError(name, f"must be a multiple of 8 (got {getattr(self, name)})")
        yield from int_in(self, "batch_size", 1, MAX_BATCH_SIZE)
        yield from int_in(self, "n_iter", 1, MAX_BATCH_COUNT)
        if not is_int(self.seed) or not (self.seed == -1 or 0 <= self.seed <= MAX_SEED):
            yield FieldError("seed", f"must be -1 (random) or a whole number from 0 to {MAX_SEED}")
        if not is_number(self.cfg_scale) or not (0 <= self.cfg_scale <= 100):
            yield FieldError("cfg_scale", "must be a number from 0 to 100")
        if not is_int(self.subseed) or not (self.subseed == -1 or 0 <= self.subseed <= MAX_SEED):
            yield FieldError("subseed", f"must be -1 (random) or a whole number from 0 to {MAX_SEED}")
        for name, low, high in (("distilled_cfg_scale", 0, 100), ("subseed_strength", 0, 1), ("cfg_rescale", 0, 1), ("cfg_interval_start", 0, 1),
                                ("cfg_interval_end", 0, 1)):
            value = getattr(self, name)
            if not is_number(value) or not low <= value <= high:
                yield FieldError(name, f"must be a number from {low} to {high}")
        if is_number(self.cfg_interval_start) and is_number(self.cfg_interval_end) and \
                self.cfg_interval_start > self.cfg_interval_end:
            yield FieldError("cfg_interval_end", "must not be before cfg_interval_start")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            if not is_int(value) or not (value <= 0 or (64 <= value <= MAX_SIDE and value % 8 == 0)):
                yield FieldError(name, f"must be 0 (off) or a multiple of 8 from 64 to {MAX_SIDE}")
        for name, high in (("eta", 1), ("s_churn", 100), ("s_tmin", 100), ("s_tmax", 1000), ("s_noise", 1.5)):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not 0 <= value <= high):
                yield FieldError(name, f"must be empty or a number from 0 to {high}")
        for name in ("sampler_name", "scheduler"):
            if not isinstance(getattr(self, name), str):
                yield FieldError(name, "must be text")
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            yield FieldError("checkpoint", "must be a checkpoint name")
        if self.mode not in ("txt2img", "img2img"):
            yield FieldError("mode", "must be txt2img or img2img")
        if not isinstance(self.extra, dict):
            yield FieldError("extra", "must be an object")
        for name in ("restore_faces", "tiling", "disable_extra_networks"):
            if not isinstance(getattr(self, name), bool):
                yield FieldError(name, "must be true or false")
        if not isinstance(self.script_name, str):
            yield FieldError("script_name", "must be a script name")
        if not isinstance(self.script_args, dict):
            yield FieldError("script_args", "must be an object of argument names to values")
        if not isinstance(self.alwayson_scripts, dict):
            yield FieldError("alwayson_scripts", "must be an object keyed by script name")
        if not isinstance(self.styles, list) or not all(isinstance(s, str) for s in self.styles):
            yield FieldError("styles", "must be a list of style names")
        if self.lora_composition not in LORA_COMPOSITIONS:
            yield FieldError("lora_composition", f"must be one of {', '.join(LORA_COMPOSITIONS)}")
        yield from int_in(self, "lora_switch_steps", 1, MAX_STEPS)
        yield from _override_errors(self.override_settings)


MODEL_WIDE = ("applies to how models are loaded and kept, not to one request: set it in Settings or with "
              "POST /sdapi/v1/options")


def script_args(value: Any) -> Any:
    """An always-on script's arguments: `{"args": [...]}` as AUTOMATIC1111's clients send them, or the bare list."""
    return value.get("args", []) if isinstance(value, dict) else value


def _override_errors(overrides: Any):
    from ..settings import Settings

    if not isinstance(overrides, dict):
        yield FieldError("override_settings", "must be an object of setting names to values")
        return
    spec = Settings.spec()
    for key, value in overrides.items():
        if key in spec and spec[key].metadata.get("protected"):
            yield FieldError(f"override_settings.{key}", "cannot be overridden per request")
            continue
        if key in spec and spec[key].metadata.get("model_wide"):
            yield FieldError(f"override_settings.{key}", MODEL_WIDE)
            continue
        if key not in spec:
            continue  # AUTOMATIC1111 clients send options Easel does not have; they are ignored
        try:
            Settings.coerce(key, value)
        except ValueError as exc:
            yield FieldError(f"override_settings.{key}", str(exc).split(": ", 1)[-1])


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what every numeric request field must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_in(request: Any, name: str, low: int, high: int):
    """An error naming the field unless it is a whole number in [low, high]."""
    value = getattr(request, name)
    if not is_int(value) or not low <= value <= high:
        yield FieldError(name, f"must be a whole number from {low} to {high} (got {value!r})")


@dataclass
class Result:
    """Finished images with their infotext, in order, plus what happened on the way."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    skipped_batches: int = 0
    model_name: str = ""
    demo_model: bool = False

    @property
    def info(self) -> str:
        return self.infotexts[0] if self.infotexts else ""


class SamplerCatalog:
    """What `validate` needs from the sampler registry (implemented in samplers.py)."""

    def check(self, sampler_name: str, scheduler: str) -> list[FieldError]:  # pragma: no cover - interface
        raise NotImplementedError
