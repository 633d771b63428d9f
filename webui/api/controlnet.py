"""The ControlNet extension's HTTP routes (`/controlnet/...`), so its API clients work unchanged.

Generation itself needs no route of its own: units travel in `alwayson_scripts.controlnet`
of `/sdapi/v1/txt2img` and `img2img`. These routes list models and modules and run a
preprocessor on its own (`detect`). Images are base64 in and out, never paths.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException
from PIL import Image
from pydantic import BaseModel, Field

from ..app import Easel
from ..features.controlnet import choices
from ..features.controlnet.preprocessors import PREPROCESSORS, PreprocessorError, run_preprocessor
from ..features.controlnet.units import SCRIPT, parse_units

API_VERSION = 2  # what the extension's /controlnet/version answers; clients check it


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = Field(512, ge=64, le=4096)
    controlnet_threshold_a: float | None = None
    controlnet_threshold_b: float | None = None


def _field_error(field: str, message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": ["body", *field.split(".")], "msg": message,
                                                    "type": "value_error"}])


def _b64_png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decode(index: int, value: str) -> Image.Image:
    """One input image through the same checked decoder the units use."""
    units, errors = parse_units({SCRIPT: {"args": [{"image": value}]}})
    if errors:
        raise _field_error(f"controlnet_input_images.{index}", errors[0].message)
    return units[0].image


def controlnet_router(easel: Easel) -> APIRouter:
    router = APIRouter(prefix="/controlnet", tags=["controlnet"])

    @router.get("/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/settings")
    def settings() -> dict[str, Any]:
        return {"control_net_unit_count": easel.settings.settings.control_net_unit_count}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        """Every ControlNet / T2I-Adapter / IP-Adapter as `name [hash]`, the extension's titles."""
        engine = easel.engine
        titles = [info.title for info in engine.controlnets.all()]
        titles += [f"{name} [{hash_}]" for name, hash_ in engine.ip_adapters.titles()]
        return {"model_list": sorted(titles, key=str.lower)}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        detail = {}
        for name, pre in PREPROCESSORS.items():
            sliders = [{"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}]
            for spec in (pre.threshold_a, pre.threshold_b):
                if spec is not None:
                    sliders.append({"name": spec[0], "value": spec[1], "min": spec[2], "max": spec[3]})
            detail[name] = {"model_free": name == "none", "sliders": sliders, "label": pre.label,
                            "annotator_files": list(pre.files)}
        names = [PREPROCESSORS[n].label for n in choices.module_names()] if alias_names else choices.module_names()
        return {"module_list": names, "module_detail": detail}

    @router.post("/detect")
    def detect(body: DetectRequest) -> dict[str, Any]:
        if body.controlnet_module not in PREPROCESSORS:
            raise _field_error("controlnet_module", f"unknown module {body.controlnet_module!r}; "
                                                    f"see /controlnet/module_list")
        if not body.controlnet_input_images:
            raise _field_error("controlnet_input_images", "give at least one base64 image")
        images = [_decode(i, value) for i, value in enumerate(body.controlnet_input_images)]
        # the extension's clients send -1 (or nothing) for "the module's default"
        a, b = (v if v is not None and v >= 0 else None for v in (body.controlnet_threshold_a,
                                                                    body.controlnet_threshold_b))
        results = []
        for image in images:
            try:
                detected = run_preprocessor(body.controlnet_module, np.asarray(image.convert("RGB")),
                                            body.controlnet_processor_res, a, b, easel.engine.annotators_dir)
            except PreprocessorError as exc:
                raise _field_error("controlnet_module", str(exc))
            results.append(_b64_png(detected))
        return {"images": results, "info": "Success"}

    return router
