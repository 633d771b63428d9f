"""AUTOMATIC1111 request bodies -> Easel's GenerationRequest, and Results -> A1111 responses.

Every A1111 field ends in exactly one of three places, so nothing sent is silently dropped:

- a `GenerationRequest` field of the same name: passed through, validated by the engine
  (this grows by itself as features land: a field added there is passed from then on);
- a field with meaning only when something is switched on (hires settings without
  `enable_hr`, `s_tmin` without `s_churn`): accepted, as AUTOMATIC1111 ignores it too;
- a feature Easel does not have yet, switched on: 501 naming the capability.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import fields
from typing import Any

from .. import __version__
from ..core import samplers
from ..core.infotext import parse_infotext
from ..core.jobs import Job
from ..core.request import FieldError, GenerationRequest, Result, ValidationError
from ..model_manager.registry import ModelNotFoundError
from ..settings import Settings, SettingsStore
from .errors import ApiError, field_errors, invalid, not_implemented
from .images import encode_b64
from .models import GenerationFields, Txt2ImgRequest

REQUEST_FIELDS = frozenset(GenerationRequest.field_names())
_REQUEST_DEFAULTS = {f.name: f.default for f in fields(GenerationRequest)}
# handled here rather than passed through by name
_SPECIAL = {"sampler_name", "scheduler", "save_images", "override_settings", "mode", "checkpoint", "extra"}

# AUTOMATIC1111 options Easel has no setting for, with the values that mean "what Easel does anyway"
NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {
    "sd_vae": ("Automatic", "None", None),
    "CLIP_stop_at_last_layers": (1,),
    "eta_noise_seed_delta": (0,),
}

# AUTOMATIC1111's built-in selectable scripts, by lower-case title
A1111_SCRIPTS = {
    "prompt matrix": "the Prompt matrix script",
    "prompts from file or textbox": "the Prompts from file or textbox script",
    "x/y/z plot": "the X/Y/Z plot script",
    "sd upscale": "the SD upscale script",
    "loopback": "the Loopback script",
    "outpainting mk2": "the Outpainting mk2 script",
    "poor man's outpainting": "the Poor man's outpainting script",
}

# always-on scripts of AUTOMATIC1111 and its popular extensions, by lower-case name
A1111_ALWAYSON = {
    "controlnet": "ControlNet",
    "adetailer": "ADetailer",
    "animatediff": "AnimateDiff",
    "reactor": "ReActor face swap",
    "roop": "roop face swap",
    "self attention guidance": "Self Attention Guidance",
    "refiner": "the SDXL refiner",
    "seed": "variation seeds",
    "regional prompter": "Regional Prompter",
    "dynamic prompts v2.17.1": "Dynamic Prompts",
    "tiled diffusion": "Tiled Diffusion",
    "tiled vae": "Tiled VAE",
    "ip adapter": "IP-Adapter",
}

TASK_ID = re.compile(r"^[A-Za-z0-9_\-().:]{1,100}$")
OVERRIDE = "override_settings"


# ---- names that must not be paths ----------------------------------------------------------------


def check_model_name(field: str, name: Any) -> str:
    """A checkpoint is chosen by name, title or hash; anything path-like is refused."""
    if not isinstance(name, str) or not name.strip():
        raise invalid(field, "must be a checkpoint title, name or hash (see /sdapi/v1/sd-models)")
    text = name.strip()
    parts = re.split(r"[\\/]", text.split(" [", 1)[0])
    if ("\x00" in text or text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text)
            or any(part in ("..", ".") for part in parts)):
        raise invalid(field, "must be a checkpoint name from /sdapi/v1/sd-models, not a path")
    return text


def find_checkpoint(models, field: str, name: Any) -> str:
    """The registry name of the checkpoint `name` refers to (refreshing the list once on a miss)."""
    text = check_model_name(field, name)
    try:
        return models.find(text).name
    except ModelNotFoundError:
        models.refresh()
        try:
            return models.find(text).name
        except ModelNotFoundError as exc:
            raise invalid(field, str(exc)) from exc


# ---- settings -------------------------------------------------------------------------------------


def check_option(store: SettingsStore, key: str, value: Any, field: str) -> tuple[bool, Any]:
    """(is a real change, coerced value) for one option; raises 4xx/501 naming `field`."""
    spec = Settings.spec()
    if key in spec:
        if spec[key].metadata.get("protected"):
            raise ApiError(403, f"{field}: this setting can only be changed from the Settings tab or config.json",
                           extra={"field": field})
        try:
            coerced = Settings.coerce(key, value)
        except ValueError as exc:
            raise invalid(field, str(exc).split(": ", 1)[-1]) from exc
        return coerced != store.get(key), coerced
    if key in NEUTRAL_OPTIONS:
        if value in NEUTRAL_OPTIONS[key]:
            return False, value
        raise not_implemented(f"the AUTOMATIC1111 option {key}={value!r}", field,
                              f"Accepted values today: {', '.join(map(repr, NEUTRAL_OPTIONS[key]))}.")
    raise invalid(field, "unknown setting (see GET /sdapi/v1/options for Easel's settings)")


# ---- requests --------------------------------------------------------------------------------------


def apply_infotext(body: GenerationFields) -> GenerationFields:
    """AUTOMATIC1111's `infotext` field: its values fill every field the request does not set."""
    if not body.infotext:
        return body
    info = parse_infotext(body.infotext)
    params = info.params
    given = body.model_fields_set
    updates: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if name not in given and name in type(body).model_fields:
            updates[name] = value

    if info.prompt:
        put("prompt", info.prompt)
    if info.negative_prompt:
        put("negative_prompt", info.negative_prompt)
    conversions = {"Steps": ("steps", int), "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str),
                   "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Variation seed": ("subseed", int),
                   "Variation seed strength": ("subseed_strength", float),
                   "Denoising strength": ("denoising_strength", float)}
    for key, (name, convert) in conversions.items():
        if key in params:
            try:
                put(name, convert(params[key]))
            except ValueError as exc:
                raise invalid("infotext", f"{key}: {params[key]!r} is not a valid value") from exc
    if "Size" in params:
        width, _, height = params["Size"].partition("x")
        try:
            put("width", int(width))
            put("height", int(height))
        except ValueError as exc:
            raise invalid("infotext", f"Size: {params['Size']!r} is not WIDTHxHEIGHT") from exc
    return body.model_copy(update=updates)


