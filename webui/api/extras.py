"""/sdapi/v1 extras: upscale and restore faces through the same ExtrasService the Extras tab uses.

AUTOMATIC1111's routes and shapes: `extra-single-image` answers `{"html_info", "image"}`,
`extra-batch-images` answers `{"html_info", "images"}`, each image a base64 PNG that keeps the
source's `parameters` and adds `postprocessing`. Like A1111's API, results are returned and
not saved (the tab saves). Stricter than A1111: every image is decoded and checked before
anything is queued, and a bad one is a 422 naming it (`imageList.3.data`), never a 500.
"""
from __future__ import annotations

import base64
import html
import re
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..core.image_input import max_megapixels
from ..core.images import read_infotext
from ..core.jobs import Job, JobState
from ..core.request import FieldError, ValidationError
from ..features.extras import ExtrasInput, ExtrasRequest, ExtrasResult, encode_extras
from ..features.faces import RESTORERS
from ..features.upscalers.catalog import BUILTIN
from . import models as m
from .context import ApiContext
from .errors import ApiError, field_errors, job_error
from .images import decode_image

_SCALE_IN_NAME = re.compile(r"(?:^|[^0-9a-z])(?:(\d)x|x(\d))(?:[^0-9a-z]|$)", re.IGNORECASE)


def scale_from_name(name: str) -> float | None:
    """A model upscaler's factor as its name states it ("4x-UltraSharp", "RealESRGAN_x2plus"); None if unstated.

    Reading the real factor means loading the network; a listing must not do that for every file.
    """
    found = _SCALE_IN_NAME.search(name)
    if not found:
        return None
    return float(found.group(1) or found.group(2))


def upscaler_items(ctx: ApiContext) -> list[dict[str, Any]]:
    """AUTOMATIC1111's upscaler list: built-ins first, then model files (names relative to models/, never paths)."""
    items: list[dict[str, Any]] = [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                                    "scale": None} for name in BUILTIN]
    models_root = ctx.easel.paths.models_dir
    for entry in ctx.easel.upscalers.entries():
        try:
            relative = entry.path.resolve().relative_to(models_root.resolve()).as_posix()
        except ValueError:
            relative = entry.path.name
        items.append({"name": entry.name, "model_name": entry.path.stem, "model_path": relative, "model_url": None,
                      "scale": scale_from_name(entry.name) or scale_from_name(entry.path.stem)})
    return items


def face_restorer_items(ctx: ApiContext) -> list[dict[str, Any]]:
    """Restorers whose model file is installed (cmd_dir is a server path in A1111: always null here)."""
    installed = set(ctx.easel.faces.available())
    return [{"name": name, "cmd_dir": None} for name in RESTORERS if name in installed]


def realesrgan_items(ctx: ApiContext) -> list[dict[str, Any]]:
    """Model upscalers found in the RealESRGAN folder, as A1111's realesrgan-models lists them."""
    return [{"name": e.name, "path": None, "scale": int(scale_from_name(e.name) or 4)}
            for e in ctx.easel.upscalers.entries() if e.kind == "realesrgan"]


def to_extras_request(body: m.ExtrasBaseRequest) -> ExtrasRequest:
    fields = set(ExtrasRequest.field_names()) - {"save_images"}
    values = {name: getattr(body, name) for name in fields if hasattr(body, name)}
    return ExtrasRequest(**values, save_images=False)


def _decode_all(ctx: ApiContext, sources: list[tuple[str, str, str]]) -> list[ExtrasInput]:
    """Decode every (field, base64, name) before queueing, so one bad image fails the request up front."""
    limit = max_megapixels(ctx.easel.settings)
    allow_urls = bool(ctx.easel.settings.get("api_enable_requests"))
    return [ExtrasInput(decode_image(field, data, allow_urls=allow_urls, max_megapixels=limit), name)
            for field, data, name in sources]


def _encode(result: ExtrasResult, parameters: dict[str, str | None]) -> list[str]:
    """Each result as base64 PNG, keeping its source's `parameters` text."""
    encoded = []
    for image, text, name in zip(result.images, result.infotexts, result.names):
        data = encode_extras(image, "png", text, parameters.get(name))
        encoded.append(base64.b64encode(data).decode("ascii"))
    return encoded


def _html_info(result: ExtrasResult) -> str:
    lines = [*result.infotexts, *result.warnings]
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def sources_of(kind: str, body: m.ExtrasBaseRequest) -> list[tuple[str, str, str]]:
    """(field, base64 data, name) for each image of a single or batch request."""
    if kind == "extra-single-image":
        return [("image", body.image, "image")]
    if not body.imageList:
        raise field_errors([FieldError("imageList", "give at least one image")])
    sources = [(f"imageList.{i}.data", item.data, item.name or f"image {i + 1}")
               for i, item in enumerate(body.imageList)]
    names = [name for _, _, name in sources]
    if len(set(names)) != len(names):  # results are matched back by name
        sources = [(field, data, f"{i:05}-{name}") for i, (field, data, name) in enumerate(sources)]
    return sources


async def submit_extras(ctx: ApiContext, request: Request, body: m.ExtrasBaseRequest, kind: str) -> Job:
    """Decode and validate everything (422 naming the field), then queue on the shared job queue."""
    sources = sources_of(kind, body)
    extras = to_extras_request(body)
    inputs = await run_in_threadpool(_decode_all, ctx, sources)
    try:
        ctx.easel.extras.validate(extras, inputs, [field for field, _, _ in sources])
    except ValidationError as exc:
        raise field_errors(exc.errors) from exc
    job = ctx.easel.extras.submit(ctx.easel.queue, extras, inputs, owner=ctx.owner(request))
    # the history keeps names, fields and the sources' parameters text, not the images (see history.py)
    kept = body.model_copy(update={"image": ""} if kind == "extra-single-image" else {"imageList": []})
    job.meta.update(type=kind, body=kept, extras_sources=[(field, "", name) for field, _, name in sources],
                    extras_parameters={item.name: read_infotext(item.source) for item in inputs})
    return job


def extras_response(job: Job) -> dict[str, Any]:
    """A finished extras job in A1111's shape (`image` for single, `images` for batch); raises ApiError."""
    if job.state == JobState.CANCELLED or (job.error is None and job.result is None):
        raise ApiError(409, "the job was cancelled before it ran")
    if job.error is not None:
        raise job_error(job.error)
    result: ExtrasResult = job.result
    sources = job.meta["extras_sources"]
    if result.failures and not result.images:
        name, why = result.failures[0]
        raise field_errors_for(sources, name, why)
    body = job.meta["body"]
    images = _encode(result, job.meta["extras_parameters"]) if body.show_extras_results else []
    if job.meta["type"] == "extra-single-image":
        return {"html_info": _html_info(result), "image": images[0] if images else ""}
    return {"html_info": _html_info(result), "images": images}


async def run_extras(ctx: ApiContext, request: Request, body: m.ExtrasBaseRequest, kind: str) -> dict[str, Any]:
    """The blocking /sdapi/v1 routes: submit, wait (a client that leaves cancels its job), answer."""
    job = await submit_extras(ctx, request, body, kind)
    if not await ctx.wait(job, request):
        raise ApiError(499, "client closed the request; the job was cancelled")
    return await run_in_threadpool(extras_response, job)


def field_errors_for(sources: list[tuple[str, str, str]], name: str, why: str) -> ApiError:
    """422 on the field that carried the image called `name`."""
    field = next((f for f, _, n in sources if n == name), "image")
    return field_errors([FieldError(field, why)])
