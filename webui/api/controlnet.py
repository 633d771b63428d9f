"""The ControlNet extension's HTTP routes (`/controlnet/...`), so its API clients work unchanged.

Generation itself needs no route of its own: units travel in `alwayson_scripts.controlnet`
of `/sdapi/v1/txt2img` and `img2img`. These routes list models and modules and run a
preprocessor on its own (`detect`). Images are base64 in and out, never paths. A detect
runs as a job on the queue like everything else that computes, so it never races a
generation for the CPU/GPU or blocks a server thread.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..core.jobs import Interrupted
from ..features.controlnet import choices
from ..features.controlnet.preprocessors import PREPROCESSORS, PreprocessorError, run_preprocessor
from ..features.controlnet.units import SCRIPT, parse_units
from .context import ApiContext
from .errors import ApiError, job_error

API_VERSION = 2  # what the extension's /controlnet/version answers; clients check it


class DetectRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # thresholds become ints in the annotators

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


def controlnet_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/controlnet", tags=["controlnet"])
    easel = ctx.easel

    @router.get("/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @router.get("/settings")
    def settings() -> dict[str, Any]:
        return {"control_net_unit_count": easel.settings.settings.control_net_unit_count}

    @router.get("/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        """Every ControlNet / T2I-Adapter / IP-Adapter as `name [hash]`, the extension's titles."""
        titles = [info.title for info in easel.controlnets.all()]
        titles += [f"{name} [{hash_}]" for name, hash_ in easel.ip_adapters.titles()]
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
    async def detect(body: DetectRequest, request: Request) -> dict[str, Any]:
        if body.controlnet_module not in PREPROCESSORS:
            raise _field_error("controlnet_module", f"unknown module {body.controlnet_module!r}; "
                                                    f"see /controlnet/module_list")
        if not body.controlnet_input_images:
            raise _field_error("controlnet_input_images", "give at least one base64 image")
        images = await run_in_threadpool(
            lambda: [_decode(i, value) for i, value in enumerate(body.controlnet_input_images)])
        # the extension's clients send -1 (or nothing) for "the module's default"
        a, b = (v if v is not None and v >= 0 else None for v in (body.controlnet_threshold_a,
                                                                    body.controlnet_threshold_b))

        def run(job) -> list[str]:
            results = []
            for index, image in enumerate(images):
                if job.interrupted:
                    raise Interrupted()
                job.report(step=index, total=len(images), text=f"{body.controlnet_module}: image {index + 1}")
                detected = run_preprocessor(body.controlnet_module, np.asarray(image.convert("RGB")),
                                            body.controlnet_processor_res, a, b, easel.annotators_dir,
                                            easel.models.store)
                results.append(_b64_png(detected))
            return results

        job = easel.queue.submit(run, kind="controlnet-detect", owner=ctx.owner(request),
                                 description=f"detect {body.controlnet_module}")
        if not await ctx.wait(job, request):
            raise ApiError(499, "client closed the request; the detect job was cancelled")
        if isinstance(job.error, PreprocessorError):  # a missing annotator file, a bad threshold
            raise _field_error("controlnet_module", str(job.error))
        if job.error is not None:
            raise job_error(job.error)
        if job.result is None:  # cancelled or interrupted before it produced anything
            raise ApiError(409, f"the detect job was {job.state.value} before it finished")
        return {"images": job.result, "info": "Success"}

    return router
