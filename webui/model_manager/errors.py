"""Errors the model manager reports to users; light to import (no torch, no diffusers)."""


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says why in user terms."""

    user_facing = True
