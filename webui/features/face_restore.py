"""Restore faces while generating (AUTOMATIC1111's `restore_faces`), with Extras' restorers.

After each batch is decoded, every image goes through the same pipeline the Extras tab uses
(features/faces: detect, align, restore with the model file in models/Codeformer or
models/GFPGAN, paste back). Which model, and CodeFormer's weight, are the settings AUTOMATIC1111
has for this (`face_restoration_model`, `code_former_weight`), so `override_settings` can pick
them per request. It runs before img2img's paste-back, as in AUTOMATIC1111. The infotext says
`Face restoration: CodeFormer`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from ..core.pipeline import Batch, Feature, Run
from ..core.request import FieldError, GenerationRequest
from .faces import FaceRestoreError, FaceRestorers

INFOTEXT_KEY = "Face restoration"


@dataclass(frozen=True)
class RestoreChoice:
    model: str            # "CodeFormer" or "GFPGAN"
    codeformer_weight: float


class FaceRestoration(Feature):
    name = "face_restoration"

    def __init__(self, restorers: FaceRestorers, setting: Callable[[str], Any]):
        self.restorers = restorers
        self.setting = setting   # a saved setting's value (the request's override_settings come first)

    def parse(self, request: GenerationRequest) -> tuple[RestoreChoice | None, list[FieldError]]:
        """The model and weight when `restore_faces` is on; an error when that model is not installed."""
        if request.restore_faces is not True:
            return None, []
        overrides = request.override_settings if isinstance(request.override_settings, dict) else {}
        pick = lambda key: overrides.get(key, self.setting(key))  # noqa: E731
        choice = RestoreChoice(str(pick("face_restoration_model")), float(pick("code_former_weight")))
        try:
            if self.restorers.model_file(choice.model) is None:
                folder = "models/GFPGAN" if choice.model == "GFPGAN" else "models/Codeformer"
                return None, [FieldError("restore_faces", f"no {choice.model} model installed: put its .safetensors "
                                                          f"file into {folder} (Settings → Face restoration picks "
                                                          f"the model)")]
        except FaceRestoreError as exc:
            return None, [FieldError("restore_faces", str(exc))]
        return choice, []

    def finish_images(self, run: Run, batch: Batch, images: list[Image.Image], latents: Any) -> list[Image.Image]:
        choice: RestoreChoice | None = run.args.get(self.name)
        if choice is None:
            return images
        run.job.report(text="restoring faces")
        return [self.restorers.restore(image, choice.model, choice.codeformer_weight, check=run.job.check).image
                for image in images]

    def infotext(self, run: Run) -> dict[str, Any]:
        choice: RestoreChoice | None = run.args.get(self.name)
        return {INFOTEXT_KEY: choice.model} if choice is not None else {}
