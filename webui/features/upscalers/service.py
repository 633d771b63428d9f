"""The upscaler service: names in, a resized PIL image out. Used by Extras and by hires fix.

`upscale(image, name, scale=..)` or `(.., size=(w, h))` returns exactly that size:
- "Lanczos" / "Nearest" resize directly;
- "None" also resizes with Lanczos (what AUTOMATIC1111's Upscaler.upscale does with it;
  callers that mean "leave the image alone" check for "None" themselves);
- a model runs at its native factor, again while the image is still smaller than the
  target (at most three passes, as in A1111), then Lanczos brings it to the exact size.
  A1111 rounds targets down to multiples of 8; Easel gives the size asked for.
Transparency survives: the alpha channel is resized with Lanczos beside the model's RGB.
Everything is pure image in, image out: no latents, no diffusion state.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ...devices import empty_cache
from ...model_manager.lookup import ModelNotFound, match, path_names
from ...model_manager.store import ModelStore
from .catalog import BUILTIN, LANCZOS, NEAREST, NONE, UpscalerEntry, scan
from .loading import LoadedUpscaler, ModelCache
from .tiling import run_tiled, tile_count

log = logging.getLogger(__name__)

MAX_OUTPUT_SIDE = 16384
MAX_OUTPUT_MEGAPIXELS = 150.0
MAX_PASSES = 3
MIN_TILE = 64
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


class UpscaleError(ValueError):
    """A bad argument or unusable upscaler; the message is meant for the user."""

    user_facing = True


class UnknownUpscalerError(ModelNotFound, UpscaleError):
    """No upscaler answers to the name (the `lookup` contract's error; an UpscaleError too, as before)."""


def target_size(width: int, height: int, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int]:
    """The output size for a scale factor or an explicit size, checked against the output limits."""
    if (scale is None) == (size is None):
        raise UpscaleError("give either a scale factor or a target size")
    if size is not None:
        try:
            w, h = (int(v) for v in size)
        except (TypeError, ValueError):
            raise UpscaleError(f"size must be (width, height); got {size!r}") from None
    else:
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
            raise UpscaleError(f"scale must be a positive number; got {scale!r}")
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if w < 1 or h < 1:
        raise UpscaleError(f"the target size must be positive; got {w}x{h}")
    if max(w, h) > MAX_OUTPUT_SIDE or w * h / 1e6 > MAX_OUTPUT_MEGAPIXELS:
        raise UpscaleError(f"the result would be {w}x{h}; the largest result allowed is {MAX_OUTPUT_SIDE} pixels "
                           f"a side and {MAX_OUTPUT_MEGAPIXELS:g} megapixels")
    return w, h


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB for the model, plus the alpha channel if the image has one."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return (image if image.mode == "RGB" else image.convert("RGB")), None


def _to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div_(255)


def _to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(array[:, :, 0]), "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB")


