"""AUTOMATIC1111 request bodies -> Easel's GenerationRequest, and Results -> A1111 responses.

Every A1111 field ends in exactly one of three places, so nothing sent is silently dropped:

- a `GenerationRequest` field of the same name: passed through, validated by the engine
  (this grows by itself as features land: a field added there is passed from then on);
  images (init_images, mask) are decoded here, scripts are matched by name or title and
  their positional `script_args` mapped onto the script's named arguments;
- a field with meaning only when something is switched on (hires settings without
  `enable_hr`, `s_tmin` without `s_churn`): accepted, as AUTOMATIC1111 ignores it too;
- a feature Easel does not have, switched on: 501 naming the capability.
"""
from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import fields
from typing import Any

import pydantic

from .. import __version__
from ..core import samplers
from ..core.image_input import max_megapixels
from ..core.infotext import parse_infotext
from ..pnginfo import infotext_to_fields
from ..core.jobs import Job
from ..core.request import MAX_SIDE, MODEL_WIDE, GenerationRequest, Result, ValidationError, script_args
from ..features import wildcards
from ..model_manager.registry import ModelNotFoundError
from ..model_manager.module_choice import SETTING as MODULES_SETTING
from ..settings import A1111_KEYS, Settings, SettingsStore, redact
from .errors import ApiError, field_errors, invalid, not_implemented
from . import scripts as script_api
from .images import decode_image, encode_b64
from .models import GenerationFields, Img2ImgRequest, Txt2ImgRequest

REQUEST_FIELDS = frozenset(GenerationRequest.field_names())
_REQUEST_DEFAULTS = {f.name: f.default for f in fields(GenerationRequest)}
# handled here rather than passed through by name
_SPECIAL = {"sampler_name", "scheduler", "save_images", "override_settings", "mode", "checkpoint", "extra",
            "script_name", "script_args", "alwayson_scripts", "init_images", "mask", "mask_blur",
            "mask_blur_x", "mask_blur_y", "latent_mask", "firstpass_image"}

# AUTOMATIC1111 options Easel has no setting for, with the values that mean "what Easel does anyway"
NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {}

# always-on scripts of AUTOMATIC1111 and its popular extensions that Easel lacks, by lower-case name:
# clients send them switched off, which is fine; switched on, they are a 501 naming the capability
A1111_ALWAYSON = {
    "animatediff": "AnimateDiff",
    "reactor": "ReActor face swap",
    "roop": "roop face swap",
    "seed": "variation seeds through the Seed script (use subseed/subseed_strength)",
    "sampler": "the Sampler script (use sampler_name/scheduler)",
}

# always-on scripts the engine's own features read (features/guidance, features/refiner), by lower-case title
GUIDANCE_ALWAYSON = frozenset({"freeu integrated (sd 1.x, sd 2.x, sdxl)", "freeu integrated", "freeu",
                               "perturbedattentionguidance integrated", "perturbed attention guidance integrated",
                               "perturbedattentionguidance integrated (sd1.x, sd2.x, sdxl)",
                               "perturbed-attention guidance", "self attention guidance", "refiner",
                               "skip layer guidance", "slg: skip layer guidance", "skiplayerguidance", "slg"})
TILED_VAE = "__tiled_vae"  # set by _scripts when the Tiled VAE extension's args switch it on
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
        if spec[key].metadata.get("secret") and value == redact(key, store.get(key)):
            return False, store.get(key)  # a client echoing back the placeholder GET showed changes nothing
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
    try:
        restored = infotext_to_fields(parse_infotext(body.infotext))
    except ValueError as exc:
        raise invalid("infotext", f"could not be read ({exc})") from exc
    given = body.model_fields_set
    known = type(body).model_fields
    updates: dict[str, Any] = {}
    for name, value in restored.items():
        if name == OVERRIDE:
            updates[OVERRIDE] = {**value, **(body.override_settings or {})}
        elif name in known and name not in given:
            updates[name] = value
    try:
        return type(body).model_validate({**body.model_dump(exclude_unset=True), **updates})
    except pydantic.ValidationError as exc:
        raise invalid("infotext", f"holds values Easel cannot use ({exc.errors()[0]['msg']})") from exc


def _unsupported(body: GenerationFields) -> list[tuple[str, str, bool]]:
    """(field, capability, switched on?) for AUTOMATIC1111 features Easel does not have."""
    checks = [
        ("override_settings_restore_afterwards", "keeping override_settings after the request (Easel never changes "
         "saved settings from a generation request)", not body.override_settings_restore_afterwards),
    ]
    if isinstance(body, Img2ImgRequest):
        checks += [
            ("image_cfg_scale", "image CFG scale, which only instruct-pix2pix checkpoints use (Easel cannot load "
             "instruct-pix2pix models)", body.image_cfg_scale not in (None, 1.5)),
        ]
    return checks


