"""Follow a queued job from a Gradio event: progress, live preview, then results.

Gradio calls the generate handler in a thread; the handler submits to Easel's job queue
and yields updates every few hundred milliseconds until the job ends. Which job belongs
to which browser session is remembered here, so Interrupt and Skip act on your own job.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from ..app import Easel
from ..core.jobs import Job, JobState, QueueFullError
from ..core.preview import watched_image
from ..core.request import Result, ValidationError
from .common import error_html, format_seconds, info_html, progress_html

POLL_SECONDS = 0.25


@dataclass
class SessionJobs:
    """session hash -> id of that session's latest job."""

    _jobs: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, session: str, job_id: str) -> None:
        with self._lock:
            self._jobs[session] = job_id

    def get(self, session: str) -> str | None:
        with self._lock:
            return self._jobs.get(session)


@dataclass
class Update:
    """One yield to the UI; None fields mean "leave as is"."""

    progress: str | None = None
    preview: Any = None
    gallery: Any = None
    info: str | None = None
    infotexts: list[str] | None = None
    seed: int | None = None

    def as_tuple(self) -> tuple:
        def keep(value: Any) -> Any:
            return gr.skip() if value is None else value
        return (keep(self.progress), keep(self.preview), keep(self.gallery), keep(self.info),
                keep(self.infotexts), keep(self.seed))


def _status_text(easel: Easel, job: Job) -> tuple[float, str]:
    if job.state == JobState.QUEUED:
        position = easel.queue.position(job.id)
        loading = loading_text(easel.queue.current)
        if loading:
            return 0.0, loading + (" Your generation is next." if position == 1 else
                                   f" Your generation waits in queue (position {position})." if position else "")
        return 0.0, f"Waiting in queue (position {position})" if position else "Waiting in queue"
    p = job.progress
    text = p.text if p.step == 0 and p.text else f"Step {p.step}/{p.total_steps}"
    if p.job_count > 1:
        text += f" · batch {p.job_no + 1}/{p.job_count}"
    if p.step:
        text += f" · ETA {format_seconds(p.eta_seconds)}"
    return p.fraction, text


def loading_text(running: Job | None) -> str | None:
    """What a waiting generation says while a checkpoint loads ahead of it (the warm-up after start-up
    loads the selected one first), else None."""
    if running is None or running.kind != "load-model":
        return None
    detail = running.progress.text
    return f"Loading the model{f' ({detail})' if detail else ''}…"


def follow(easel: Easel, submit: Callable[[], Job], sessions: SessionJobs, session: str,
) -> Iterator[tuple]:
    """Submit via `submit()` and yield UI updates until the job finishes."""
    try:
        job = submit()
    except ValidationError as exc:
        yield Update(progress="", info=error_html("\n".join(str(e) for e in exc.errors))).as_tuple()
        return
    except QueueFullError as exc:
        yield Update(progress="", info=error_html(str(exc))).as_tuple()
        return
    sessions.set(session, job.id)
    shown = None
    # A1111's setting live_preview_refresh_period: the job's worker decodes a preview at most that often, and only
    # while someone polls (core/preview.render); this handler only sends the newest picture, never runs torch
    yield Update(progress=progress_html(0, "Queued"), preview=gr.update(value=None, visible=True), info="").as_tuple()
    while not job.wait(POLL_SECONDS):
        fraction, text = _status_text(easel, job)
        update = Update(progress=progress_html(fraction, text))
        _, image = watched_image(job.progress)
        if image is not None and image is not shown:
            shown = update.preview = image
        yield update.as_tuple()
    yield finished_update(job).as_tuple()


def finished_update(job: Job) -> Update:
    hide_preview = gr.update(value=None, visible=False)
    if job.state == JobState.CANCELLED:
        return Update(progress="", preview=hide_preview, info=error_html("Cancelled."))
    if job.error is not None:
        return Update(progress="", preview=hide_preview, info=error_html(_error_message(job.error)))
    result: Result = job.result
    # a job that made no image (interrupted before its first step, every batch skipped) leaves the
    # pictures the user already has in the gallery
    gallery = [(p, None) for p in result.paths] if result.paths else (list(result.images) or None)
    notes = list(dict.fromkeys(result.warnings))  # a script's cells repeat the same warning: show it once
    if result.interrupted:
        notes.append(f"Interrupted: kept {len(result.images)} image(s)"
                     + (" (the last one partly denoised)." if result.images else "."))
    if result.skipped_batches:
        notes.append(f"Skipped {result.skipped_batches} batch(es).")
    seconds = result.timings.get("total")
    footer = f"\nTime taken: {seconds:.2f}s" if seconds is not None else ""
    first = result.infotexts[0] + footer if result.infotexts else ""
    return Update(progress="", preview=hide_preview, gallery=gallery, info=info_html(first, notes),
                  infotexts=list(result.infotexts), seed=result.seeds[0] if result.seeds else None)


def _error_message(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return "\n".join(str(e) for e in error.errors)
    text = str(error) or type(error).__name__
    if getattr(error, "user_facing", False):
        return text
    return f"Generation failed: {text}"
