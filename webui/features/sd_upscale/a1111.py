"""AUTOMATIC1111's built-in "SD upscale" img2img script: upscale, redraw overlapping tiles, blend them.

`script_args`: [info, overlap, upscaler_index, scale_factor] (the upscaler as an index of
/sdapi/v1/upscalers or a name). The tiles are the request's width x height, spread evenly with at
least `overlap` pixels shared (geometry.split_starts); each is an ordinary img2img of that tile
through `context.generate`, tile i with seed + i (AUTOMATIC1111's seeds with batch size 1), and
`n_iter` pictures start from seed, seed + 1, ... The blend over the overlaps is our own linear ramp
(geometry.combine). Infotext: the first tile's, with `SD upscale overlap` and `SD upscale upscaler`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ...extensions import api as easel
from ...extensions.script_args import ScriptArgsError
from . import geometry as g
from .common import ScriptServices, save_sample, upscaler_name, with_params


@dataclass(frozen=True)
class SDUpscaleArgs:
    info: Any = easel.arg(None, label="info")
    overlap: int = easel.arg(64, label="Tile overlap", minimum=0, maximum=256, step=8)
    upscaler_index: Any = easel.arg(0, label="Upscaler")
    scale_factor: float = easel.arg(2.0, label="Scale Factor", minimum=1, maximum=4, step=0.05)


@dataclass(frozen=True)
class SDUpscaleSettings:
    overlap: int
    upscaler: str
    scale: float


class SDUpscale(easel.Script):
    name = "sd_upscale"
    title = "SD upscale"
    kind = "selectable"
    tabs = ("img2img",)
    Args = SDUpscaleArgs

    def __init__(self, services: ScriptServices):
        self.services = services

    def parse_args(self, values: Any) -> SDUpscaleSettings:
        a: SDUpscaleArgs = super().parse_args(values)
        return SDUpscaleSettings(a.overlap, upscaler_name(self.services, a.upscaler_index, "upscaler_index"),
                                 a.scale_factor)

    def ui(self, tab: str) -> dict:
        import gradio as gr

        gr.Markdown("Upscales by the scale factor, then redraws tiles of the width and height set above.")
        names = self.services.upscaler_names()
        return {"info": gr.State(None), "overlap": self.control("overlap", tab),
                "scale_factor": self.control("scale_factor", tab),
                "upscaler_index": gr.Radio(names, value=names[0], label="Upscaler",
                                           elem_id=f"script_{tab}_sd_upscale_upscaler_index")}

    def run(self, request: easel.GenerationRequest, args: SDUpscaleSettings,
            context: easel.GenerationContext) -> easel.Result:
        if not request.init_images:
            raise ScriptArgsError("", "SD upscale needs an img2img image (init_images)")
        seed = easel.resolve_seed(request.seed)
        source = request.init_images[0].convert("RGB")
        size = (max(1, round(source.width * args.scale)), max(1, round(source.height * args.scale)))
        picture = self.services.upscale(source, args.upscaler, size=size)
        tile_w, tile_h = min(request.width, picture.width), min(request.height, picture.height)
        xs = g.split_starts(picture.width, tile_w, args.overlap)
        ys = g.split_starts(picture.height, tile_h, args.overlap)
        done = easel.Result()
        extra = {"SD upscale overlap": args.overlap, "SD upscale upscaler": args.upscaler}
        for n in range(request.n_iter):
            start = seed + n
            rows, first_text = [], ""
            for row, y in enumerate(ys):
                tiles = []
                for col, x in enumerate(xs):
                    tile = picture.crop((x, y, x + tile_w, y + tile_h))
                    sub = replace(request, mode="img2img", init_images=[tile], mask=None, width=request.width,
                                  height=request.height, n_iter=1, batch_size=1,
                                  seed=(start + row * len(xs) + col) % (easel.MAX_SEED + 1), save_images=False,
                                  resize_mode=0, latent_mask=None)
                    result = context.generate(sub)
                    done.warnings.extend(w for w in result.warnings if w not in done.warnings)
                    if result.interrupted or not result.images:
                        done.interrupted = result.interrupted
                        done.skipped_batches += 0 if result.interrupted else max(1, result.skipped_batches)
                        return done
                    first_text = first_text or result.infotexts[0]
                    tiles.append(result.images[0])
                rows.append(tiles)
            image = g.combine(rows, xs, ys, picture.size)
            text = with_params(first_text, extra)
            done.images.append(image)
            done.infotexts.append(text)
            done.seeds.append(start)
            if self.services.engine is not None:
                path = save_sample(self.services.engine, request, image, text, start)
                if path:
                    done.paths.append(path)
        return done