def _overrides(overrides: dict[str, Any] | None, models) -> tuple[str | None, dict[str, Any]]:
    """(checkpoint, settings for this request) from override_settings; refuses what Easel cannot honour."""
    overrides = dict(overrides or {})
    checkpoint = None
    if "sd_model_checkpoint" in overrides:
        checkpoint = find_checkpoint(models, f"{OVERRIDE}.sd_model_checkpoint", overrides.pop("sd_model_checkpoint"))
    kept: dict[str, Any] = {}
    spec = Settings.spec()
    for key, value in overrides.items():
        field = f"{OVERRIDE}.{key}"
        key = A1111_KEYS.get(key, key)
        if key in spec and spec[key].metadata.get("model_wide"):  # named as the client sent it
            if _as_in_force(key, value, models.settings):
                continue  # sent as it is (Forge's clients send forge_unet_storage_dtype with every request)
            raise invalid(field, MODEL_WIDE)
        if key in spec or key == MODULES_SETTING:  # Forge's VAE / Text Encoder choice: checked by Engine.prepare
            kept[key] = value  # type, range and protection checked by GenerationRequest.validate
        elif key in NEUTRAL_OPTIONS:
            if value not in NEUTRAL_OPTIONS[key]:
                raise not_implemented(f"the AUTOMATIC1111 option {key}={value!r}", field,
                                      f"Accepted values today: {', '.join(map(repr, NEUTRAL_OPTIONS[key]))}.")
        else:
            raise invalid(field, "unknown setting (GET /sdapi/v1/options lists Easel's settings)")
    return checkpoint, kept


def _as_in_force(key: str, value: Any, settings: SettingsStore) -> bool:
    """Whether `value` is a model-wide setting's saved value (nothing for the request to change)."""
    try:
        return Settings.coerce(key, value) == settings.get(key)
    except ValueError:
        return False


def _scripts(body: GenerationFields, scripts: dict[str, Any], mode: str) -> dict[str, Any]:
    """script_name/script_args/alwayson_scripts for Easel's registered scripts (names or titles)."""
    out: dict[str, Any] = {"script_name": "", "script_args": {}, "alwayson_scripts": {}}
    name = (body.script_name or "").strip()
    if name and name.lower() != "none":
        script = script_api.find(scripts, name, mode, "selectable")
        if script is None:
            titles = script_api.script_list(scripts)[mode]
            raise invalid("script_name", f"script {name!r} not found; {mode} has: {', '.join(titles) or 'none'}")
        out["script_name"] = script.name
        out["script_args"] = script_api.named_args(script, body.script_args, "script_args")
    elif body.script_args:
        raise invalid("script_args", "given without script_name")
    for key, value in (body.alwayson_scripts or {}).items():
        field = f"alwayson_scripts.{key}"
        lowered = key.strip().lower()
        if lowered in ("controlnet", "identity"):  # the engine reads these units itself (and names bad fields)
            # a copy: the engine decodes the units' base64 images in place, and the response echoes the body
            out["alwayson_scripts"][lowered] = copy.deepcopy(value)
            continue
        if lowered in GUIDANCE_ALWAYSON:  # FreeU, PAG, SAG, the refiner: engine features parse (and name) their args
            out["alwayson_scripts"][lowered] = copy.deepcopy(value)
            continue
        if lowered == "soft inpainting":  # the engine's soft inpainting feature parses (and names) its args
            out["alwayson_scripts"][lowered] = copy.deepcopy(value)
            continue
        if lowered.startswith(wildcards.ALWAYSON_NAME.split(" v")[0]):  # Dynamic Prompts (any version): wildcards
            _dynamic_prompts_built(value, field)
            out["alwayson_scripts"][lowered] = copy.deepcopy(value)
            continue
        if lowered in ("adetailer", "regional prompter", "tiled diffusion", "kontext"):  # engine features parse (and name) these args
            out["alwayson_scripts"][lowered] = copy.deepcopy(value)
            continue
        if lowered == "tiled vae":  # the Tiled VAE extension's switch: Easel's own VAE tiling for this request
            if _script_active(lowered, value):
                out[TILED_VAE] = _tiled_vae_settings(value, field)
            continue
        script = script_api.find(scripts, key, mode, "alwayson")
        if script is not None:
            args = value.get("args") if isinstance(value, dict) else value
            out["alwayson_scripts"][script.name] = {"args": script_api.named_args(script, args, field + ".args")}
        elif lowered in A1111_ALWAYSON:
            if _script_active(lowered, value):
                raise not_implemented(A1111_ALWAYSON[lowered], field)
        else:
            raise invalid(field, f"always-on script {key!r} not found (GET /sdapi/v1/script-info lists them)")
    return out


