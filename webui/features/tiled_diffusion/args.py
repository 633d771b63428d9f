"""The Tiled Diffusion extension's always-on arguments (positional, in its UI's order) and its infotext.

`alwayson_scripts: {"Tiled Diffusion": {"args": [enabled, method, overwrite_size, keep_input_size,
image_width, image_height, tile_width, tile_height, overlap, tile_batch_size, upscaler_name,
scale_factor, noise_inverse, noise_inverse_steps, noise_inverse_retouch, noise_inverse_renoise_strength,
noise_inverse_renoise_kernel, control_tensor_cpu, enable_bbox_control, draw_background, causal_layers,
*regions]}}`, each region 10 values (enable, x, y, w, h, prompt, neg_prompt, blend_mode,
feather_ratio, seed; x/y/w/h as fractions of the canvas). Tile sizes and overlap are in latent
pixels (1/8 of the image). The extension writes one infotext key, `Tiled Diffusion`, whose value
is a Python dict's text (AUTOMATIC1111 writes dicts that way), e.g.
`Tiled Diffusion: "{'Method': 'MultiDiffusion', 'Tile tile width': 96, ...}"` (img2img with Noise
Inversion adds its `NoiseInv ...` entries). The extension does not
record "Draw full canvas background"; Easel adds `'Draw background': True` to the dict when it is on
with regions, so a paste restores the same picture.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from ...core.request import FieldError, is_int, is_number, script_args

ALWAYSON_NAME = "tiled diffusion"   # matched case-insensitively
FIELD = "alwayson_scripts.Tiled Diffusion.args"
INFOTEXT_KEY = "Tiled Diffusion"
MULTIDIFFUSION, MIXTURE = "MultiDiffusion", "Mixture of Diffusers"
METHODS = (MULTIDIFFUSION, MIXTURE)
BACKGROUND, FOREGROUND = "Background", "Foreground"
MAX_REGIONS = 8   # the extension's default (--md-max-regions)
MAX_LATENT_TILE = 1024
ORDER = (("enabled", False), ("method", MULTIDIFFUSION), ("overwrite_size", False), ("keep_input_size", True),
         ("image_width", 1024), ("image_height", 1024), ("tile_width", 96), ("tile_height", 96), ("overlap", 48),
         ("tile_batch_size", 4), ("upscaler_name", "None"), ("scale_factor", 2.0), ("noise_inverse", False),
         ("noise_inverse_steps", 10), ("noise_inverse_retouch", 1.0), ("noise_inverse_renoise_strength", 1.0),
         ("noise_inverse_renoise_kernel", 64), ("control_tensor_cpu", False), ("enable_bbox_control", False),
         ("draw_background", False), ("causal_layers", False))
NAMES = tuple(name for name, _ in ORDER)
REGION_ORDER = (("enable", False), ("x", 0.4), ("y", 0.4), ("w", 0.2), ("h", 0.2), ("prompt", ""),
                ("neg_prompt", ""), ("blend_mode", BACKGROUND), ("feather_ratio", 0.2), ("seed", -1))
REGION_NAMES = tuple(name for name, _ in REGION_ORDER)


@dataclass(frozen=True)
class Region:
    """One "Region Prompt Control" box: fractions of the canvas, its prompts appended to the image's."""

    x: float
    y: float
    w: float
    h: float
    prompt: str
    neg_prompt: str
    blend_mode: str       # Background: averaged like a tile; Foreground: laid over with a feathered edge
    feather_ratio: float
    seed: int             # -1: the image's noise; else this box's noise comes from its own seed

    def info(self) -> dict[str, Any]:
        return {"enable": True, "x": self.x, "y": self.y, "w": self.w, "h": self.h, "prompt": self.prompt,
                "neg_prompt": self.neg_prompt, "blend_mode": self.blend_mode, "feather_ratio": self.feather_ratio,
                "seed": self.seed}


@dataclass(frozen=True)
class TiledArgs:
    method: str
    overwrite_size: bool
    image_size: tuple[int, int]     # (width, height) when overwrite_size (txt2img)
    tile_width: int                 # latent pixels
    tile_height: int
    overlap: int
    tile_batch_size: int
    regions: tuple[Region, ...]     # enabled boxes (Region Prompt Control on)
    draw_background: bool           # with regions: also the tiles of the whole canvas with the main prompt
    keep_input_size: bool           # img2img: the canvas is the (upscaled) input image's size
    upscaler: str = "None"          # img2img: upscale the input first, by scale_factor
    scale_factor: float = 2.0
    noise_inverse: bool = False     # img2img: start from the input's inverted noise (noise_inversion.py)
    noise_inverse_steps: int = 10
    noise_inverse_retouch: float = 1.0
    noise_inverse_renoise_strength: float = 1.0
    noise_inverse_renoise_kernel: int = 64

    @property
    def draws_tiles(self) -> bool:
        return not self.regions or self.draw_background


