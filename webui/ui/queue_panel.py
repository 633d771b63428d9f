"""The queue, as everyone shares it: what runs now, what waits, where your jobs are.

The same JobQueue serves the UI, the API (/easel/v1/jobs) and model loads, so this panel
shows jobs from every way in. Your own jobs (this browser session's) are marked and show
their prompt; other people's show only their kind and where they came from. You can
cancel your own queued or running jobs here.

The panel is one closed accordion whose title line carries the summary ("Queue: 1 running,
2 waiting (1 yours)"), so it takes one line above the tabs whether the queue is empty or
busy, and a job starting or ending never pushes the page down; opening it shows the table.
The "Your jobs" list accepts any value: its choices change every second, and a value the
browser still holds from the last tick must not fail Gradio's choice check (the handlers
check ownership themselves).
"""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from ..core.jobs import Job, JobState, NotOwnerError
from .common import error_html, esc

REFRESH_SECONDS = 1.0


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _origin(job: Job, session: str) -> str:
    if job.owner == session:
        return "you"
    if job.meta.get("restored"):
        return "queued before a restart"
    if job.owner is None:
        return "Easel"
    if job.meta.get("type"):
        return "API"
    return "another browser tab"


def _what(job: Job, session: str) -> str:
    kind = job.meta.get("type") or job.meta.get("tab") or ("txt2img" if job.kind == "generate" else job.kind)
    if job.owner == session and job.description:
        prompt = job.description if len(job.description) <= 60 else job.description[:57] + "…"
        return f"{kind}: {prompt}"
    return kind


def _progress(job: Job) -> str:
    if job.state == JobState.QUEUED:
        return "waiting"
    p = job.progress
    if not p.total_steps:
        return p.text or "starting"
    return f"{p.fraction * 100:.0f}% (step {p.step}/{p.total_steps})"


def active_jobs(easel: Easel) -> list[Job]:
    """Running first, then waiting, in queue order."""
    current = easel.queue.current
    jobs = [current] if current is not None and not current.done else []
    return jobs + easel.queue.pending()


def render_queue(easel: Easel, session: str) -> str:
    jobs = active_jobs(easel)
    if not jobs:
        return '<p class="easel-queue-empty" id="easel_queue_empty">The queue is empty.</p>'
    rows = []
    for position, job in enumerate(jobs, start=0 if jobs[0].state == JobState.RUNNING else 1):
        mine = job.owner == session
        where = "running now" if job.state == JobState.RUNNING else f"#{position}"
        style = ' style="font-weight:600"' if mine else ""
        rows.append(f'<tr class="{"easel-queue-mine" if mine else "easel-queue-other"}"{style}>'
                    f"<td>{esc(where)}</td><td>{esc(_what(job, session))}</td><td>{esc(_origin(job, session))}</td>"
                    f"<td>{esc(_progress(job))}</td></tr>")
    limit = easel.queue.limit
    waiting = len(jobs) - (1 if jobs[0].state == JobState.RUNNING else 0)
    caption = f"{waiting} waiting" + (f" (at most {limit})" if limit else "")
    return ('<table class="easel-queue" id="easel_queue_table" style="width:100%;text-align:left">'
            '<caption style="text-align:left;opacity:.7">' + esc(caption) + "</caption>"
            "<thead><tr><th>Position</th><th>Job</th><th>From</th><th>Progress</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def summary(easel: Easel, session: str) -> str:
    """The panel's one-line title: what runs, what waits, how much of it is yours."""
    jobs = active_jobs(easel)
    if not jobs:
        return "Queue: empty"
    running = 1 if jobs[0].state == JobState.RUNNING else 0
    parts = (["1 running"] if running else []) + [f"{len(jobs) - running} waiting"]
    mine = sum(1 for job in jobs if job.owner == session)
    return "Queue: " + ", ".join(parts) + (f" ({mine} yours)" if mine else "")


def own_choices(easel: Easel, session: str) -> list[tuple[str, str]]:
    choices = []
    for job in active_jobs(easel):
        if job.owner == session:
            position = easel.queue.position(job.id)
            where = "running" if position == 0 else f"#{position}"
            choices.append((f"{where} · {_what(job, session)}", job.id))
    return choices


def build_queue_panel(easel: Easel) -> None:
    with gr.Accordion(summary(easel, ""), open=False, elem_id="easel_queue") as panel:
        table = gr.HTML(render_queue(easel, ""), elem_id="easel_queue_view")
        with gr.Row():
            mine = gr.Dropdown([], value=None, label="Your jobs", elem_id="easel_queue_mine", scale=4,
                               allow_custom_value=True, interactive=True)
            cancel = gr.Button("Cancel job", variant="stop", elem_id="easel_queue_cancel", scale=1, min_width=120)
        message = gr.HTML("", elem_id="easel_queue_message")
    timer = gr.Timer(REFRESH_SECONDS)

    def refresh(selected: str | None, request: gr.Request):
        session = _session(request)
        choices = own_choices(easel, session)
        ids = [job_id for _, job_id in choices]
        value = selected if selected in ids else (ids[0] if ids else None)
        return gr.update(label=summary(easel, session)), render_queue(easel, session), \
            gr.update(choices=choices, value=value)

    def cancel_job(selected: str | None, request: gr.Request):
        session = _session(request)
        if not selected:
            return error_html("Choose one of your jobs first."), *refresh(None, request)
        try:
            cancelled = easel.queue.cancel(selected, owner=session)
        except NotOwnerError:
            return error_html("That job is not yours."), *refresh(None, request)
        text = "Cancelled." if cancelled else "That job has already finished."
        return f"<p>{text}</p>", *refresh(None, request)

    timer.tick(refresh, mine, [panel, table, mine], show_progress="hidden", api_name=False, concurrency_limit=None)
    cancel.click(cancel_job, mine, [message, panel, table, mine], api_name=False, concurrency_limit=None)
