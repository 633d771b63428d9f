"""Regional Prompter's always-on arguments (positional, in its documented order) and infotext keys.

`alwayson_scripts: {"Regional Prompter": {"args": [active, debug, mode, matrix submode, mask
submode, prompt submode, ratios, base ratios, use base, use common, use neg-common, calc mode,
not change AND, LoRA neg te, LoRA neg U, threshold, mask, LoRA stop step, LoRA hires stop step,
flip]}}`; missing trailing values take the extension's defaults. The mask (17th) is a path on
the server in the original; Easel takes no server paths, so it must be an image (base64 or a
data: URL from the API, a PIL image from the UI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...core.request import FieldError, script_args

ALWAYSON_NAME = "regional prompter"   # matched case-insensitively
FIELD = "alwayson_scripts.Regional Prompter.args"
MODES = ("Matrix", "Mask", "Prompt")
# the matrix submodes: Columns (split left to right), Rows (top to bottom); the old names mean the same
SUBMODES = {"columns": "Columns", "horizontal": "Columns", "rows": "Rows", "vertical": "Rows"}
CALC_MODES = ("Attention", "Latent")
PROMPT_SUBMODES = {"prompt": "Prompt", "prompt-ex": "Prompt-Ex"}
DEFAULT_THRESHOLD = 0.4   # Regional Prompter's: an empty threshold (or an empty part of one) means 0.4
# (name, default) in the documented order
ORDER = (("active", False), ("debug", False), ("mode", "Matrix"), ("matrix_submode", "Columns"),
         ("mask_submode", "Mask"), ("prompt_submode", "Prompt"), ("ratios", "1,1"), ("base_ratios", "0"),
         ("use_base", False), ("use_common", False), ("use_ncommon", False), ("calc_mode", "Attention"),
         ("not_change_and", False), ("lora_neg_te", "0"), ("lora_neg_u", "0"), ("threshold", "0"),
         ("mask", None), ("lora_stop_step", "0"), ("lora_hires_stop_step", "0"), ("flip", False))
NAMES = tuple(name for name, _ in ORDER)


@dataclass(frozen=True)
class RegionArgs:
    mode: str                           # "Matrix", "Mask" or "Prompt"
    submode: str                        # "Columns" or "Rows" (Matrix)
    ratios: str
    base_ratios: tuple[float, ...]      # one per region, or one for all
    use_base: bool
    use_common: bool
    use_ncommon: bool
    calc_mode: str
    flip: bool
    mask: Image.Image | None            # Mask mode: regions painted in Regional Prompter's colours
    raw: tuple[tuple[str, Any], ...]    # every argument as given (defaults filled), for the infotext
    prompt_submode: str = "Prompt"      # Prompt mode: "Prompt" (overlaps add) or "Prompt-Ex" (later wins)
    thresholds: tuple[float, ...] = (DEFAULT_THRESHOLD,)   # Prompt mode: one per region, or one for all


def alwayson_value(request: Any) -> Any:
    return next((v for k, v in request.alwayson().items()
                 if isinstance(k, str) and k.strip().lower() == ALWAYSON_NAME), None)


def parse(value: Any, decode_image=None) -> tuple[RegionArgs | None, list[FieldError]]:
    """(the arguments, or None when not active; errors naming each bad argument by its name)."""
    args = script_args(value)
    if args is None or args == []:
        return None, []
    if isinstance(args, dict):
        unknown = [k for k in args if k not in NAMES]
        if unknown:
            return None, [FieldError(f"{FIELD}.{unknown[0]}", f"unknown argument (known: {', '.join(NAMES)})")]
        given = dict(args)
    elif isinstance(args, list):
        if len(args) > len(ORDER):
            return None, [FieldError(FIELD, f"takes at most {len(ORDER)} args (got {len(args)})")]
        given = dict(zip(NAMES, args))
    else:
        return None, [FieldError(FIELD, "must be a list in Regional Prompter's order or an object")]
    values = {name: given.get(name, default) for name, default in ORDER}
    errors: list[FieldError] = []

    def bad(name: str, message: str) -> None:
        errors.append(FieldError(f"{FIELD}.{name}", message))

    for name in ("active", "debug", "use_base", "use_common", "use_ncommon", "flip"):
        if not isinstance(values[name], bool):
            bad(name, "must be true or false")
    if errors or not values["active"]:
        return None, errors
    if values["mode"] not in MODES:
        bad("mode", f"must be one of {', '.join(MODES)}")
    prompt_submode = PROMPT_SUBMODES.get(str(values["prompt_submode"]).strip().lower())
    thresholds = _thresholds(values["threshold"])
    if values["mode"] == "Prompt":
        if prompt_submode is None:
            bad("prompt_submode", "must be Prompt or Prompt-Ex")
        if thresholds is None:
            bad("threshold", "must be numbers, comma separated (one per region, or one for all)")
    if values["calc_mode"] == "Latent":  # Regional Prompter reads its LoRA arguments in Latent mode only
        for name in ("lora_neg_te", "lora_neg_u", "lora_stop_step", "lora_hires_stop_step"):
            if str(values[name] if values[name] is not None else "0").strip() not in ("", "0", "0.0"):
                bad(name, "per-region LoRA is not supported by Easel yet: a prompt's LoRAs apply to the whole "
                          "picture and its negative (leave it 0)")
    submode = SUBMODES.get(str(values["matrix_submode"]).strip().lower())
    if values["mode"] == "Matrix" and submode is None:
        bad("matrix_submode", "must be Columns or Rows (or the old names Horizontal / Vertical)")
    if values["calc_mode"] not in CALC_MODES:
        bad("calc_mode", f"must be one of {', '.join(CALC_MODES)}")
    ratios = str(values["ratios"] if values["ratios"] is not None else "")
    if values["mode"] == "Matrix":
        from .layout import LayoutError, matrix_regions

        try:
            matrix_regions(ratios, submode or "Columns", bool(values["flip"]))
        except LayoutError as exc:
            bad("ratios", str(exc))
    base = _numbers(values["base_ratios"])
    if base is None or any(not 0 <= b <= 1 for b in base):
        bad("base_ratios", "must be numbers from 0 to 1, comma separated")
    mask = None
    if values["mode"] == "Mask":
        mask, problem = _mask(values["mask"], decode_image)
        if problem:
            bad("mask", problem)
    if errors:
        return None, errors
    raw = tuple((name, values[name] if name != "mask" else None) for name in NAMES)
    return RegionArgs(values["mode"], submode or "Columns", ratios, tuple(base or (0.0,)), values["use_base"],
                      values["use_common"], values["use_ncommon"], values["calc_mode"], values["flip"], mask, raw,
                      prompt_submode or "Prompt", tuple(thresholds or (DEFAULT_THRESHOLD,))), []


def _thresholds(value: Any) -> list[float] | None:
    """Prompt mode's thresholds: comma separated numbers; blank ones are Regional Prompter's 0.4."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] if math.isfinite(value) else None
    if value is None or not isinstance(value, str):
        return None if value is not None else [DEFAULT_THRESHOLD]
    out = []
    for part in value.split(","):
        if not part.strip():
            out.append(DEFAULT_THRESHOLD)
            continue
        try:
            number = float(part)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out