def _dynamic_prompts_built(value: Any, field: str) -> None:
    """501 naming the argument for a Dynamic Prompts option Easel does not have, switched on."""
    try:
        args = wildcards.named_args(value)
    except ValueError:
        return  # the feature names the problem (422)
    for name, capability in wildcards.not_built(args):
        raise not_implemented(f"Dynamic Prompts' {capability}", f"{field}.args.{name}")


def _tiled_vae_settings(value: Any, field: str) -> dict[str, Any]:
    """The settings the Tiled VAE extension's args (enabled, encoder tile in pixels, decoder tile in latents,
    then switches Easel has no use for: its tiler always shares statistics and keeps the VAE where it runs)
    stand for in Easel."""
    args = script_args(value)
    settings: dict[str, Any] = {"vae_tiling": "Always"}
    if not isinstance(args, list):
        return settings
    slots = (("encoder_tile_size", "vae_tile_encode", 1), ("decoder_tile_size", "vae_tile_decode", 8))
    for index, (name, key, pixels_per_unit) in enumerate(slots, start=1):
        if len(args) <= index or args[index] is None:
            continue
        size = args[index]
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size <= 8192:
            raise invalid(f"{field}.args.{name}", f"a tile size must be a number from 1 to 8192, not {size!r}")
        settings[key] = min(int(size) * pixels_per_unit, 8192)
    return settings


def _script_active(name: str, value: Any) -> bool:
    """Whether always-on script arguments switch the script on (clients send disabled ones)."""
    args = script_args(value)
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


def _images(body: Img2ImgRequest, allow_urls: bool, max_mp: float) -> dict[str, Any]:
    if not body.init_images:
        raise invalid("init_images", "img2img needs at least one image (base64)")
    images = [decode_image(f"init_images.{i}", value, allow_urls=allow_urls, max_megapixels=max_mp)
              for i, value in enumerate(body.init_images)]
    mask = None
    if body.mask:
        mask = decode_image("mask", body.mask, allow_urls=allow_urls, max_megapixels=max_mp)
    if body.firstpass_image:  # AUTOMATIC1111 reads it in txt2img only
        raise invalid("firstpass_image", "is a txt2img field (hires fix from a first-pass image)")
    latent_mask = None
    if body.latent_mask:
        latent_mask = decode_image("latent_mask", body.latent_mask, allow_urls=allow_urls, max_megapixels=max_mp)
    if body.mask_blur is not None:  # AUTOMATIC1111: mask_blur sets both radii
        return {"init_images": images, "mask": mask, "mask_blur": body.mask_blur, "latent_mask": latent_mask}
    return {"init_images": images, "mask": mask, "mask_blur": body.mask_blur_x, "latent_mask": latent_mask,
            "mask_blur_x": body.mask_blur_x, "mask_blur_y": body.mask_blur_y}


def _txt2img_fields(body: Txt2ImgRequest, allow_urls: bool, max_mp: float) -> dict[str, Any]:
    """AUTOMATIC1111's firstpass_image (base64) and its legacy firstphase_width/height, which replace width and
    height (AUTOMATIC1111 1.x then sizes the hires pass from them with hr_scale / hr_resize_x/y)."""
    out: dict[str, Any] = {}
    if body.firstpass_image:
        out["firstpass_image"] = decode_image("firstpass_image", body.firstpass_image, allow_urls=allow_urls,
                                              max_megapixels=max_mp)
    if body.firstphase_width or body.firstphase_height:
        sides = (("firstphase_width", "firstphase_height"), ("firstphase_height", "firstphase_width"))
        for name, other in sides:
            value = getattr(body, name)
            if value and (isinstance(value, bool) or not 64 <= value <= MAX_SIDE or value % 8):
                raise invalid(name, f"must be 0 or a multiple of 8 from 64 to {MAX_SIDE} (it replaces the size)")
            if value and not getattr(body, other):
                raise invalid(name, f"needs {other} too: the two replace width and height")
        out["width"], out["height"] = body.firstphase_width, body.firstphase_height
    return out


