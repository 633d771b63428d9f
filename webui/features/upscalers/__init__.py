"""Image upscalers: Lanczos, Nearest and model files run through spandrel, tiled.

Public API (stable; hires fix and Extras use it):

    upscalers = easel.upscalers                      # an `Upscalers`, built in app.build()
    upscalers.list_upscalers()  -> ["None", "Lanczos", "Nearest", "4x-UltraSharp", "R-ESRGAN 4x+", ...]
    upscalers.upscale(image, "R-ESRGAN 4x+", scale=2.0)            -> PIL.Image (exact size)
    upscalers.upscale(image, "Lanczos", size=(1024, 768), progress=..., check=job.check)

Importing this package is cheap: torch and PIL only; spandrel is imported on first model use.
"""
from .catalog import BUILTIN, LANCZOS, NEAREST, NONE, UPSCALER_KINDS, UpscalerEntry
from .loading import LoadedUpscaler, UpscalerLoadError
from .service import UnknownUpscalerError, UpscaleError, Upscalers, target_size

__all__ = ["BUILTIN", "LANCZOS", "NEAREST", "NONE", "UPSCALER_KINDS", "LoadedUpscaler", "UnknownUpscalerError",
           "UpscaleError", "UpscalerEntry", "UpscalerLoadError", "Upscalers", "target_size"]