def _numbers(text: Any) -> list[float] | None:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    if not isinstance(text, str):
        return None
    if not text.strip():
        return [0.0]
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _mask(value: Any, decode_image) -> tuple[Image.Image | None, str]:
    if isinstance(value, Image.Image):
        return value, ""
    if not isinstance(value, str) or not value.strip():
        return None, "Mask mode needs the region mask image"
    if decode_image is None:
        return None, "must be an image"
    try:
        return decode_image(value), ""
    except ValueError as exc:
        return None, ("must be an image (base64 or a data: URL); Easel takes no server paths" +
                      (f" ({exc})" if str(exc) else ""))


# ---- infotext ------------------------------------------------------------------------------------

KEYS = (("active", "RP Active"), ("mode", "RP Divide mode"), ("matrix_submode", "RP Matrix submode"),
        ("mask_submode", "RP Mask submode"), ("prompt_submode", "RP Prompt submode"), ("calc_mode", "RP Calc Mode"),
        ("ratios", "RP Ratios"), ("base_ratios", "RP Base Ratios"), ("use_base", "RP Use Base"),
        ("use_common", "RP Use Common"), ("use_ncommon", "RP Use Ncommon"),
        ("lora_neg_te", "RP LoRA Neg Te Ratios"), ("lora_neg_u", "RP LoRA Neg U Ratios"), ("threshold", "RP threshold"),
        ("lora_stop_step", "RP LoRA Stop Step"), ("lora_hires_stop_step", "RP LoRA Hires Stop Step"),
        ("flip", "RP Flip"))


def infotext_params(args: RegionArgs) -> dict[str, Any]:
    raw = dict(args.raw)
    return {key: raw[name] for name, key in KEYS}


def args_from_params(params: dict[str, str]) -> list[Any] | None:
    """The always-on args list an infotext's `RP ...` keys describe (None when it has no `RP Active: True`)."""
    if str(params.get("RP Active", "")).strip().lower() != "true":
        return None
    by_key = dict((key, name) for name, key in KEYS)
    values = {name: default for name, default in ORDER}
    for key, raw in params.items():
        name = by_key.get(key)
        if name is None:
            continue
        default = values[name]
        values[name] = (str(raw).strip().lower() == "true") if isinstance(default, bool) else str(raw)
    return [values[name] for name in NAMES]
