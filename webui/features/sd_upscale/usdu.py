"""Ultimate SD upscale (the extension's img2img script): upscale, redraw in tiles, fix the seams.

Its `script_args`, in the extension's order: [info, tile_width, tile_height, mask_blur, padding,
seams_fix_width, seams_fix_denoise, seams_fix_padding, upscaler_index, save_upscaled_image,
redraw_mode, save_seams_fix_image, seams_fix_mask_blur, seams_fix_type, target_size_type,
custom_width, custom_height, custom_scale]; the three dropdowns are indexes (redraw: Linear, Chess,
None; seams fix: None, Band pass, Half tile offset pass, Half tile offset pass + intersections;
target size: From img2img2 settings, Custom size, Scale from image size) or their labels, the
upscaler an index of /sdapi/v1/upscalers or a name. Every tile and seam is an ordinary img2img
inpainting request ("only masked", original content) run through `context.generate`, with the
request's seed for each, as the extension does. Infotext: the last repaint's, at the full size,
with `Ultimate SD upscale upscaler/tile_width/tile_height/mask_blur/padding`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from ...extensions import api as easel
from ...extensions.script_args import ScriptArgsError
from . import geometry as g
from .common import ScriptServices, round_up8, save_sample, upscaler_name, with_params

REDRAW_MODES = ("Linear", "Chess", "None")
SEAMS_FIX_TYPES = ("None", "Band pass", "Half tile offset pass", "Half tile offset pass + intersections")
TARGET_SIZE_TYPES = ("From img2img2 settings", "Custom size", "Scale from image size")
MAX_PADDING = 256  # Easel's inpaint_full_res_padding limit (the extension's slider goes to 512)


@dataclass(frozen=True)
class USDUArgs:
    """The extension's arguments, in its positional order (the first is its info text, ignored)."""

    info: Any = easel.arg(None, label="info")
    tile_width: int = easel.arg(512, label="Tile width", minimum=0, maximum=2048, step=8)
    tile_height: int = easel.arg(0, label="Tile height (0: the tile width)", minimum=0, maximum=2048, step=8)
    mask_blur: int = easel.arg(8, label="Mask blur", minimum=0, maximum=64)
    padding: int = easel.arg(32, label="Padding", minimum=0, maximum=512)
    seams_fix_width: int = easel.arg(64, label="Seams fix width", minimum=0, maximum=128)
    seams_fix_denoise: float = easel.arg(0.35, label="Seams fix denoise", minimum=0, maximum=1)
    seams_fix_padding: int = easel.arg(16, label="Seams fix padding", minimum=0, maximum=128)
    upscaler_index: Any = easel.arg(0, label="Upscaler")
    save_upscaled_image: bool = easel.arg(True, label="Save upscaled")
    redraw_mode: Any = easel.arg(0, label="Redraw type")
    save_seams_fix_image: bool = easel.arg(False, label="Save seams fix")
    seams_fix_mask_blur: int = easel.arg(4, label="Seams fix mask blur", minimum=0, maximum=64)
    seams_fix_type: Any = easel.arg(0, label="Seams fix type")
    target_size_type: Any = easel.arg(0, label="Target size type")
    custom_width: int = easel.arg(2048, label="Custom width", minimum=64, maximum=8192, step=8)
    custom_height: int = easel.arg(2048, label="Custom height", minimum=64, maximum=8192, step=8)
    custom_scale: float = easel.arg(2.0, label="Scale", minimum=1, maximum=16)


@dataclass(frozen=True)
class USDUSettings:
    tile: tuple[int, int]
    mask_blur: int
    padding: int
    upscaler: str
    redraw: str
    seams_fix: str
    seams_width: int
    seams_denoise: float
    seams_padding: int
    seams_mask_blur: int
    save_upscaled: bool
    save_seams_fix: bool
    target: str
    custom_size: tuple[int, int]
    custom_scale: float


def _choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() \
            and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        for choice in choices:
            if choice.lower() == value.strip().lower():
                return choice
    raise ScriptArgsError(field, f"must be an index 0-{len(choices) - 1} or one of {', '.join(choices)}")


