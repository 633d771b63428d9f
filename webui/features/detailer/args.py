"""ADetailer's always-on arguments, parsed once, and its infotext keys both ways.

Clients send `alwayson_scripts: {"ADetailer": {"args": [enable?, skip_img2img?, {ad_model, ...}, {...}]}}`
as the extension documents it: an optional leading bool switches the whole script, a second
bool (img2img only) skips the img2img pass itself, and each object is one detailer pass
("1st", "2nd" ...), run in order. Names, defaults and ranges are ADetailer's; the infotext
keys are the ones it writes (`ADetailer model`, `ADetailer prompt 2nd` ...), leaving out the
same defaults it leaves out, so a pasted image restores the passes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from ...core.request import FieldError, MAX_SIDE, MAX_STEPS, script_args

ALWAYSON_NAME = "adetailer"   # matched case-insensitively; clients send "ADetailer"
MERGE_INVERT = ("None", "Merge", "Merge and Invert")
SAME_SCHEDULER = "Use same scheduler"
SAME_CHECKPOINT = "Use same checkpoint"
SAME_VAE = "Use same VAE"
MAX_PASSES = 10


@dataclass(frozen=True)
class PassArgs:
    """One detailer pass with ADetailer's argument names and defaults."""

    ad_model: str = "None"
    ad_model_classes: str = ""
    ad_tab_enable: bool = True
    ad_prompt: str = ""
    ad_negative_prompt: str = ""
    ad_confidence: float = 0.3
    ad_mask_k_largest: int = 0
    ad_mask_min_ratio: float = 0.0
    ad_mask_max_ratio: float = 1.0
    ad_dilate_erode: int = 4
    ad_x_offset: int = 0
    ad_y_offset: int = 0
    ad_mask_merge_invert: str = "None"
    ad_mask_blur: int = 4
    ad_denoising_strength: float = 0.4
    ad_inpaint_only_masked: bool = True
    ad_inpaint_only_masked_padding: int = 32
    ad_use_inpaint_width_height: bool = False
    ad_inpaint_width: int = 512
    ad_inpaint_height: int = 512
    ad_use_steps: bool = False
    ad_steps: int = 28
    ad_use_cfg_scale: bool = False
    ad_cfg_scale: float = 7.0
    ad_use_checkpoint: bool = False
    ad_checkpoint: str | None = None
    ad_use_vae: bool = False
    ad_vae: str | None = None
    ad_use_sampler: bool = False
    ad_sampler: str = "DPM++ 2M Karras"
    ad_scheduler: str = SAME_SCHEDULER
    ad_use_noise_multiplier: bool = False
    ad_noise_multiplier: float = 1.0
    ad_use_clip_skip: bool = False
    ad_clip_skip: int = 1
    ad_restore_face: bool = False
    ad_controlnet_model: str = "None"
    ad_controlnet_module: str = "None"
    ad_controlnet_weight: float = 1.0
    ad_controlnet_guidance_start: float = 0.0
    ad_controlnet_guidance_end: float = 1.0
    is_api: Any = True

    @property
    def active(self) -> bool:
        return self.ad_model != "None" and self.ad_tab_enable is not False


@dataclass(frozen=True)
class DetailerArgs:
    passes: tuple[PassArgs, ...]        # every pass as sent, in order (inactive ones included: suffixes count them)
    skip_img2img: bool = False


ARG_NAMES = tuple(f.name for f in fields(PassArgs))
_BOOLS = {f.name for f in fields(PassArgs) if f.type == "bool"}
_STRINGS = {"ad_model", "ad_model_classes", "ad_prompt", "ad_negative_prompt", "ad_sampler", "ad_scheduler",
            "ad_controlnet_model", "ad_controlnet_module"}
