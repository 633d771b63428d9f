"""What every API route shares: the app, who is asking, waiting for jobs, progress and previews.

Requests never block a server thread while a job runs: a handler awaits a future the job
queue resolves when the job finishes, and checks every fraction of a second whether the
client is still there. A client that goes away gets its job cancelled (or interrupted, if
it already runs), so an abandoned request never holds up the queue.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..app import Easel
from ..core.jobs import Job, JobState
from ..core.preview import watched_image
from .images import encode_b64
from .security import USER_KEY, current_user

log = logging.getLogger(__name__)
API_OWNER = "api"
OTHER_USERS_JOB = "another user's job is running"


class JobWaiter:
    """Awaitable job completion for async handlers, fed by the queue's finish listener."""

    def __init__(self, queue) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        queue.listeners.append(self._finished)

    def _finished(self, job: Job) -> None:
        with self._lock:
            waiters = self._waiting.pop(job.id, [])
        for loop, future in waiters:
            loop.call_soon_threadsafe(_set_done, future)

    async def wait(self, job: Job, request: Request | None = None, poll: float = 0.25) -> bool:
        """True once the job finished; False if the client disconnected first."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._waiting.setdefault(job.id, []).append((loop, future))
        try:
            while not job.done:
                await asyncio.wait({future}, timeout=poll)
                if job.done:
                    break
                if request is not None and await request.is_disconnected():
                    return False
            return True
        finally:
            with self._lock:
                entries = self._waiting.get(job.id, [])
                self._waiting[job.id] = [e for e in entries if e[1] is not future]
                if not self._waiting[job.id]:
                    del self._waiting[job.id]


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class PreviewCache:
    """The latest live preview as base64 PNG, encoded once per picture however often it is polled. The job's
    worker decodes the picture (core/preview.render) while someone polls; this only encodes and sends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, Any] | None = None
        self._value: str | None = None

    def get(self, job: Job) -> str | None:
        _, image = watched_image(job.progress)
        if image is None:
            return None
        key = (job.id, image)
        with self._lock:
            if self._key is not None and key[0] == self._key[0] and key[1] is self._key[1]:
                return self._value
        try:
            value = encode_b64(image)
        except Exception:  # a preview must never fail a progress request
            log.debug("preview failed", exc_info=True)
            return None
        with self._lock:
            self._key, self._value = key, value
        return value


@dataclass
class ApiContext:
    easel: Easel
    flags: dict[str, Any] = field(default_factory=dict)
    usernames: frozenset[str] = frozenset()
    waiter: JobWaiter | None = None
    previews: PreviewCache = field(default_factory=PreviewCache)

    def __post_init__(self) -> None:
        if self.waiter is None:
            self.waiter = JobWaiter(self.easel.queue)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.usernames)

    def owner(self, request: Request) -> str:
        """Who submits: the logged-in user with --auth, else the one local API user."""
        return request.scope.get(USER_KEY) or API_OWNER

    def may_control(self, request: Request, job: Job) -> bool:
        """Without --auth there is one user; with it, each controls only their own jobs."""
        return not self.auth_enabled or job.owner == self.owner(request)

    def may_see(self, job: Job, request: Request | None = None) -> bool:
        """Whether the asker may see the job's live preview and progress text (with --auth, only its owner).

        Without a request, the asker is the user the auth middleware let in for this request.
        """
        if not self.auth_enabled:
            return True
        asker = self.owner(request) if request is not None else (current_user.get() or API_OWNER)
        return job.owner == asker

    def display_owner(self, owner: str | None) -> str:
        """API users by name; browser sessions only as "ui" (a session id is not for other eyes)."""
        if owner is None:
            return "system"
        if owner == API_OWNER or owner in self.usernames:
            return owner
        return "ui"

    async def wait(self, job: Job, request: Request) -> bool:
        """Wait for `job`; if the client leaves first, cancel or interrupt it and return False."""
        finished = await self.waiter.wait(job, request)
        if not finished:
            log.info("client left; cancelling job %s", job.id)
            self.easel.queue.cancel(job.id)
        return finished


# ---- progress in AUTOMATIC1111's and Easel's shapes ----------------------------------------------


def job_type(job: Job) -> str:
    return job.meta.get("type") or ("txt2img" if job.kind == "generate" else job.kind)


def a1111_state(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    p = job.progress
    job_count = max(p.job_count, 1)
    per_batch = p.total_steps // job_count if p.total_steps else 0
    started = time.localtime(job.started_at or job.submitted_at)
    return {"skipped": False, "interrupted": job.interrupted, "stopping_generation": False,
            "job": job_type(job), "job_count": job_count, "job_timestamp": time.strftime("%Y%m%d%H%M%S", started),
            "job_no": p.job_no, "sampling_step": max(0, p.step - p.job_no * per_batch), "sampling_steps": per_batch}


def a1111_progress(ctx: ApiContext, skip_current_image: bool, request: Request | None = None) -> dict[str, Any]:
    """/sdapi/v1/progress: the job running now, whoever started it (UI, API or CLI).

    With --auth, a user sees only their own job: another user's running job shows as idle
    with a neutral text, never with its preview, prompt text or timings.
    """
    job = ctx.easel.queue.current
    if job is None or job.state != JobState.RUNNING:
        return {"progress": 0.0, "eta_relative": 0.0, "state": a1111_state(None), "current_image": None,
                "textinfo": None}
    if not ctx.may_see(job, request):
        return {"progress": 0.0, "eta_relative": 0.0, "state": a1111_state(None), "current_image": None,
                "textinfo": OTHER_USERS_JOB}
    fraction = min(1.0, 0.01 + job.progress.fraction)
    elapsed = time.time() - (job.started_at or time.time())
    eta = job.progress.eta_seconds
    if eta is None:
        eta = max(0.0, elapsed / fraction - elapsed)
    image = None if skip_current_image else ctx.previews.get(job)
    return {"progress": fraction, "eta_relative": eta, "state": a1111_state(job), "current_image": image,
            "textinfo": job.progress.text or None}


def job_progress(ctx: ApiContext, job: Job, preview: bool, private: bool = False) -> dict[str, Any]:
    """`private`: the asker is not the owner, so no progress text (it can quote the prompt)."""
    p = job.progress
    running = job.state == JobState.RUNNING
    return {"fraction": 1.0 if job.state == JobState.DONE else p.fraction, "step": p.step,
            "total_steps": p.total_steps, "batch": p.job_no, "batch_count": p.job_count,
            "eta_seconds": p.eta_seconds if running else None, "text": "" if private else p.text,
            "preview": ctx.previews.get(job) if preview and running and not private else None}


def job_info(ctx: ApiContext, request: Request, job: Job, preview: bool = False) -> dict[str, Any]:
    mine = job.owner == ctx.owner(request)
    error = None
    if job.error is not None:
        error = str(job.error) if getattr(job.error, "user_facing", False) else f"{type(job.error).__name__}: {job.error}"
    return {"id": job.id, "type": job_type(job), "state": job.state.value,
            "position": ctx.easel.queue.position(job.id), "owner": ctx.display_owner(job.owner), "mine": mine,
            "description": job.description if mine or not ctx.auth_enabled else None,
            "submitted_at": job.submitted_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "progress": job_progress(ctx, job, preview, private=not ctx.may_see(job, request)), "error": error,
            "rerun_of": job.meta.get("rerun_of"),
            "worker": job.meta.get("worker"), "retried": job.meta.get("retried")}
