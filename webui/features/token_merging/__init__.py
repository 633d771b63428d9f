"""Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023) on SD 1.x/2.x/SDXL UNets.

Written here rather than taken from `tomesd`: that package was last released in 2023 and works by
replacing diffusers' transformer-block classes by name. This one is the paper's algorithm
(`matching.py`) installed with forward hooks for one pass's sampling and removed after (`patch.py`),
with AUTOMATIC1111's settings and infotext (`feature.py`).
"""
from .feature import INFOTEXT_KEYS, TokenMergingFeature, pasted_overrides

__all__ = ["INFOTEXT_KEYS", "TokenMergingFeature", "pasted_overrides"]
