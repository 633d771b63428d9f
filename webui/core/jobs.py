"""The job queue: one worker per device, task ids, progress, interrupt and skip.

Every generation (UI, API, CLI) and every model switch is a Job run by the single worker
thread, in submission order, so requests never race for the GPU or the loaded model.
Callers get a Job back at once and can poll `progress`, wait for the result, cancel a
queued job, or interrupt/skip a running one. The worker checks the flags at every
sampling step, and the UNet's blocks check them inside a step (`step_interrupt`), so an
interrupt takes effect within one block of the model.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from .out_of_memory import DeviceOutOfMemory, drop_frames, job_out_of_memory, release_device_memory

log = logging.getLogger(__name__)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Interrupted(Exception):
    """Raised inside a job when the user pressed Interrupt."""


class Skipped(Exception):
    """Raised inside a job when the user pressed Skip: drop the current batch, go on."""


class QueueFullError(RuntimeError):
    user_facing = True

    def __init__(self, size: int):
        super().__init__(f"the queue is full ({size} jobs waiting); try again shortly")
        self.size = size


class NotOwnerError(PermissionError):
    """Someone tried to cancel a job that belongs to another user or session."""

    user_facing = True


@dataclass
class Progress:
    """What a running job reports; read by UI pollers and the API without locking."""

    step: int = 0
    total_steps: int = 0
    job_no: int = 0          # batch (of batch count) being sampled, 0-based
    job_count: int = 0
    text: str = ""
    started_at: float | None = None
    # latest latents/denoised estimate for live previews
    preview_latents: Any = None
    preview_step: int = -1
    # turns preview_latents into a picture (core/preview: ApproxPreview or TinyVaePreview), for
    # the model being sampled; set by the engine when the job's model is known
    previewer: Any = None
    # preview_latents as a picture, decoded on the job's worker thread while someone watches (core/preview.render:
    # at most once per live_preview_refresh_period); pollers only send it (core/preview.watched_image)
    preview_image: Any = None
    preview_image_step: int = -1
    preview_watched_at: float = float("-inf")   # time.monotonic() of the latest poller's look
    preview_rendered_at: float = float("-inf")
    preview_render_seconds: float = 0.0         # how long the latest decode took

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.started_at or not self.step or not self.total_steps:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / self.step * max(self.total_steps - self.step, 0)


@dataclass
class Job:
    """One unit of work. `run` receives the job itself to report progress and check flags."""

    run: Callable[["Job"], Any]
    kind: str = "generate"
    owner: str | None = None
    description: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    sequence: int = 0
    # what the way in that submitted the job wants to remember about it (API request type, parameters)
    meta: dict[str, Any] = field(default_factory=dict)
    # what another process needs to run this job (webui/workers: a RemoteTask); None = runs only in this one
    remote: Any = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _interrupt: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)

    # ---- called by the running job ----------------------------------------------------------

    def check(self) -> None:
        """Raise Interrupted/Skipped if the user asked; call once per step."""
        if self._interrupt.is_set():
            raise Interrupted()
        if self._skip.is_set():
            self._skip.clear()
            raise Skipped()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def report(self, step: int | None = None, total: int | None = None, text: str | None = None,
               preview: Any = None) -> None:
        p = self.progress
        if total is not None:
            p.total_steps = total
        if step is not None:
            p.step = step
        if text is not None:
            p.text = text
        if preview is not None:
            p.preview_latents = preview
            p.preview_step = p.step

    # ---- called by anyone ---------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()


class JobQueue:
    """FIFO of jobs with one worker thread.

    `max_size` bounds waiting jobs (0 = no bound); it may be a callable read at every
    submit, so a setting can change the bound while the app runs.
    """

    def __init__(self, max_size: int | Callable[[], int] = 0, history: int = 200, archive: Any = None):
        """`archive`: where finished jobs' images go (a ResultArchive: `keep(job)` and `drop(job)`), or None."""
        self.max_size = max_size
        self.archive = archive
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._history = history
        self._current: Job | None = None
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._counter = itertools.count(1)
        self.listeners: list[Callable[[Job], None]] = []

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._cv:
            if self._thread and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="easel-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            for job in self._pending:
                self._finish(job, JobState.CANCELLED)
            self._pending.clear()
            if self._current:
                self._current.interrupt()
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout)

    # ---- submitting and inspecting ----------------------------------------------------------------

    @property
    def limit(self) -> int:
        """The current bound on waiting jobs (0 = none)."""
        value = self.max_size() if callable(self.max_size) else self.max_size
        return max(0, int(value or 0))

    def submit(self, run: Callable[[Job], Any], *, kind: str = "generate", owner: str | None = None,
               description: str = "", job_id: str | None = None, remote: Any = None) -> Job:
        """Queue `run`; raises QueueFullError when full, ValueError when `job_id` is already taken."""
        job = Job(run=run, kind=kind, owner=owner, description=description, remote=remote)
        if job_id is not None:
            job.id = job_id
        with self._cv:
            if self._stopping:
                raise RuntimeError("the queue is shutting down")
            limit = self.limit
            if limit and len(self._pending) >= limit:
                raise QueueFullError(len(self._pending))
            if job.id in self._jobs:
                raise ValueError(f"a job with id {job.id!r} already exists")
            job.sequence = next(self._counter)
            self._pending.append(job)
            self._jobs[job.id] = job
            self._trim_history()
            self._cv.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cv:
            return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def stopping(self) -> bool:
        """True once `stop` began: jobs finishing now end because the process does, not because anyone asked."""
        return self._stopping

    @property
    def worker(self) -> threading.Thread | None:
        """The thread that runs the jobs (None before `start`)."""
        return self._thread

    def pending(self) -> list[Job]:
        with self._cv:
            return list(self._pending)

    def jobs(self) -> list[Job]:
        with self._cv:
            return sorted(self._jobs.values(), key=lambda j: j.sequence)

    def position(self, job_id: str) -> int | None:
        """0 = running now, 1 = next, ...; None when finished or unknown."""
        with self._cv:
            if self._current and self._current.id == job_id:
                return 0
            for index, job in enumerate(self._pending, start=1):
                if job.id == job_id:
                    return index
        return None

    def cancel(self, job_id: str, owner: str | None = None) -> bool:
        """Cancel a queued job, or interrupt it if already running. False if unknown/finished.

        With `owner`, only that owner's jobs may be cancelled (NotOwnerError otherwise).
        """
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job.state.finished:
                return False
            if owner is not None and job.owner != owner:
                raise NotOwnerError(f"job {job_id} belongs to someone else")
            if job.state == JobState.QUEUED:
                self._pending.remove(job)
                self._finish(job, JobState.CANCELLED)
                return True
        job.interrupt()
        return True

    def interrupt_current(self) -> Job | None:
        job = self._current
        if job:
            job.interrupt()
        return job

    def skip_current(self) -> Job | None:
        job = self._current
        if job:
            job.skip()
        return job

    def run_sync(self, run: Callable[[Job], Any], **kwargs: Any) -> Any:
        """Submit, wait, and return the result or raise the job's error (for the CLI and tests)."""
        job = self.submit(run, **kwargs)
        job.wait()
        if job.error is not None:
            raise job.error
        return job.result

    # ---- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._current = job
                job.state = JobState.RUNNING
                job.started_at = time.time()
                job.progress.started_at = time.monotonic()
            state, out_of_memory = JobState.DONE, None
            try:
                job.result = job.run(job)
                if job.interrupted:
                    state = JobState.INTERRUPTED
            except Interrupted:
                state = JobState.INTERRUPTED
            except Exception as exc:  # reported to the caller, never kills the worker
                out_of_memory = job_out_of_memory(exc, f"{job.kind} ({job.description})" if job.description
                                                  else job.kind)
                job.error = out_of_memory or exc
                state = JobState.FAILED
                if not getattr(job.error, "user_facing", False):
                    log.exception("job %s failed", job.id)
            if out_of_memory is not None or isinstance(job.error, DeviceOutOfMemory):
                drop_frames(job.error)  # the message is all a client gets; the frames hold the job's tensors
                release_device_memory()
            with self._cv:
                self._current = None
                self._finish(job, state)
            self._retire(job)

    def _retire(self, job: Job) -> None:
        """After the waiters were woken: drop what the job ran with, and move its images out of memory."""
        job.run = _spent
        if self.archive is not None and job.result is not None:
            try:
                self.archive.keep(job)
            except Exception:
                log.exception("job %s: could not archive its results", job.id)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished_at = time.time()
        job.progress.preview_latents = job.progress.preview_image = None
        job._done.set()
        for listener in list(self.listeners):
            try:
                listener(job)
            except Exception:
                log.exception("job listener failed")

    def _trim_history(self) -> None:
        finished = [j for j in self._jobs.values() if j.state.finished]
        for job in sorted(finished, key=lambda j: j.sequence)[: max(0, len(finished) - self._history)]:
            del self._jobs[job.id]
            if self.archive is not None:
                self.archive.drop(job)


def _spent(job: Job) -> None:
    """What a finished job's `run` becomes: the closure (and the inputs it held) is released."""
    raise RuntimeError(f"job {job.id} has already run")