_OPTIONAL_STRINGS = {"ad_checkpoint", "ad_vae"}
# (low, high, integer) for the numbers, as ADetailer constrains them (sizes and steps: Easel's limits)
_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "ad_confidence": (0, 1, False), "ad_mask_k_largest": (0, 100, True), "ad_mask_min_ratio": (0, 1, False),
    "ad_mask_max_ratio": (0, 1, False), "ad_dilate_erode": (-128, 128, True), "ad_x_offset": (-4096, 4096, True),
    "ad_y_offset": (-4096, 4096, True), "ad_mask_blur": (0, 64, True), "ad_denoising_strength": (0, 1, False),
    "ad_inpaint_only_masked_padding": (0, 256, True), "ad_inpaint_width": (64, MAX_SIDE, True),
    "ad_inpaint_height": (64, MAX_SIDE, True), "ad_steps": (1, MAX_STEPS, True), "ad_cfg_scale": (0, 30, False),
    "ad_noise_multiplier": (0.5, 1.5, False), "ad_clip_skip": (1, 12, True), "ad_controlnet_weight": (0, 1, False),
    "ad_controlnet_guidance_start": (0, 1, False), "ad_controlnet_guidance_end": (0, 1, False),
}


def alwayson_value(request: Any) -> Any:
    """The request's ADetailer entry (any capitalisation of the name), or None."""
    return next((v for k, v in request.alwayson().items()
                 if isinstance(k, str) and k.strip().lower() == ALWAYSON_NAME), None)


def parse(value: Any, img2img: bool) -> tuple[DetailerArgs | None, list[FieldError]]:
    """(the passes, or None when the script is off or no pass names a model; errors naming each bad argument).

    The passes come back even when there are errors, so the caller can check more (models) before refusing."""
    field = "alwayson_scripts.ADetailer.args"
    args = script_args(value)
    if args is None or args == []:
        return None, []
    if not isinstance(args, list):
        return None, [FieldError(field, "must be a list: [enable, skip img2img, {ad_model: ...}, ...]")]
    objects = [(i, a) for i, a in enumerate(args) if isinstance(a, dict)]
    others = [(i, a) for i, a in enumerate(args) if not isinstance(a, dict)]
    errors = [FieldError(f"{field}.{i}", "must be true/false (enable, skip img2img) or an object of ad_* arguments")
              for i, a in others if not (isinstance(a, bool) and i < 2)]
    if not objects:
        return None, errors
    if len(objects) > MAX_PASSES:
        errors.append(FieldError(field, f"at most {MAX_PASSES} detailer passes"))
    passes = []
    for i, given in objects[:MAX_PASSES]:
        unit, problems = _parse_pass(given, f"{field}.{i}")
        passes.append(unit)
        errors += problems
    enabled = args[0] if isinstance(args[0], bool) else True
    skip = img2img and len(args) > 1 and args[1] is True
    if not enabled or not any(p.active for p in passes):
        return None, errors
    return DetailerArgs(tuple(passes), skip), errors  # with errors: for the caller to add its own, then refuse


def _parse_pass(given: dict[str, Any], field: str) -> tuple[PassArgs, list[FieldError]]:
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for name, value in given.items():
        where = f"{field}.{name}"
        if name not in ARG_NAMES:
            errors.append(FieldError(where, "unknown ADetailer argument"))
        elif name in _BOOLS:
            if not isinstance(value, bool):
                errors.append(FieldError(where, "must be true or false"))
            else:
                values[name] = value
        elif name in _STRINGS or name in _OPTIONAL_STRINGS:
            if value is None and name in _OPTIONAL_STRINGS:
                values[name] = None
            elif not isinstance(value, str) or len(value) > 20_000:
                errors.append(FieldError(where, "must be a string"))
            else:
                values[name] = value
        elif name in _NUMBERS:
            low, high, integer = _NUMBERS[name]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok and integer and value != int(value):
                ok = False
            if not ok or not low <= value <= high:
                kind = "a whole number" if integer else "a number"
                errors.append(FieldError(where, f"must be {kind} from {low:g} to {high:g}"))
            else:
                values[name] = int(value) if integer else float(value)
        else:  # is_api: ADetailer's own marker, any value
            values[name] = value
    unit = PassArgs(**values)
    if unit.ad_mask_merge_invert not in MERGE_INVERT:
        errors.append(FieldError(f"{field}.ad_mask_merge_invert", f"must be one of {', '.join(MERGE_INVERT)}"))
    return unit, errors