def alwayson_value(request: Any) -> Any:
    return next((v for k, v in request.alwayson().items()
                 if isinstance(k, str) and k.strip().lower() == ALWAYSON_NAME), None)


def parse(value: Any, mode: str = "txt2img",
          upscaler_names: list[str] | None = None) -> tuple[TiledArgs | None, list[FieldError]]:
    """(the arguments, or None when switched off; errors naming each bad argument)."""
    args = script_args(value)
    if args is None or args == []:
        return None, []
    region_values: list[Any] = []
    if isinstance(args, dict):
        unknown = [k for k in args if k not in NAMES and k != "regions"]
        if unknown:
            return None, [FieldError(f"{FIELD}.{unknown[0]}", f"unknown argument (known: {', '.join(NAMES)}, regions)")]
        given = dict(args)
        regions = given.pop("regions", []) or []
        if not isinstance(regions, list):
            return None, [FieldError(f"{FIELD}.regions", "must be a list of regions")]
        for region in regions:
            region_values += ([region.get(n, d) for n, d in REGION_ORDER] if isinstance(region, dict)
                              else list(region) if isinstance(region, list) else [region])
    elif isinstance(args, list):
        given = dict(zip(NAMES, args))
        region_values = list(args[len(NAMES):])
    else:
        return None, [FieldError(FIELD, "must be a list in Tiled Diffusion's order or an object")]
    values = {name: given.get(name, default) for name, default in ORDER}
    errors: list[FieldError] = []

    def bad(name: str, message: str) -> None:
        errors.append(FieldError(f"{FIELD}.{name}", message))

    for name in ("enabled", "overwrite_size", "keep_input_size", "noise_inverse", "control_tensor_cpu",
                 "enable_bbox_control", "draw_background", "causal_layers"):
        if not isinstance(values[name], bool):
            bad(name, "must be true or false")
    if errors or not values["enabled"]:
        return None, errors
    if values["method"] not in METHODS:
        bad("method", f"must be one of {', '.join(METHODS)}")
    for name, low, high in (("tile_width", 4, MAX_LATENT_TILE), ("tile_height", 4, MAX_LATENT_TILE),
                            ("overlap", 0, MAX_LATENT_TILE), ("tile_batch_size", 1, 64),
                            ("image_width", 64, 16384), ("image_height", 64, 16384)):
        number = values[name]
        if is_number(number) and float(number).is_integer():
            values[name] = int(number)
        if not is_int(values[name]) or not low <= values[name] <= high:
            bad(name, f"must be a whole number from {low} to {high}")
    if values["overwrite_size"] and mode == "txt2img":
        for name in ("image_width", "image_height"):
            if is_int(values[name]) and values[name] % 8:
                bad(name, "must be a multiple of 8")
    inverse = bool(values["noise_inverse"]) and mode == "img2img"  # the extension ignores it in txt2img
    if inverse:
        for name, low, high, whole in (("noise_inverse_steps", 1, 200, True), ("noise_inverse_retouch", 1, 100, False),
                                       ("noise_inverse_renoise_strength", 0, 2, False),
                                       ("noise_inverse_renoise_kernel", 2, 512, True)):
            number = values[name]
            if not is_number(number) or not low <= number <= high or (whole and not float(number).is_integer()):
                bad(name, f"must be a {'whole ' if whole else ''}number from {low} to {high}")
    upscaler = values["upscaler_name"] if values["upscaler_name"] not in (None, "") else "None"
    if not isinstance(upscaler, str):
        bad("upscaler_name", "must be an upscaler's name (see /sdapi/v1/upscalers)")
    elif upscaler_names is not None and upscaler not in upscaler_names:
        bad("upscaler_name", f"unknown upscaler {upscaler!r} (known: {', '.join(upscaler_names)})")
    if not is_number(values["scale_factor"]) or not 1 <= values["scale_factor"] <= 8:
        bad("scale_factor", "must be a number from 1 to 8")
    regions: list[Region] = []
    if values["enable_bbox_control"]:
        regions, region_errors = _regions(region_values)
        errors += region_errors
        if not errors and not regions and not values["draw_background"]:
            bad("enable_bbox_control", "Region Prompt Control is on but no region is enabled and the background "
                                       "is not drawn: nothing to paint")
    if errors:
        return None, errors
    size = (values["image_width"], values["image_height"]) if values["overwrite_size"] and mode == "txt2img" else None
    return TiledArgs(values["method"], size is not None, size or (0, 0), values["tile_width"], values["tile_height"],
                     values["overlap"], values["tile_batch_size"], tuple(regions), bool(values["draw_background"]),
                     bool(values["keep_input_size"]), upscaler if mode == "img2img" else "None",
                     float(values["scale_factor"]), inverse,
                     *((int(values["noise_inverse_steps"]), float(values["noise_inverse_retouch"]),
                        float(values["noise_inverse_renoise_strength"]), int(values["noise_inverse_renoise_kernel"]))
                       if inverse else ())), []