class UltimateSDUpscale(easel.Script):
    name = "ultimate_sd_upscale"
    title = "Ultimate SD upscale"
    kind = "selectable"
    tabs = ("img2img",)
    Args = USDUArgs

    def __init__(self, services: ScriptServices):
        self.services = services

    def parse_args(self, values: Any) -> USDUSettings:
        a: USDUArgs = super().parse_args(values)
        tile_w = a.tile_width if a.tile_width > 0 else a.tile_height
        tile_h = a.tile_height if a.tile_height > 0 else a.tile_width
        if tile_w <= 0:
            raise ScriptArgsError("tile_width", "tile width and height cannot both be 0")
        for name in ("padding", "seams_fix_padding"):
            if getattr(a, name) > MAX_PADDING:
                raise ScriptArgsError(name, f"must be at most {MAX_PADDING} in Easel (its masked-area padding limit)")
        return USDUSettings((tile_w, tile_h), a.mask_blur, a.padding,
                            upscaler_name(self.services, a.upscaler_index, "upscaler_index"),
                            _choice(a.redraw_mode, REDRAW_MODES, "redraw_mode"),
                            _choice(a.seams_fix_type, SEAMS_FIX_TYPES, "seams_fix_type"), a.seams_fix_width,
                            a.seams_fix_denoise, a.seams_fix_padding, a.seams_fix_mask_blur, a.save_upscaled_image,
                            a.save_seams_fix_image, _choice(a.target_size_type, TARGET_SIZE_TYPES, "target_size_type"),
                            (a.custom_width, a.custom_height), a.custom_scale)

    def ui(self, tab: str) -> dict:
        import gradio as gr

        c: dict[str, Any] = {"info": gr.State(None)}
        with gr.Row():
            c["target_size_type"] = gr.Dropdown(list(TARGET_SIZE_TYPES), value=TARGET_SIZE_TYPES[0],
                                                label="Target size type", elem_id="ultimateupscale_target_size_type")
            for name in ("custom_width", "custom_height", "custom_scale"):
                c[name] = self.control(name, tab)
        c["upscaler_index"] = gr.Dropdown(self.services.upscaler_names(), value=self.services.upscaler_names()[0],
                                          label="Upscaler", elem_id="ultimateupscale_upscaler_index")
        with gr.Row():
            c["redraw_mode"] = gr.Dropdown(list(REDRAW_MODES), value=REDRAW_MODES[0], label="Type",
                                           elem_id="ultimateupscale_redraw_mode")
            for name in ("tile_width", "tile_height", "mask_blur", "padding"):
                c[name] = self.control(name, tab)
        with gr.Row():
            c["seams_fix_type"] = gr.Dropdown(list(SEAMS_FIX_TYPES), value=SEAMS_FIX_TYPES[0], label="Seams fix",
                                              elem_id="ultimateupscale_seams_fix_type")
            for name in ("seams_fix_denoise", "seams_fix_width", "seams_fix_mask_blur", "seams_fix_padding"):
                c[name] = self.control(name, tab)
        with gr.Row():
            c["save_upscaled_image"] = self.control("save_upscaled_image", tab)
            c["save_seams_fix_image"] = self.control("save_seams_fix_image", tab)
        return c

    # ---- run -------------------------------------------------------------------------------------

    def run(self, request: easel.GenerationRequest, args: USDUSettings,
            context: easel.GenerationContext) -> easel.Result:
        if not request.init_images:
            raise ScriptArgsError("", "Ultimate SD upscale needs an img2img image (init_images)")
        seed = easel.resolve_seed(request.seed)
        source = request.init_images[0].convert("RGB")
        size = self._target(request, source, args)
        image = self.services.upscale(source, args.upscaler, size=size)
        run = _Run(request, seed, context)
        rows, cols = g.grid_shape(size[0], size[1], *args.tile)
        done = easel.Result()
        if args.redraw != "None":
            image = self._redraw(run, image, args, rows, cols)
        if run.stopped:
            return run.finish(done, image)
        self._keep(done, run, request, image, args, seed, save=args.save_upscaled)
        if args.seams_fix != "None":
            image = self._seams(run, image, args, rows, cols)
            if run.stopped:
                return run.finish(done, None)
            self._keep(done, run, request, image, args, seed, save=args.save_seams_fix)
        done.warnings.extend(run.warnings)
        return done

    @staticmethod
    def _target(request: Any, source: Image.Image, args: USDUSettings) -> tuple[int, int]:
        if args.target == "Custom size":
            return args.custom_size
        if args.target == "Scale from image size":
            return (math.ceil(source.width * args.custom_scale / 64) * 64,
                    math.ceil(source.height * args.custom_scale / 64) * 64)
        return request.width, request.height

    def _redraw(self, run: "_Run", image: Image.Image, args: USDUSettings, rows: int, cols: int) -> Image.Image:
        tile_w, tile_h = args.tile
        size = (math.ceil((tile_w + args.padding) / 64) * 64, math.ceil((tile_h + args.padding) / 64) * 64)
        for xi, yi in g.tile_order(rows, cols, args.redraw == "Chess"):
            mask = g.rect_mask(image.size, g.tile_rect(xi, yi, tile_w, tile_h))
            image = run.repaint(image, mask, size, args.padding, args.mask_blur, run.request.denoising_strength)
            if run.stopped:
                break
        return image

    def _seams(self, run: "_Run", image: Image.Image, args: USDUSettings, rows: int, cols: int) -> Image.Image:
        tile_w, tile_h = args.tile
        denoise, padding = args.seams_denoise, args.seams_padding
        if args.seams_fix == "Band pass":
            band = args.seams_width
            for xi in range(1, cols):
                mask = g.vertical_band(image.size, xi * tile_w, band)
                image = run.repaint(image, mask, (round_up8(band + padding * 2), round_up8(image.height)), padding,
                                    0, denoise)
                if run.stopped:
                    return image
            for yi in range(1, rows):
                mask = g.horizontal_band(image.size, yi * tile_h, band)
                image = run.repaint(image, mask, (round_up8(image.width), round_up8(band + padding * 2)), padding,
                                    0, denoise)
                if run.stopped:
                    return image
            return image
        size = (round_up8(tile_w), round_up8(tile_h))
        patches = [g.half_tile_row(image.size, xi, yi, tile_w, tile_h) for yi in range(rows - 1) for xi in range(cols)]
        patches += [g.half_tile_col(image.size, xi, yi, tile_w, tile_h) for yi in range(rows) for xi in range(cols - 1)]
        for mask in patches:
            image = run.repaint(image, mask, size, padding, args.seams_mask_blur, denoise)
            if run.stopped:
                return image
        if args.seams_fix == SEAMS_FIX_TYPES[3]:
            for yi in range(rows - 1):
                for xi in range(cols - 1):
                    mask = g.intersection(image.size, xi, yi, tile_w, tile_h)
                    image = run.repaint(image, mask, size, 0, args.seams_mask_blur, denoise)
                    if run.stopped:
                        return image
        return image

    @staticmethod
    def _text(run: "_Run", image: Image.Image, args: USDUSettings) -> str:
        return with_params(run.last_text, {
            "Size": f"{image.width}x{image.height}", "Ultimate SD upscale upscaler": args.upscaler,
            "Ultimate SD upscale tile_width": args.tile[0], "Ultimate SD upscale tile_height": args.tile[1],
            "Ultimate SD upscale mask_blur": args.mask_blur, "Ultimate SD upscale padding": args.padding})

    def _keep(self, done: easel.Result, run: "_Run", request: Any, image: Image.Image, args: USDUSettings,
              seed: int, save: bool) -> None:
        """One finished stage (the redraw, then the seams fix) into the result, saved when its option says so."""
        text = self._text(run, image, args)
        done.images.append(image)
        done.infotexts.append(text)
        done.seeds.append(seed)
        if save and self.services.engine is not None:
            path = save_sample(self.services.engine, request, image, text, seed)
            if path:
                done.paths.append(path)