# ---- infotext ---------------------------------------------------------------------------------------

# (argument, infotext key) in ADetailer's order
KEYS = (
    ("ad_model", "ADetailer model"), ("ad_model_classes", "ADetailer model classes"),
    ("ad_prompt", "ADetailer prompt"), ("ad_negative_prompt", "ADetailer negative prompt"),
    ("ad_confidence", "ADetailer confidence"), ("ad_mask_k_largest", "ADetailer mask only top k largest"),
    ("ad_mask_min_ratio", "ADetailer mask min ratio"), ("ad_mask_max_ratio", "ADetailer mask max ratio"),
    ("ad_x_offset", "ADetailer x offset"), ("ad_y_offset", "ADetailer y offset"),
    ("ad_dilate_erode", "ADetailer dilate erode"), ("ad_mask_merge_invert", "ADetailer mask merge invert"),
    ("ad_mask_blur", "ADetailer mask blur"), ("ad_denoising_strength", "ADetailer denoising strength"),
    ("ad_inpaint_only_masked", "ADetailer inpaint only masked"),
    ("ad_inpaint_only_masked_padding", "ADetailer inpaint padding"),
    ("ad_use_inpaint_width_height", "ADetailer use inpaint width height"),
    ("ad_inpaint_width", "ADetailer inpaint width"), ("ad_inpaint_height", "ADetailer inpaint height"),
    ("ad_use_steps", "ADetailer use separate steps"), ("ad_steps", "ADetailer steps"),
    ("ad_use_cfg_scale", "ADetailer use separate CFG scale"), ("ad_cfg_scale", "ADetailer CFG scale"),
    ("ad_use_checkpoint", "ADetailer use separate checkpoint"), ("ad_checkpoint", "ADetailer checkpoint"),
    ("ad_use_vae", "ADetailer use separate VAE"), ("ad_vae", "ADetailer VAE"),
    ("ad_use_sampler", "ADetailer use separate sampler"), ("ad_sampler", "ADetailer sampler"),
    ("ad_scheduler", "ADetailer scheduler"),
    ("ad_use_noise_multiplier", "ADetailer use separate noise multiplier"),
    ("ad_noise_multiplier", "ADetailer noise multiplier"),
    ("ad_use_clip_skip", "ADetailer use separate CLIP skip"), ("ad_clip_skip", "ADetailer CLIP skip"),
    ("ad_restore_face", "ADetailer restore face"),
    ("ad_controlnet_model", "ADetailer ControlNet model"), ("ad_controlnet_module", "ADetailer ControlNet module"),
    ("ad_controlnet_weight", "ADetailer ControlNet weight"),
    ("ad_controlnet_guidance_start", "ADetailer ControlNet guidance start"),
    ("ad_controlnet_guidance_end", "ADetailer ControlNet guidance end"),
)
_ARG_OF_KEY = {key: arg for arg, key in KEYS}
# keys left out when a switch is off: (switch, keys it takes with it)
_GROUPS = (("ad_inpaint_only_masked", ("ad_inpaint_only_masked_padding",)),
           ("ad_use_inpaint_width_height", ("ad_use_inpaint_width_height", "ad_inpaint_width", "ad_inpaint_height")),
           ("ad_use_steps", ("ad_use_steps", "ad_steps")), ("ad_use_cfg_scale", ("ad_use_cfg_scale", "ad_cfg_scale")),
           ("ad_use_checkpoint", ("ad_use_checkpoint", "ad_checkpoint")), ("ad_use_vae", ("ad_use_vae", "ad_vae")),
           ("ad_use_sampler", ("ad_use_sampler", "ad_sampler", "ad_scheduler")),
           ("ad_use_noise_multiplier", ("ad_use_noise_multiplier", "ad_noise_multiplier")),
           ("ad_use_clip_skip", ("ad_use_clip_skip", "ad_clip_skip")))