def to_generation_request(body: GenerationFields, easel, mode: str = "txt2img") -> GenerationRequest:
    """Translate and validate; raises ApiError (422 naming fields, 501 naming a capability)."""
    if body.force_task_id is not None and not TASK_ID.match(body.force_task_id):
        raise invalid("force_task_id", "must be 1-100 letters, digits or _-().:")
    for field, capability, active in _unsupported(body):
        if active:
            raise not_implemented(capability, field)
    values: dict[str, Any] = {}
    for name in type(body).model_fields:
        if name in REQUEST_FIELDS and name not in _SPECIAL:
            value = getattr(body, name)
            if value is None and _REQUEST_DEFAULTS.get(name) is not None:
                continue
            values[name] = value
    values["sampler_name"] = body.sampler_name or body.sampler_index
    values["scheduler"] = body.scheduler or samplers.AUTOMATIC
    values["save_images"] = bool(body.save_images and not body.do_not_save_samples)
    values["mode"] = mode
    values["checkpoint"], values[OVERRIDE] = _overrides(body.override_settings, easel.models)
    _check_styles(body.styles, easel.engine.styles)
    values.update(_scripts(body, easel.engine.scripts, mode))
    tiled_vae = values.pop(TILED_VAE, None)
    if tiled_vae:  # the request's own override_settings win over the extension's sliders
        values[OVERRIDE] = {**tiled_vae, **values[OVERRIDE]}
    if isinstance(body, Img2ImgRequest):
        values.update(_images(body, bool(easel.settings.get("api_enable_requests")),
                              max_megapixels(easel.settings)))
    if isinstance(body, Txt2ImgRequest):
        values.update(_txt2img_fields(body, bool(easel.settings.get("api_enable_requests")),
                                      max_megapixels(easel.settings)))
    try:
        request = GenerationRequest(**values)  # constructing checks the fields
        easel.engine.validate(request)  # the engine checks what needs models and scripts
    except ValidationError as exc:
        raise field_errors(exc.errors) from exc
    return request


def _check_styles(styles: list[str] | None, store) -> None:
    """An API client naming a style that is not in styles.csv gets a 422 on `styles.N` (the UI only offers
    existing ones; a pasted infotext's unknown style stays a warning in the result)."""
    if not styles:
        return
    known = set(store.names())
    for index, name in enumerate(styles):
        if name not in known:
            shown = ", ".join(sorted(known)[:10]) or "none (styles.csv is empty or missing)"
            raise invalid(f"styles.{index}", f"style {name!r} not found in styles.csv; known styles: {shown}")


# ---- responses -------------------------------------------------------------------------------------


def encode_images(result: Result, settings: SettingsStore) -> list[str]:
    fmt = settings.get("samples_format") or "png"
    embed = bool(settings.get("enable_pnginfo"))
    quality = int(settings.get("jpeg_quality") or 80)
    return [encode_b64(image, fmt, text if embed else None, quality)
            for image, text in zip(result.images, result.infotexts)]


def info_json(result: Result, request: GenerationRequest, body: GenerationFields, job: Job,
              settings: SettingsStore) -> str:
    """The `info` string: AUTOMATIC1111's Processed.js() keys, from what actually ran."""
    first = parse_infotext(result.infotexts[0]).params if result.infotexts else {}
    count = len(result.images)
    started = time.localtime(job.started_at or job.submitted_at)
    info = {
        "prompt": request.prompt, "all_prompts": [parse_infotext(t).prompt for t in result.infotexts],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [parse_infotext(t).negative_prompt for t in result.infotexts],
        "seed": result.seeds[0] if result.seeds else request.seed, "all_seeds": list(result.seeds),
        "subseed": request.subseed, "all_subseeds": [request.subseed] * count,
        "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height,
        "sampler_name": first.get("Sampler", request.sampler_name), "scheduler": first.get("Schedule type"),
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": request.restore_faces, "face_restoration_model": first.get("Face restoration"),
        "sd_model_name": result.model_name or None, "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": first.get("VAE"), "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w or -1, "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": request.denoising_strength if request.enable_hr or request.mode == "img2img" else None,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": list(result.infotexts),
        "styles": list(getattr(request, "styles", None) or []), "job_timestamp": time.strftime("%Y%m%d%H%M%S", started),
        "clip_skip": int(request.override_settings.get("CLIP_stop_at_last_layers") or
                                                   settings.get("CLIP_stop_at_last_layers") or 1),
        "is_using_inpainting_conditioning": False, "version": f"Easel {__version__}",
        "easel": {"job_id": job.id, "interrupted": result.interrupted, "skipped_batches": result.skipped_batches,
                  "warnings": list(result.warnings), "timings": result.timings},
    }
    return json.dumps(info, ensure_ascii=False)


def image_response(job: Job, request: GenerationRequest, body: GenerationFields, settings: SettingsStore) -> dict:
    result: Result = job.result
    images = encode_images(result, settings) if body.send_images else []
    if body.send_images and isinstance(body, Img2ImgRequest) and body.include_init_images:
        images += [encode_b64(image, "png") for image in request.init_images]
    return {"images": images, "parameters": body.model_dump(mode="json"),
            "info": info_json(result, request, body, job, settings)}
