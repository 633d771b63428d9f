"""Live previews: a fixed linear map from latent channels to RGB, a tiny autoencoder, or the full VAE.

Decoding every few steps with the VAE would slow sampling down; the latent channels of
SD's autoencoders are close enough to a linear mix of colours that a channels x 3 matrix
gives a recognisable thumbnail. The coefficients are the community's published
least-squares fits, one per latent space; each family adapter carries its own
(`LatentFormat.preview_rgb`), and the job records the previewer of the model it samples.

Where previews are decoded: on the job's worker thread (`render`), at most once per
`live_preview_refresh_period` and only while someone watches (`watched_image`, called by the
page's poller and the API). Pollers then only send a picture. Torch on Gradio's or uvicorn's
handler threads would start one OpenMP thread pool per calling thread, which on a CPU-only
machine costs spinning threads beside the sampler.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel
    from .jobs import Progress

# AUTOMATIC1111's "Live preview method" choices Easel offers (settings.py): "TAESD", "Approx cheap", "Full".
# "Approx NN" is not: its weights are SD 1.x/SDXL-only pickles with no diffusers class; TAESD covers every family
# (a client sending "Approx NN" gets TAESD: settings.PREVIEW_ALIASES).
# a poller that stopped asking this long ago no longer makes the worker decode previews
WATCH_SECONDS = 10.0
# previews take at most 1/(1 + this) of the worker's time: a decode that took d seconds waits this many d (a TAESD
# decode of 512x512 takes seconds on a small CPU, longer than a step; on a GPU it is milliseconds and the period rules)
COST_RATIO = 4.0


def latent_preview(latents: torch.Tensor, rgb: Sequence[Sequence[float]] | None = None, index: int = 0,
                   upscale: int = 4) -> Image.Image:
    """RGB thumbnail of one latent of a batch; upscaled so a 64x64 latent shows at 256x256.

    `rgb` maps each latent channel to a colour (channels x 3); without a matching one, the
    channels' mean is shown in grey.
    """
    latent = latents[index].detach().float().cpu()
    channels = latent.shape[0]
    if rgb and len(rgb) == channels:
        coeffs = torch.tensor(rgb, dtype=torch.float32)
    else:
        coeffs = torch.full((channels, 3), 1.0 / max(1, channels))
    colours = torch.einsum("chw,cr->hwr", latent, coeffs)
    array = ((colours + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.BILINEAR)
    return image


@dataclass(frozen=True)
class ApproxPreview:
    """AUTOMATIC1111's "Approx cheap": the family's latent -> RGB matrix."""

    rgb: Sequence[Sequence[float]] | None = None

    def __call__(self, latents: torch.Tensor, index: int = 0, upscale: int = 4) -> Image.Image:
        return latent_preview(latents, self.rgb, index, upscale)


@dataclass(frozen=True)
class TinyVaePreview:
    """AUTOMATIC1111's "TAESD": a tiny autoencoder (diffusers' AutoencoderTiny) decodes the latent.

    It takes the latents as the sampler holds them (scaled, and for SD3/Flux shifted: the tiny
    autoencoders' own scaling factor is 1) and returns the picture at full size, close to what
    the real VAE will make, for a few milliseconds. Every family keeps its latents as a grid
    while sampling (Flux packs 2x2 patches into tokens only inside its denoiser call), so no
    unpacking is needed here. The lock keeps two callers from running the module at once.
    """

    decoder: Any  # AutoencoderTiny
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, index: int = 0, upscale: int = 1) -> Image.Image:
        param = next(self.decoder.parameters())
        with self.lock:
            pixels = self.decoder.decode(latents[index:index + 1].detach().to(param.device, param.dtype)).sample
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")


class FullVaePreview:
    """AUTOMATIC1111's "Full": the checkpoint's own VAE decodes the latent (as the final image will be).
    Exact but as slow as a final decode, so it costs sampling time at every refresh period. It holds the
    model weakly: a finished job kept in the history must not keep an unloaded checkpoint in memory."""

    def __init__(self, model: "LoadedModel") -> None:
        self._model = weakref.ref(model)

    @property
    def model(self) -> "LoadedModel | None":
        return self._model()

    def __call__(self, latents: torch.Tensor, index: int = 0, upscale: int = 1) -> Image.Image:
        from . import latents as latents_io

        model = self._model()
        if model is None:
            raise RuntimeError("the model of this preview was unloaded")
        return latents_io.decode(model, latents[index:index + 1].detach())[0]


def picture(previewer: Any, latents: torch.Tensor) -> Image.Image:
    """The preview picture of the batch's first latent. The colour mix comes at latent size, as AUTOMATIC1111's
    "Approx cheap" does (the page scales it); the decoders' pictures are full size."""
    return (previewer or ApproxPreview())(latents, upscale=1)


def render(progress: "Progress", period_s: float) -> bool:
    """On the job's worker thread, after a step: decode the newest preview latents into `progress.preview_image`
    when someone watched lately and the last picture is at least `period_s` old (and COST_RATIO times its
    decode time). True if it decoded."""
    latents, step = progress.preview_latents, progress.preview_step
    now = time.monotonic()
    if latents is None or step == progress.preview_image_step or now - progress.preview_watched_at > WATCH_SECONDS \
            or now - progress.preview_rendered_at < max(period_s, COST_RATIO * progress.preview_render_seconds):
        return False
    image = picture(progress.previewer, latents)
    progress.preview_rendered_at = done = time.monotonic()
    progress.preview_image, progress.preview_image_step, progress.preview_render_seconds = image, step, done - now
    return True


def watched_image(progress: "Progress") -> tuple[int, Image.Image | None]:
    """For pollers (the page, the API): note that someone watches, and return the newest picture the worker
    decoded with its step. A job run elsewhere (a remote worker) hands a picture decoded there."""
    progress.preview_watched_at = time.monotonic()
    image, step = progress.preview_image, progress.preview_image_step
    if image is None and progress.preview_latents is not None and hasattr(progress.previewer, "image"):
        return progress.preview_step, progress.previewer.image  # workers.messages.DecodedPreview
    return step, image