# keys left out at these values (empty strings and False too)
_DEFAULTS = {"ad_mask_k_largest": 0, "ad_mask_min_ratio": 0.0, "ad_mask_max_ratio": 1.0, "ad_x_offset": 0,
             "ad_y_offset": 0, "ad_mask_merge_invert": "None", "ad_scheduler": SAME_SCHEDULER,
             "ad_controlnet_model": "None", "ad_controlnet_module": "None", "ad_controlnet_weight": 1.0,
             "ad_controlnet_guidance_start": 0.0, "ad_controlnet_guidance_end": 1.0}
ORDINALS = {1: "st", 2: "nd", 3: "rd"}


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th ... 11th, 12th, 13th, 21st."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else ORDINALS.get(n % 10, 'th')}"


def suffix(index: int) -> str:
    """"" for the first pass, " 2nd", " 3rd" ... for the others, as ADetailer suffixes its keys."""
    return "" if index == 0 else f" {ordinal(index + 1)}"


def pass_params(unit: PassArgs, index: int) -> dict[str, Any]:
    """One pass's keys (suffixed), with what ADetailer leaves out left out; {} for a pass that does not run."""
    if not unit.active:
        return {}
    values = {arg: getattr(unit, arg) for arg, _ in KEYS}
    for switch, group in _GROUPS:
        if not values.get(switch):
            for arg in group:
                values.pop(arg, None)
    for arg in list(values):
        value = values[arg]
        if arg in _DEFAULTS and value == _DEFAULTS[arg]:
            values.pop(arg)
        elif arg in ("ad_model_classes", "ad_prompt", "ad_negative_prompt", "ad_restore_face") and not value:
            values.pop(arg)
        elif value is None:
            values.pop(arg)
    if unit.ad_controlnet_model == "None":
        for arg in ("ad_controlnet_module", "ad_controlnet_weight", "ad_controlnet_guidance_start",
                    "ad_controlnet_guidance_end"):
            values.pop(arg, None)
    keys = dict(KEYS)
    return {keys[arg] + suffix(index): value for arg, value in values.items()}


def infotext_params(args: DetailerArgs, version: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for index, unit in enumerate(args.passes):
        params.update(pass_params(unit, index))
    params["ADetailer version"] = version
    return params


_SUFFIX = re.compile(r"^(?P<key>ADetailer [A-Za-z ]+?)(?: (?P<n>\d+)(?:st|nd|rd|th))?$")


def passes_from_params(params: dict[str, str]) -> list[dict[str, Any]]:
    """Each pass's arguments stated in an infotext, typed (pass 1 first); [] when it has no ADetailer keys.

    An argument a key leaves out has ADetailer's default: a switch group absent means the switch was off.
    """
    found: dict[int, dict[str, Any]] = {}
    for key, raw in params.items():
        match = _SUFFIX.match(key)
        if not match or match.group("key") not in _ARG_OF_KEY:
            continue
        index = int(match.group("n") or 1) - 1
        if not 0 <= index < MAX_PASSES:
            continue
        arg = _ARG_OF_KEY[match.group("key")]
        typed = _typed(arg, raw)
        if typed is not None:
            found.setdefault(index, {})[arg] = typed
    out = []
    for index in range(max(found, default=-1) + 1):
        values = found.get(index, {})
        if "ad_model" not in values:
            values = {"ad_model": "None"}
        values.setdefault("ad_inpaint_only_masked", "ad_inpaint_only_masked_padding" in values)
        out.append(values)
    return out


def _typed(arg: str, raw: str) -> Any:
    raw = str(raw).strip()
    if arg in _BOOLS:
        return raw.lower() == "true" if raw.lower() in ("true", "false") else None
    if arg in _NUMBERS:
        try:
            number = float(raw)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        return int(number) if _NUMBERS[arg][2] else number
    return raw


def request_args(units: list[dict[str, Any]], enabled: bool = True, skip_img2img: bool = False) -> dict[str, Any]:
    """The `alwayson_scripts["ADetailer"]` entry for these passes (what the UI and paste send)."""
    return {"args": [bool(enabled), bool(skip_img2img), *units]}


def with_defaults(values: dict[str, Any]) -> PassArgs:
    """A PassArgs from typed values (unknown names ignored)."""
    return replace(PassArgs(), **{k: v for k, v in values.items() if k in ARG_NAMES})