class _Run:
    """One script run: repaints through `context.generate`, remembering the last infotext and a stop."""

    def __init__(self, request: Any, seed: int, context: Any):
        self.request, self.seed, self.context = request, seed, context
        self.last_text = ""
        self.stopped = False
        self.interrupted = False
        self.skipped = 0
        self.warnings: list[str] = []

    def repaint(self, image: Image.Image, mask: Image.Image, size: tuple[int, int], padding: int, blur: int,
                denoise: float) -> Image.Image:
        if mask.getbbox() is None:
            return image
        sub = replace(self.request, mode="img2img", init_images=[image], mask=mask, inpaint_full_res=True,
                      inpaint_full_res_padding=padding, mask_blur=blur, inpainting_fill=1, inpainting_mask_invert=0,
                      width=size[0], height=size[1], resize_mode=0, denoising_strength=denoise, n_iter=1,
                      batch_size=1, seed=self.seed, save_images=False, outpaint_left=0, outpaint_right=0,
                      outpaint_up=0, outpaint_down=0, mask_blur_x=None, mask_blur_y=None, latent_mask=None)
        result = self.context.generate(sub)
        for warning in result.warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
        if result.interrupted:
            self.stopped = self.interrupted = True
        if not result.images:
            self.skipped += max(1, result.skipped_batches)
            self.stopped = True
            return image
        self.last_text = result.infotexts[0]
        return result.images[0]

    def finish(self, done: easel.Result, image: Image.Image | None) -> easel.Result:
        done.interrupted = self.interrupted
        done.skipped_batches += self.skipped
        done.warnings.extend(self.warnings)
        return done
