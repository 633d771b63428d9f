"""/easel/v1/jobs: submit a generation and get a task id at once; follow, fetch, cancel, run again.

What AUTOMATIC1111 lacks: its API blocks until the image is done and shows one global
progress. Here a POST answers 202 with the job's id and queue position; the queue is
listed with each job's position, state and owner; each job has its own progress and
live preview; a queued or running job can be cancelled. Finished jobs stay in the history
(webui/history, across restarts): `?finished=true` pages through it, a past job's info and
result are answered from it (job_history.py), and `POST /{id}/rerun` submits its request again.
With --auth, results, previews, prompts, cancelling and re-running are the owner's alone.
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
from ..core.request import ValidationError
from ..history import Cursor, HistoryRecord
from ..history.record import FINISHED_STATES, snapshot
from ..history.service import MARK, InputsNotKept, JobHistory
from . import job_history
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
            raise ApiError(404, f"no job with id {job_id!r}")
        return job

    def past(job_id: str) -> HistoryRecord | None:
        """A finished job no longer in memory (from before a restart, or beyond the last 200)."""
        if easel.history is None or easel.queue.get(job_id) is not None:
            return None
        return easel.history.get(job_id)

    def own_past(request: Request, record: HistoryRecord) -> HistoryRecord:
        if not job_history.may_control(ctx, request, record):
            raise ApiError(403, f"job {record.id} belongs to someone else")
        return record

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
        job = await submit_generation(params, body.type, request, params.force_task_id)
        return JSONResponse(job_info(ctx, request, job), status_code=202, headers={"Location": f"{router.prefix}/{job.id}"})

    async def submit_generation(params: m.GenerationFields, kind: str, request: Request,
                                job_id: str | None = None, rerun_of: str | None = None) -> Job:
        try:
            gen = await prepare(ctx, params, kind)
        except ApiError as exc:
            raise _prefixed(exc) from exc
        # a taken id is a 409 only for a request that passed validation (as /sdapi/v1 answers it)
        job = easel.submit(gen, owner=ctx.owner(request), job_id=_task_id(ctx, job_id))
        job.meta.update(type=kind, body=kept_body(params), request=kept_request(gen, params))
        if rerun_of:
            job.meta["rerun_of"] = rerun_of
        return job

    @router.get("", response_model=m.JobList)
    def list_jobs(request: Request, finished: bool = Query(False, description="also list finished jobs (the "
                                                           "history, newest first, across restarts)"),
                  state: str | None = Query(None, description="only jobs in this state"),
                  limit: int = Query(200, ge=1, le=1000, description="finished jobs per page"),
                  before: str | None = Query(None, max_length=200, description="next_before of the previous page")):
        """The queue: what runs now, then what waits, in order (position 0 = running); with `finished`, then
        one page of finished jobs, newest first (`before` pages on; the queue is listed on the first page only)."""
        if state is not None and state not in ("queued", "running", *FINISHED_STATES):
            raise ApiError(422, f"state must be one of queued, running, {', '.join(FINISHED_STATES)}",
                           extra={"field": "state"})
        try:
            cursor = Cursor.parse(before) if before else None
        except ValueError as exc:
            raise ApiError(422, str(exc), extra={"field": "before"}) from exc
        live = easel.queue.jobs()
        jobs = [] if cursor else [j for j in live if not j.state.finished and state in (None, j.state.value)]
        jobs.sort(key=lambda j: (easel.queue.position(j.id) or 0, j.sequence))
        items = [job_info(ctx, request, j) for j in jobs]
        next_before = None
        if finished and state not in ("queued", "running"):
            finished_live = {j.id: j for j in live if j.state.finished}
            if easel.history is not None:
                page, next_before = easel.history.page(limit, cursor, state, finished_live.values())
                unmarked = [j for j in finished_live.values() if MARK not in j.meta  # extras, batches
                            and state in (None, j.state.value) and not cursor]
            else:
                page, unmarked = [], [j for j in finished_live.values() if state in (None, j.state.value)]
            entries = [(r.finished_at, job_info(ctx, request, finished_live[r.id]) if r.id in finished_live
                        else job_history.record_info(ctx, request, r)) for r in page]
            entries += [(j.finished_at or 0.0, job_info(ctx, request, j)) for j in unmarked]
            items += [info for _, info in sorted(entries, key=lambda e: e[0], reverse=True)]
        current = easel.queue.current
        return {"running": current.id if current else None, "queued": len(easel.queue.pending()),
                "limit": easel.queue.limit, "jobs": items, "next_before": next_before}

    @router.get("/{job_id}", response_model=m.JobInfo)
    def get_job(job_id: str, request: Request, preview: bool = Query(False, description="include a live preview")):
        record = past(job_id)
        if record is not None:
            return job_history.record_info(ctx, request, record)
        job = find(job_id)
        return job_info(ctx, request, job, preview=preview and ctx.may_control(request, job))

    @router.get("/{job_id}/result", response_model=m.JobResult)
    async def get_result(job_id: str, request: Request,
                         wait: float = Query(0, ge=0, le=600, description="seconds to wait for the job to finish")):
        """The images, parameters and info of a finished job (409 while it is still queued or running);
        a job from the history answers with the images it saved."""
        record = past(job_id)
        if record is not None:
            return job_history.record_result(own_past(request, record))
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
        if "body" not in job.meta and MARK in job.meta:  # a generation from the UI: what the history keeps of it
            return job_history.record_result(snapshot(job))
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

    @router.post("/{job_id}/rerun", status_code=202, response_model=m.JobInfo)
    async def rerun(job_id: str, request: Request):
        """Queue a past (or current) generation again with the same request; the new job says `rerun_of`.

        A seed of -1 draws a new seed, as it did the first time. An img2img job whose input images were
        not kept (the history keeps none unless the API request set include_init_images) answers 409."""
        record = past(job_id)
        if record is not None:
            own_past(request, record)
        else:
            job = own(request, find(job_id))
            record = snapshot(job) if MARK in job.meta else None
            if record is None:
                raise ApiError(409, f"job {job_id} is not a generation; only txt2img and img2img jobs run again")
        body = record.api_body
        if record.api_type in ("txt2img", "img2img") and body is not None:
            body = body.model_dump(mode="json") if hasattr(body, "model_dump") else dict(body)
            body.pop("force_task_id", None)
            try:
                params = PARAM_MODELS[record.api_type].model_validate(body)
            except pydantic.ValidationError as exc:
                raise ApiError(409, f"job {job_id}'s request is no longer valid: {exc.errors()[0]['msg']}") from exc
            if record.api_type == "img2img" and not getattr(params, "init_images", None):
                raise ApiError(409, str(InputsNotKept(f"job {job_id} had input images, which the history does not "
                                                      "keep (unless the request set include_init_images)")))
            new = await submit_generation(params, record.api_type, request, rerun_of=job_id)
        else:
            try:
                gen = JobHistory.request_of(record)
            except InputsNotKept as exc:
                raise ApiError(409, str(exc)) from exc
            except (TypeError, ValueError) as exc:
                if isinstance(exc, ValidationError):
                    raise
                raise ApiError(409, f"job {job_id}'s stored request is no longer valid: {exc}") from exc
            new = await run_in_threadpool(easel.submit, gen, ctx.owner(request))
            new.meta.update(rerun_of=job_id, tab=record.type)
        return JSONResponse(job_info(ctx, request, new), status_code=202,
                            headers={"Location": f"{router.prefix}/{new.id}"})

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
