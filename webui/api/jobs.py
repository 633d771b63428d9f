"""/easel/v1/jobs: submit a generation and get a task id at once; follow, fetch, cancel.

What AUTOMATIC1111 lacks: its API blocks until the image is done and shows one global
progress. Here a POST answers 202 with the job's id and queue position; the queue is
listed with each job's position, state and owner; each job has its own progress and
live preview; results stay fetchable for the last 200 jobs; a queued or running job can
be cancelled. With --auth, results, previews, prompts and cancelling are the owner's alone.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..core.jobs import Job, JobState
from . import models as m
from .context import ApiContext, job_info
from .history import kept_body, kept_request
from .errors import ApiError
from . import extras as extras_api
from .sdapi import _task_id, generation_response, prepare

PARAM_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "txt2img": m.Txt2ImgRequest, "img2img": m.Img2ImgRequest,
    "extra-single-image": m.ExtrasSingleImageRequest, "extra-batch-images": m.ExtrasBatchImagesRequest,
}


def _validation_error(exc: pydantic.ValidationError, prefix: tuple[str, ...]) -> ApiError:
    detail = [{"loc": [*prefix, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return ApiError(422, detail)


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1/jobs", tags=["jobs"])
    easel = ctx.easel

    def find(job_id: str) -> Job:
        job = easel.queue.get(job_id)
        if job is None:
            raise ApiError(404, f"no job with id {job_id!r} (finished jobs are kept for the last 200)")
        return job

    def own(request: Request, job: Job) -> Job:
        if not ctx.may_control(request, job):
            raise ApiError(403, f"job {job.id} belongs to someone else")
        return job

    @router.post("", status_code=202, response_model=m.JobInfo)
    async def submit(body: m.JobSubmit, request: Request):
        """Queue a generation; `params` is the body the matching /sdapi/v1 endpoint takes."""
        model = PARAM_MODELS[body.type]
        try:
            params = model.model_validate(body.params)
        except pydantic.ValidationError as exc:
            raise _validation_error(exc, ("body", "params")) from exc
        if body.type.startswith("extra"):
            try:
                job = await extras_api.submit_extras(ctx, request, params, body.type)
            except ApiError as exc:
                raise _prefixed(exc) from exc
            return JSONResponse(job_info(ctx, request, job), status_code=202,
                                headers={"Location": f"{router.prefix}/{job.id}"})
        try:
            gen = await prepare(ctx, params, body.type)
        except ApiError as exc:
            raise _prefixed(exc) from exc
        job = easel.submit(gen, owner=ctx.owner(request), job_id=_task_id(ctx, params.force_task_id))
        job.meta.update(type=body.type, body=kept_body(params), request=kept_request(gen, params))
        return JSONResponse(job_info(ctx, request, job), status_code=202, headers={"Location": f"{router.prefix}/{job.id}"})

    @router.get("", response_model=m.JobList)
    def list_jobs(request: Request, finished: bool = Query(False, description="also list finished jobs")):
        """The queue: what runs now, then what waits, in order (position 0 = running)."""
        jobs = [j for j in easel.queue.jobs() if finished or not j.state.finished]
        jobs.sort(key=lambda j: (j.state.finished, easel.queue.position(j.id) if not j.state.finished else 0,
                                 j.sequence))
        current = easel.queue.current
        return {"running": current.id if current else None, "queued": len(easel.queue.pending()),
                "limit": easel.queue.limit, "jobs": [job_info(ctx, request, j) for j in jobs]}

    @router.get("/{job_id}", response_model=m.JobInfo)
    def get_job(job_id: str, request: Request, preview: bool = Query(False, description="include a live preview")):
        job = find(job_id)
        return job_info(ctx, request, job, preview=preview and ctx.may_control(request, job))

    @router.get("/{job_id}/result", response_model=m.JobResult)
    async def get_result(job_id: str, request: Request,
                         wait: float = Query(0, ge=0, le=600, description="seconds to wait for the job to finish")):
        """The images, parameters and info of a finished job (409 while it is still queued or running)."""
        job = own(request, find(job_id))
        if wait and not job.done:
            try:
                await asyncio.wait_for(ctx.waiter.wait(job, request), timeout=wait)
            except asyncio.TimeoutError:
                pass
        if not job.done:
            raise ApiError(409, f"job {job.id} is {job.state.value}; try again later",
                           headers={"Retry-After": "1"}, extra={"state": job.state.value})
        if job.state == JobState.CANCELLED:
            return {"id": job.id, "state": job.state.value, "images": [], "parameters": _parameters(job), "info": "{}",
                    "warnings": ["cancelled before it ran"]}
        if "body" not in job.meta and job.meta.get("restored"):
            raise ApiError(410, f"job {job.id} was queued again after a restart; its images were saved to the "
                                "outputs folder, not kept for this request", extra={"state": job.state.value})
        if "body" not in job.meta:
            raise ApiError(404, f"job {job.id} is not a generation")
        if "extras_sources" in job.meta:
            return await run_in_threadpool(_extras_result, job)
        response = await run_in_threadpool(generation_response, ctx, job)
        return {"id": job.id, "state": job.state.value, "warnings": list(job.result.warnings), **response}

    @router.delete("/{job_id}", response_model=m.JobInfo)
    def cancel(job_id: str, request: Request):
        """Cancel a queued job, or interrupt a running one (its finished images are kept)."""
        job = own(request, find(job_id))
        easel.queue.cancel(job.id)
        return job_info(ctx, request, job)

    @router.post("/{job_id}/skip", response_model=m.JobInfo)
    def skip(job_id: str, request: Request):
        """Drop the batch being sampled and go on with the next one."""
        job = own(request, find(job_id))
        if job.state == JobState.RUNNING:
            job.skip()
        return job_info(ctx, request, job)

    return router


def _extras_result(job: Job) -> dict[str, Any]:
    """An extras job in the jobs API's result shape: `images` always a list, `info` the html_info text."""
    response = extras_api.extras_response(job)
    images = response.get("images", [response["image"]] if response.get("image") else [])
    parameters = job.meta["body"].model_dump(mode="json", exclude={"image", "imageList"})  # not the input images
    return {"id": job.id, "state": job.state.value, "images": images, "parameters": parameters,
            "info": json.dumps({"html_info": response["html_info"]}), "warnings": list(job.result.warnings)}


def _parameters(job: Job) -> dict[str, Any]:
    body = job.meta.get("body")
    return body.model_dump(mode="json") if body is not None else {}


def _prefixed(exc: ApiError) -> ApiError:
    """Field errors of `params` point into it: ["body", "params", field]."""
    if exc.status == 422 and isinstance(exc.detail, list):
        for item in exc.detail:
            loc = item.get("loc", [])
            if loc[:1] == ["body"]:
                item["loc"] = ["body", "params", *loc[1:]]
    if exc.extra.get("field"):
        exc.extra["field"] = f"params.{exc.extra['field']}"
    return exc