def _active_features(body: GenerationFields) -> list[tuple[str, str, bool]]:
    """(field, capability, switched on?) for A1111 features that need engine support."""
    checks = [
        ("subseed_strength", "variation seeds", body.subseed_strength not in (None, 0)),
        ("seed_resize_from_w", "resize seed from width/height",
         max(body.seed_resize_from_w or 0, body.seed_resize_from_h or 0) > 0),
        ("restore_faces", "face restoration", bool(body.restore_faces)),
        ("tiling", "tiling", bool(body.tiling)),
        ("styles", "prompt styles", bool(body.styles)),
        ("s_min_uncond", "s_min_uncond (skipping the negative prompt at low sigmas)",
         body.s_min_uncond not in (None, 0)),
        ("s_churn", "sampler churn (s_churn)", body.s_churn not in (None, 0)),
        ("s_noise", "a sampler noise multiplier (s_noise)", body.s_noise not in (None, 1)),
        ("refiner_checkpoint", "the SDXL refiner", body.refiner_checkpoint not in (None, "", "None")),
        ("firstpass_image", "hires fix from a first-pass image", body.firstpass_image is not None),
        ("comments", "comments in the infotext", bool(body.comments)),
    ]
    if isinstance(body, Txt2ImgRequest):
        checks.insert(0, ("enable_hr", "hires fix", body.enable_hr is True))
    return checks


def _check_eta(body: GenerationFields, sampler_name: str) -> None:
    """eta is honoured by Easel's samplers as they are: 1 for ancestral ones, 0 for DDIM."""
    if "eta" in REQUEST_FIELDS or body.eta is None:
        return
    try:
        info, _ = samplers.resolve(sampler_name)
    except ValueError:
        return  # the sampler error is reported by validation
    if info.stochastic and body.eta != 1:
        raise not_implemented(f"eta={body.eta} for {info.name} (Easel's {info.name} always uses eta 1)", "eta")
    if info.name == "DDIM" and body.eta != 0:
        raise not_implemented(f"eta={body.eta} for DDIM (Easel's DDIM always uses eta 0)", "eta")


def _check_scripts(body: GenerationFields) -> None:
    if "script_name" not in REQUEST_FIELDS:
        name = (body.script_name or "").strip()
        if name:
            if name.lower() in A1111_SCRIPTS:
                raise not_implemented(A1111_SCRIPTS[name.lower()], "script_name")
            raise invalid("script_name", f"script {name!r} not found (GET /sdapi/v1/scripts lists them)")
        if "script_args" not in REQUEST_FIELDS and body.script_args:
            raise invalid("script_args", "given without script_name")
    if "alwayson_scripts" in REQUEST_FIELDS:
        return
    for name, value in (body.alwayson_scripts or {}).items():
        field = f"alwayson_scripts.{name}"
        capability = A1111_ALWAYSON.get(name.strip().lower())
        if capability is None:
            raise invalid(field, f"always on script {name!r} not found (GET /sdapi/v1/scripts lists them)")
        if _script_active(name.strip().lower(), value):
            raise not_implemented(capability, field)