class Upscalers:
    """Lists upscalers and runs them; models load on first use and stay in the model store (2 at most).

    `folders()` returns kind -> folders (see catalog.UPSCALER_KINDS); it is called on every
    listing, so files dropped into models/ESRGAN show up without a restart.
    """

    def __init__(self, folders: Callable[[], dict[str, list[Path]]], device: torch.device,
                 dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                 settings=None, cache_size: int = 2, store: ModelStore | None = None):
        self._folders = folders
        self.device = device
        self.dtype = dtype
        self.allow_pickle = allow_pickle
        self.settings = settings
        self.cache = ModelCache(cache_size, store, "upscaler")

    # ---- listing ----------------------------------------------------------------------------

    def entries(self) -> list[UpscalerEntry]:
        return scan(self._folders(), self.allow_pickle)[0]

    def skipped_pickles(self) -> list[Path]:
        """Pickle model files not listed because --allow-pickle was not given."""
        return scan(self._folders(), self.allow_pickle)[1]

    def list_upscalers(self) -> list[str]:
        """"None", "Lanczos", "Nearest", then model upscalers by name (AUTOMATIC1111's order)."""
        return [*BUILTIN, *(e.name for e in self.entries())]

    def find(self, name: str) -> UpscalerEntry:
        """The model upscaler for `name`: display name, file stem or file name (the `lookup` contract).

        Built-ins ("None", "Lanczos", "Nearest") are not model files: they are not found here.
        """
        entries = self.entries()
        folders = [f for kind_folders in self._folders().values() for f in kind_folders]
        found = None if name in BUILTIN else match(name, entries, lambda e: (e.name,),
                                                   lambda e: path_names(e.path, folders))
        if found is None:
            raise UnknownUpscalerError("upscaler", name.strip(), self.list_upscalers(),
                                       " or ".join(map(str, folders)))
        return found

    def load(self, name: str) -> LoadedUpscaler:
        if name in BUILTIN:
            raise UpscaleError(f"{name} is not a model upscaler")
        entry = self.find(name)
        model = self.cache.get(entry.path, self.device, self.dtype, self.allow_pickle)
        if model.purpose == "FaceSR":
            raise UpscaleError(f"{entry.path.name} is a face restoration model ({model.architecture}); "
                               "put it in models/GFPGAN or models/Codeformer")
        return model

    def unload(self) -> None:
        self.cache.clear()
        empty_cache(self.device)

    # ---- running ---------------------------------------------------------------------------------

    def _tiling(self, tile: int | None, overlap: int | None) -> tuple[int, int]:
        def setting(key: str, default: int) -> int:
            value = self.settings.get(key) if self.settings is not None else None
            return default if value is None else int(value)

        tile = setting("ESRGAN_tile", DEFAULT_TILE) if tile is None else int(tile)
        overlap = setting("ESRGAN_tile_overlap", DEFAULT_OVERLAP) if overlap is None else int(overlap)
        if tile < 0 or overlap < 0:
            raise UpscaleError("tile size and overlap must not be negative")
        return tile, overlap

    def upscale(self, image: Image.Image, upscaler: str, scale: float | None = None,
                size: tuple[int, int] | None = None, tile: int | None = None, overlap: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                check: Callable[[], None] | None = None) -> Image.Image:
        """Resize `image` to `scale` x its size or to exactly `size` with the named upscaler.

        `tile`/`overlap` default to the ESRGAN_tile / ESRGAN_tile_overlap settings (512 / 32);
        tile 0 means no tiling. `progress(done, total)` counts tiles; `check()` is called
        before each tile and may raise (e.g. the job's Interrupted) to stop.
        """
        width, height = target_size(image.width, image.height, scale, size)
        if upscaler in (NONE, LANCZOS, NEAREST):
            resample = Image.Resampling.NEAREST if upscaler == NEAREST else Image.Resampling.LANCZOS
            if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 1-bit, CMYK, 16-bit ...
                image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
            result = image.resize((width, height), resample=resample)
            if progress:
                progress(1, 1)
            return result
        model = self.load(upscaler)
        tile, overlap = self._tiling(tile, overlap)
        rgb, alpha = _split_alpha(image)
        result = self._run_model(model, rgb, (width, height), tile, overlap, progress, check)
        if result.size != (width, height):
            result = result.resize((width, height), resample=Image.Resampling.LANCZOS)
        if alpha is not None:
            result.putalpha(alpha.resize((width, height), resample=Image.Resampling.LANCZOS))
        return result

    def _passes(self, model: LoadedUpscaler, width: int, height: int, target: tuple[int, int]) -> list[tuple[int, int]]:
        """Input sizes of each model pass: at least one, then again while still short of the target."""
        sizes = [(width, height)]
        while len(sizes) < MAX_PASSES and model.scale > 1:
            w, h = sizes[-1][0] * model.scale, sizes[-1][1] * model.scale
            if w >= target[0] and h >= target[1]:
                break
            sizes.append((w, h))
        return sizes

    def _run_model(self, model: LoadedUpscaler, image: Image.Image, target: tuple[int, int], tile: int,
                   overlap: int, progress, check) -> Image.Image:
        from spandrel import ModelTiling

        if model.descriptor.tiling == ModelTiling.INTERNAL:
            tile = 0
        passes = self._passes(model, image.width, image.height, target)
        total = sum(tile_count(w, h, tile, overlap) for w, h in passes)
        done = 0
        for w, h in passes:
            while True:
                try:
                    image = self._one_pass(model, image, tile, overlap, progress, check, done, total)
                    break
                except torch.OutOfMemoryError:
                    empty_cache(self.device)
                    current = tile or max(w, h)
                    if current <= MIN_TILE:
                        raise UpscaleError(f"out of memory on {self.device} even with {MIN_TILE}px tiles") from None
                    tile = max(MIN_TILE, current // 2 // 8 * 8)
                    log.warning("out of memory while upscaling; retrying with %dpx tiles", tile)
                    total = done + sum(tile_count(pw, ph, tile, overlap) for pw, ph in passes[passes.index((w, h)):])
            done += tile_count(w, h, tile, overlap)
        return image

    def _one_pass(self, model: LoadedUpscaler, image: Image.Image, tile: int, overlap: int, progress, check,
                  done: int, total: int) -> Image.Image:
        descriptor = model.descriptor
        source = _to_tensor(image, descriptor.input_channels)

        def fn(piece: torch.Tensor) -> torch.Tensor:
            return descriptor(piece.to(model.device, model.dtype))

        out = run_tiled(fn, source, model.scale, tile, overlap, progress=progress, check=check,
                        done_offset=done, total=total)
        return _to_image(out)
