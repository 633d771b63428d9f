"""Between pixels and latents: VAE encode/decode with the half-precision NaN fallback and tiling.

Tiling is Easel's own tiler (`vae_tiling.py`: tiles of the VAE's `sample_size`, each layer
run tile by tile with a one-pixel halo, GroupNorm statistics shared over the whole image, so a
tiled picture equals the untiled one); a VAE of another layout falls back to diffusers' tiled
encode/decode (each tile normalised alone, overlaps blended). The policy comes from the setting `vae_tiling` through a
context the engine sets around each job (`vae_tiling(...)`), so the features that encode and
decode (img2img, hires fix, soft inpainting) follow it without passing it along:
Automatic tiles images above AUTO_TILE_PIXELS and retries tiled after running out of device
memory; Always tiles whatever is larger than one tile; Never does not tile. The tile sides (settings
`vae_tile_encode` / `vae_tile_decode`, image pixels, 0: the VAE's own) change only memory and speed: the
tiler's picture is the untiled one at any tile size.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from contextvars import ContextVar
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image

from . import vae_tiling as shared_tiling

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel

log = logging.getLogger(__name__)
T = TypeVar("T")
TILING_MODES = ("Automatic", "Always", "Never")
AUTO_TILE_PIXELS = 2048 * 2048  # Automatic: above this many pixels an untiled decode needs several GB
MIN_TILE_PIXELS = 64  # a chosen tile side below this only multiplies the windows (one per tile per layer)


@dataclass(frozen=True)
class TilingPolicy:
    """When to tile, and the tile sides in image pixels (0: the VAE's own `sample_size`)."""

    mode: str = "Automatic"
    encode_tile: int = 0
    decode_tile: int = 0


_TILING: ContextVar[TilingPolicy] = ContextVar("vae_tiling", default=TilingPolicy())


@contextmanager
def vae_tiling(mode: str, encode_tile: int = 0, decode_tile: int = 0) -> Iterator[None]:
    """Encode and decode inside the block follow `mode` (one of TILING_MODES), in tiles of the given sides."""
    token = _TILING.set(TilingPolicy(mode if mode in TILING_MODES else "Automatic", int(encode_tile or 0),
                                     int(decode_tile or 0)))
    try:
        yield
    finally:
        _TILING.reset(token)


def _wants_tiles(pixels: int) -> bool:
    mode = _TILING.get().mode
    return mode == "Always" or (mode == "Automatic" and pixels > AUTO_TILE_PIXELS)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _with_tiling(model: "LoadedModel", pixels: int, plain: Callable[[], T], tiled: Callable[[], T]) -> T:
    """`plain()`, or `tiled()` when the policy asks; on out-of-memory, once more tiled."""
    want = _wants_tiles(pixels)
    try:
        return tiled() if want else plain()
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if want or _TILING.get().mode == "Never" or not _out_of_memory(exc):
            raise
    log.warning("the VAE ran out of device memory on %d pixels; retrying in tiles", pixels)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tiled()


def tile_size(vae: torch.nn.Module, kind: str = "decode") -> int:
    """Tile side in image pixels for `kind` ("decode" or "encode"): the policy's choice (at least
    MIN_TILE_PIXELS), else the VAE's own `sample_size` (512 for SD 1.x, 1024 for SDXL/SD3/Flux)."""
    policy = _TILING.get()
    chosen = policy.decode_tile if kind == "decode" else policy.encode_tile
    if chosen > 0:
        return max(chosen, MIN_TILE_PIXELS)
    size = getattr(getattr(vae, "config", None), "sample_size", 512)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _onload(model: "LoadedModel") -> None:
    """Model offload moves the VAE onto the device when `vae.decode`/`encode` or a direct child runs; the
    tiler calls the layers inside them, so the VAE's group is onloaded here first."""
    offloader = getattr(model, "offloader", None)
    if offloader is not None and getattr(model, "memory_mode", "Resident") == "Model offload":
        offloader.onload_group(offloader.groups.get("vae", "vae"))


def _tiled_decode(model: "LoadedModel", z: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    if not shared_tiling.supported(vae):  # a layout our tiler does not walk: diffusers' per-tile tiling
        return _diffusers_tiled(vae, lambda: vae.decode(z).sample)
    _onload(model)
    tile = tile_size(vae, "decode")
    log.info("VAE decode in tiles of %d px (GroupNorm statistics shared)", tile)
    return shared_tiling.decode(vae, z, tile)


def _tiled_encode(model: "LoadedModel", x: torch.Tensor) -> torch.Tensor:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    vae = model.vae
    if not shared_tiling.supported(vae):
        return _diffusers_tiled(vae, lambda: vae.encode(x).latent_dist.mode())
    _onload(model)
    tile = tile_size(vae, "encode")
    log.info("VAE encode in tiles of %d px (GroupNorm statistics shared)", tile)
    return DiagonalGaussianDistribution(shared_tiling.encode(vae, x, tile)).mode()


def _diffusers_tiled(vae: torch.nn.Module, run: Callable[[], T]) -> T:
    before = getattr(vae, "use_tiling", False)
    vae.use_tiling = True
    try:
        return run()
    finally:
        vae.use_tiling = before


def to_pixels(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def to_image(pixels: torch.Tensor) -> Image.Image:
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _vae_dtype(model: "LoadedModel") -> torch.dtype:
    from ..model_manager.gguf_quantized import compute_dtype, set_dtype

    vae = model.vae
    current = compute_dtype(vae)  # weights stored in 16 bits under fp32 compute: fp32 (loader.vae_storage)
    dtype = torch.float32 if model.vae_upcast else current
    if dtype != current:
        set_dtype(vae, dtype)
    return dtype


def _upcast(model: "LoadedModel") -> None:
    """Switch this model's VAE to fp32 for good; logged here, and this runs once per model (`vae_upcast`)."""
    log.warning("the VAE of %s produced NaNs in half precision; it decodes and encodes in fp32 from now on "
                "(as --no-half-vae would)", model.info.name)
    model.vae_upcast = True
    from ..model_manager.gguf_quantized import set_dtype

    set_dtype(model.vae, torch.float32)  # GGUF-quantized layers compute in it too
    if getattr(model, "offloader", None) is not None:  # offload hooks keep copies of the weights: take them again
        model.offloader.refresh()


def _with_fp32_retry(model: "LoadedModel", kind: str, source: torch.Tensor, area: int) -> torch.Tensor:
    """`kind` ("decode": pixels of unscaled latents; "encode": the posterior mean) on the VAE in its dtype,
    tiled as the policy says, as float32. NaNs in half precision (SDXL's fp16 VAE) switch this model's VAE
    to fp32 for good and run it again, as AUTOMATIC1111 does, rather than hand the user a black image; the
    model's later images go straight to fp32 (one log line)."""
    def run(dtype: torch.dtype) -> torch.Tensor:
        x = source.to(dtype)
        if kind == "decode":
            out = _with_tiling(model, area, lambda: model.vae.decode(x).sample, lambda: _tiled_decode(model, x))
        else:
            out = _with_tiling(model, area, lambda: model.vae.encode(x).latent_dist.mode(),
                               lambda: _tiled_encode(model, x))
        return out.float()

    dtype = _vae_dtype(model)
    out = run(dtype)
    if torch.isnan(out).any() and dtype != torch.float32:
        _upcast(model)
        out = run(torch.float32)
    return out


def _scale(model: "LoadedModel") -> float:
    return model.configs["vae"].get("scaling_factor", 0.18215)


def _shift(model: "LoadedModel") -> float:
    """The latent mean some VAEs remove before scaling (Flux's 16-channel VAE: 0.1159; SD's: none)."""
    return model.configs["vae"].get("shift_factor") or 0.0


@torch.no_grad()
def decode(model: "LoadedModel", latents: torch.Tensor) -> list[Image.Image]:
    """One image at a time, so peak memory stays that of one decode."""
    images = []
    for latent in latents:
        area = latent.shape[-1] * latent.shape[-2] * _factor(model) ** 2
        unscaled = latent[None] / _scale(model) + _shift(model)
        images.append(to_image(_with_fp32_retry(model, "decode", unscaled, area)[0]))
    return images


def _factor(model: "LoadedModel") -> int:
    """Pixels per latent along a side (8 for every VAE Easel knows)."""
    return 2 ** (len(model.configs["vae"].get("block_out_channels", (0, 0, 0, 0))) - 1)


@torch.no_grad()
def encode(model: "LoadedModel", images: list[Image.Image] | list[torch.Tensor]) -> torch.Tensor:
    """Latents (the posterior mean, so the same image always encodes the same) of RGB images, or of
    (1, 3, H, W) pixel tensors in [-1, 1] (a masked image, unrounded, as the diffusers pipelines encode it)."""
    device = next(model.vae.parameters()).device
    if getattr(model, "memory_mode", "Resident") != "Resident":  # offloaded: hooks move the VAE where it runs
        device = model.device.device
    out = []
    for image in images:
        source = image if isinstance(image, torch.Tensor) else to_pixels(image)
        area = source.shape[-1] * source.shape[-2]
        latent = _with_fp32_retry(model, "encode", source.to(device), area)
        out.append((latent - _shift(model)) * _scale(model))
    return torch.cat(out)