def _regions(values: list[Any]) -> tuple[list[Region], list[FieldError]]:
    count = len(REGION_ORDER)
    if len(values) > MAX_REGIONS * count:
        return [], [FieldError(FIELD, f"takes at most {MAX_REGIONS} regions of {count} values")]
    regions, errors = [], []
    for index in range(0, len(values), count):
        chunk = dict(zip(REGION_NAMES, values[index:index + count]))
        number = index // count + 1
        item = {name: chunk.get(name, default) for name, default in REGION_ORDER}
        where = f"{FIELD}.region{number}"
        if not isinstance(item["enable"], bool):
            errors.append(FieldError(f"{where}.enable", "must be true or false"))
            continue
        if not item["enable"]:
            continue
        for name in ("x", "y", "w", "h", "feather_ratio"):
            if not is_number(item[name]) or not 0 <= item[name] <= 1:
                errors.append(FieldError(f"{where}.{name}", "must be a number from 0 to 1"))
        for name in ("prompt", "neg_prompt"):
            if not isinstance(item[name], str):
                errors.append(FieldError(f"{where}.{name}", "must be text"))
        if item["blend_mode"] not in (BACKGROUND, FOREGROUND):
            errors.append(FieldError(f"{where}.blend_mode", f"must be {BACKGROUND} or {FOREGROUND}"))
        seed = item["seed"]
        if is_number(seed) and float(seed).is_integer():
            seed = int(seed)
        if not is_int(seed) or not -1 <= seed <= 2**32 - 1:
            errors.append(FieldError(f"{where}.seed", "must be -1 or a whole number"))
        if errors:
            continue
        if item["w"] <= 0 or item["h"] <= 0:
            continue  # as the extension: an empty box is skipped
        regions.append(Region(round(float(item["x"]), 4), round(float(item["y"]), 4), round(float(item["w"]), 4),
                              round(float(item["h"]), 4), item["prompt"], item["neg_prompt"], item["blend_mode"],
                              round(float(item["feather_ratio"]), 4), seed))
    return regions, errors


# ---- infotext ------------------------------------------------------------------------------------


def infotext_value(args: TiledArgs, regions: list[Region] | None = None, img2img: bool = False) -> dict[str, Any]:
    """The `Tiled Diffusion` dict as the extension writes it (`regions` with their seeds as used)."""
    info: dict[str, Any] = {"Method": args.method, "Tile tile width": args.tile_width,
                            "Tile tile height": args.tile_height, "Tile Overlap": args.overlap,
                            "Tile batch size": args.tile_batch_size}
    if args.upscaler != "None":
        info["Upscaler"], info["Upscale factor"] = args.upscaler, args.scale_factor
    if args.keep_input_size and img2img:
        info["Keep input size"] = True
    if args.noise_inverse and img2img:
        info["NoiseInv"], info["NoiseInv Steps"] = True, args.noise_inverse_steps
        info["NoiseInv Retouch"] = args.noise_inverse_retouch
        info["NoiseInv Renoise strength"] = args.noise_inverse_renoise_strength
        info["NoiseInv Kernel size"] = args.noise_inverse_renoise_kernel
    if args.regions and args.draw_background:  # Easel's addition (the extension does not record it), for paste
        info["Draw background"] = True
    if args.regions:
        info["Region control"] = {f"Region {n + 1}": r.info() for n, r in enumerate(regions or args.regions)}
    return info


def args_from_params(params: dict[str, str]) -> list[Any] | None:
    """The always-on args list an infotext's `Tiled Diffusion` value describes (None when it has none)."""
    text = params.get(INFOTEXT_KEY)
    if not text:
        return None
    try:
        info = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    values = {name: default for name, default in ORDER}
    values["enabled"] = True
    for key, name in (("Method", "method"), ("Tile tile width", "tile_width"), ("Tile tile height", "tile_height"),
                      ("Tile Overlap", "overlap"), ("Tile batch size", "tile_batch_size")):
        if key in info:
            values[name] = info[key]
    # the extension writes the key only when it is on (img2img), so its absence means off
    values["keep_input_size"] = info.get("Keep input size") is True
    if "Upscaler" in info:
        values["upscaler_name"] = info["Upscaler"]
        values["scale_factor"] = info.get("Upscale factor", 2.0)
    values["draw_background"] = info.get("Draw background") is True
    if info.get("NoiseInv") is True:
        values["noise_inverse"] = True
        for key, name in (("NoiseInv Steps", "noise_inverse_steps"), ("NoiseInv Retouch", "noise_inverse_retouch"),
                          ("NoiseInv Renoise strength", "noise_inverse_renoise_strength"),
                          ("NoiseInv Kernel size", "noise_inverse_renoise_kernel")):
            if key in info:
                values[name] = info[key]
    regions = info.get("Region control")
    flat: list[Any] = []
    if isinstance(regions, dict) and regions:
        values["enable_bbox_control"] = True
        for region in regions.values():
            if isinstance(region, dict):
                flat += [region.get(name, default) for name, default in REGION_ORDER]
    return [values[name] for name in NAMES] + flat