def _script_active(name: str, value: Any) -> bool:
    """Whether always-on script arguments switch the script on (clients send disabled ones)."""
    args = value.get("args", []) if isinstance(value, dict) else value
    if not args:
        return False
    if not isinstance(args, list):
        return True
    if name == "seed":  # (seed, enable extras, subseed, subseed strength, resize w, resize h)
        return len(args) > 3 and args[3] not in (0, None)
    if args[0] is False:
        return False
    if all(isinstance(a, dict) for a in args):
        return any(a.get("enabled", True) for a in args)
    return True


def to_generation_request(body: GenerationFields, models, settings: SettingsStore,
                          mode: str = "txt2img") -> GenerationRequest:
    """Translate and validate; raises ApiError (422 naming fields, 501 naming a capability)."""
    if body.force_task_id is not None and not TASK_ID.match(body.force_task_id):
        raise invalid("force_task_id", "must be 1-100 letters, digits or _-().:")
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for name in type(body).model_fields:
        if name in REQUEST_FIELDS and name not in _SPECIAL:
            value = getattr(body, name)
            if value is None and _REQUEST_DEFAULTS.get(name) is not None:
                continue
            values[name] = value
    values["sampler_name"] = body.sampler_name or body.sampler_index
    values["scheduler"] = body.scheduler or samplers.AUTOMATIC
    values["save_images"] = body.save_images
    values["mode"] = mode

    overrides = dict(body.override_settings or {})
    checkpoint = overrides.pop("sd_model_checkpoint", None)
    if checkpoint is not None:
        values["checkpoint"] = find_checkpoint(models, f"{OVERRIDE}.sd_model_checkpoint", checkpoint)
    if OVERRIDE in REQUEST_FIELDS:
        values[OVERRIDE] = overrides
    else:
        for key, value in overrides.items():
            changes, _ = check_option(settings, key, value, f"{OVERRIDE}.{key}")
            if changes:
                raise not_implemented(f"a per-request override of the setting {key}", f"{OVERRIDE}.{key}",
                                      "Only sd_model_checkpoint can be overridden per request today.")

    request = GenerationRequest(**values)
    try:
        request.validate(samplers.Catalog())
    except ValidationError as exc:
        errors.extend(exc.errors)
    if errors:
        raise field_errors(errors)
    for field, capability, active in _active_features(body):
        if active and field not in REQUEST_FIELDS:
            raise not_implemented(capability, field)
    _check_eta(body, values["sampler_name"])
    _check_scripts(body)
    return request


# ---- responses -------------------------------------------------------------------------------------


def encode_images(result: Result, settings: SettingsStore) -> list[str]:
    fmt = settings.get("samples_format") or "png"
    embed = bool(settings.get("enable_pnginfo"))
    quality = int(settings.get("jpeg_quality") or 80)
    return [encode_b64(image, fmt, text if embed else None, quality)
            for image, text in zip(result.images, result.infotexts)]


def info_json(result: Result, request: GenerationRequest, body: GenerationFields, job: Job) -> str:
    """The `info` string: AUTOMATIC1111's Processed.js() keys, from what actually ran."""
    first = parse_infotext(result.infotexts[0]).params if result.infotexts else {}
    count = len(result.images)
    started = time.localtime(job.started_at or job.submitted_at)
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * count,
        "seed": result.seeds[0] if result.seeds else request.seed, "all_seeds": list(result.seeds),
        "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": request.width, "height": request.height,
        "sampler_name": first.get("Sampler", request.sampler_name), "scheduler": first.get("Schedule type"),
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.model_name or None, "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": getattr(request, "denoising_strength", None) if getattr(request, "enable_hr", False)
        else None,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": list(result.infotexts),
        "styles": list(getattr(request, "styles", None) or []), "job_timestamp": time.strftime("%Y%m%d%H%M%S", started),
        "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": f"Easel {__version__}",
        "easel": {"job_id": job.id, "interrupted": result.interrupted, "skipped_batches": result.skipped_batches,
                  "warnings": list(result.warnings), "timings": result.timings},
    }
    return json.dumps(info, ensure_ascii=False)


def image_response(job: Job, request: GenerationRequest, body: GenerationFields, settings: SettingsStore) -> dict:
    result: Result = job.result
    images = encode_images(result, settings) if body.send_images else []
    return {"images": images, "parameters": body.model_dump(mode="json"),
            "info": info_json(result, request, body, job)}
