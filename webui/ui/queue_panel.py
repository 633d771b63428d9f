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

Below the queue, "Past jobs" lists the job history (webui/history: finished, failed, interrupted
and cancelled generations, kept across restarts), newest first, twenty more per "Show more". A past
job can be opened (its saved images and parameters) or run again (the same request, queued as a
new job of yours). On a local server every past job's prompt is shown (one user; a restart gives
every browser a new session); on a shared one only your own session's.
"""
from __future__ import annotations

import dataclasses
import time

import gradio as gr

from ..app import Easel
from ..core.jobs import Job, JobState, NotOwnerError
from ..core.request import ValidationError
from ..history import HistoryRecord
from ..history.service import InputsNotKept, JobHistory
from .common import error_html, esc, info_html
from .gallery_tab import _shown

REFRESH_SECONDS = 1.0
IDLE_REFRESH_SECONDS = 3.0  # an empty queue: each tick costs an open page's renderer a fraction of a CPU second
PAST_PAGE = 20


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
    running = getattr(easel.queue, "running", None)  # several workers (webui/workers): every running job
    current = easel.queue.current
    jobs = running() if running is not None else [current] if current is not None and not current.done else []
    return jobs + easel.queue.pending()


def render_queue(easel: Easel, session: str) -> str:
    jobs = active_jobs(easel)
    if not jobs:
        return '<p class="easel-queue-empty" id="easel_queue_empty">The queue is empty.</p>'
    rows = []
    for position, job in enumerate(jobs, start=0 if jobs[0].state == JobState.RUNNING else 1):
        mine = job.owner == session
        where = "running now" if job.state == JobState.RUNNING else f"#{easel.queue.position(job.id) or position}"
        if job.meta.get("worker"):  # on which worker; and why again, when its first worker was lost
            where += f" on {job.meta['worker']}" + (" (retried)" if job.meta.get("retried") else "")
        style = ' style="font-weight:600"' if mine else ""
        rows.append(f'<tr class="{"easel-queue-mine" if mine else "easel-queue-other"}"{style}>'
                    f"<td>{esc(where)}</td><td>{esc(_what(job, session))}</td><td>{esc(_origin(job, session))}</td>"
                    f"<td>{esc(_progress(job))}</td></tr>")
    limit = easel.queue.limit
    waiting = sum(1 for job in jobs if job.state != JobState.RUNNING)
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
    running = sum(1 for job in jobs if job.state == JobState.RUNNING)
    parts = ([f"{running} running"] if running else []) + [f"{len(jobs) - running} waiting"]
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


def past_jobs(easel: Easel, count: int) -> list[HistoryRecord]:
    """The newest `count` finished generations: the history, with the queue's not yet written ones."""
    if easel.history is None:
        return []
    finished = [job for job in easel.queue.jobs() if job.state.finished]
    return easel.history.page(count, live=finished)[0]


def _visible(record: HistoryRecord, session: str, local: bool) -> bool:
    return local or record.owner == session


def _past_label(record: HistoryRecord, session: str, local: bool) -> str:
    when = time.strftime("%m-%d %H:%M", time.localtime(record.finished_at or record.submitted_at))
    prompt = record.description if _visible(record, session, local) else ""
    prompt = prompt if len(prompt) <= 50 else prompt[:47] + "…"
    return f"{when} · {record.state} · {record.type}{': ' + prompt if prompt else ''}"


def render_past(records: list[HistoryRecord], session: str, local: bool) -> str:
    if not records:
        return '<p class="easel-queue-empty" id="easel_history_empty">No past jobs yet.</p>'
    rows = []
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.finished_at or record.submitted_at))
        prompt = record.description if _visible(record, session, local) else ""
        note = record.error or (f"{len(record.images)} image(s)" if record.images else "")
        if record.worker:  # --workers: where it ran, and whether it had to run again
            note = " · ".join(filter(None, [note, f"on {record.worker}" + (" (retried)" if record.retried else "")]))
        rows.append(f'<tr data-job="{esc(record.id)}"><td>{esc(when)}</td><td>{esc(record.state)}</td>'
                    f"<td>{esc(record.type)}</td><td>{esc(prompt)}</td><td>{esc(note)}</td></tr>")
    return ('<table class="easel-queue" id="easel_history_table" style="width:100%;text-align:left">'
            "<thead><tr><th>Finished</th><th>State</th><th>Job</th><th>Prompt</th><th></th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def build_queue_panel(easel: Easel, local: bool = True) -> None:
    with gr.Accordion(summary(easel, ""), open=False, elem_id="easel_queue") as panel:
        table = gr.HTML(render_queue(easel, ""), elem_id="easel_queue_view")
        with gr.Row():
            mine = gr.Dropdown([], value=None, label="Your jobs", elem_id="easel_queue_mine", scale=4,
                               allow_custom_value=True, interactive=True)
            cancel = gr.Button("Cancel job", variant="stop", elem_id="easel_queue_cancel", scale=1, min_width=120)
        message = gr.HTML("", elem_id="easel_queue_message")
        gr.HTML("<b>Past jobs</b>", elem_id="easel_history_title")
        past = gr.HTML("", elem_id="easel_history_view")
        with gr.Row():
            pick = gr.Dropdown([], value=None, label="Past job", elem_id="easel_history_pick", scale=4,
                               allow_custom_value=True, interactive=True)
            open_past = gr.Button("Open", elem_id="easel_history_open", scale=1, min_width=80)
            rerun = gr.Button("Run again", elem_id="easel_history_rerun", scale=1, min_width=100)
            more = gr.Button("Show more", elem_id="easel_history_more", scale=1, min_width=100)
        past_images = gr.Gallery(label="Images of the past job", columns=6, height=200, allow_preview=True,
                                 elem_id="easel_history_images", object_fit="contain")
        past_info = gr.HTML("", elem_id="easel_history_info")
    timer = gr.Timer(REFRESH_SECONDS)
    shown = gr.State("")      # what the past-jobs list shows now (rendered again only when it changes)
    count = gr.State(PAST_PAGE)

    live = gr.State("")  # what the queue view shows now: an unchanged tick sends nothing to the page

    def refresh(selected: str | None, request: gr.Request, key: str | None = None):
        session = _session(request)
        choices = own_choices(easel, session)
        ids = [job_id for _, job_id in choices]
        value = selected if selected in ids else (ids[0] if ids else None)
        label, view = summary(easel, session), render_queue(easel, session)
        new_key = repr((label, view, choices, value))
        if new_key == key:  # each tick re-rendering an unchanged panel kept an idle page's renderer busy
            return gr.skip(), gr.skip(), gr.skip(), key, gr.skip()
        interval = REFRESH_SECONDS if active_jobs(easel) else IDLE_REFRESH_SECONDS
        return gr.update(label=label), view, gr.update(choices=choices, value=value), new_key, gr.Timer(interval)

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

    def refresh_past(selected: str | None, key: str, wanted: int, request: gr.Request):
        session = _session(request)
        records = past_jobs(easel, int(wanted or PAST_PAGE))
        new_key = "|".join(f"{r.id}:{r.state}" for r in records) + f"#{wanted}"
        if new_key == key:
            return gr.skip(), gr.skip(), key
        choices = [(_past_label(r, session, local), r.id) for r in records]
        ids = [r.id for r in records]
        value = selected if selected in ids else (ids[0] if ids else None)
        return render_past(records, session, local), gr.update(choices=choices, value=value), new_key

    def find(job_id: str | None) -> HistoryRecord | None:
        if not job_id or easel.history is None:
            return None
        return easel.history.get(job_id)

    def open_job(job_id: str | None, request: gr.Request):
        record = find(job_id)
        if record is None:
            return [], error_html("Choose a past job first.")
        if not _visible(record, _session(request), local):
            return [], error_html("That job is not yours.")
        pictures = [picture for picture in (_shown(easel, path) for path in record.images) if picture is not None]
        notes = [record.error] if record.error else []
        if record.images and len(pictures) < len(record.images):
            notes.append(f"{len(record.images) - len(pictures)} image file(s) are gone from disk.")
        if not record.images:
            notes.append("No saved images (save_images was off, or the job made none).")
        text = record.infotexts[0] if record.infotexts else record.description
        head = f'<p id="easel_history_opened">Job {esc(record.id)} · {esc(record.state)} · {esc(record.type)}</p>'
        return [(p, None) for p in pictures], head + info_html(text, notes)

    def rerun_job(job_id: str | None, request: gr.Request):
        session = _session(request)
        record = find(job_id)
        if record is None:
            return error_html("Choose a past job first.")
        if not _visible(record, session, local):
            return error_html("That job is not yours.")
        try:
            # saved whatever the first run said (an API job may not have saved): Open shows the files
            job = easel.submit(dataclasses.replace(JobHistory.request_of(record), save_images=True), owner=session)
        except InputsNotKept as exc:
            return error_html(str(exc))
        except ValidationError as exc:
            return error_html("This job cannot run again: " + "; ".join(str(e) for e in exc.errors))
        except Exception as exc:  # e.g. a full queue, or a request that no longer validates
            return error_html(str(exc) if getattr(exc, "user_facing", False) else f"Cannot run it again: {exc}")
        job.meta.update(rerun_of=record.id, tab=record.type)
        return f'<p id="easel_history_queued">Queued again as job {esc(job.id)}; it shows in the queue above.</p>'

    def tick(selected: str | None, key: str, past_selected: str | None, past_key: str, wanted: int,
             request: gr.Request):
        """One event a second for both lists (each event costs the page's renderer more than its outputs do)."""
        return *refresh(selected, request, key), *refresh_past(past_selected, past_key, wanted, request)

    timer.tick(tick, [mine, live, pick, shown, count], [panel, table, mine, live, timer, past, pick, shown],
               show_progress="hidden", api_name=False, concurrency_limit=None)
    more.click(lambda n: int(n or PAST_PAGE) + PAST_PAGE, count, count, api_name=False)
    open_past.click(open_job, pick, [past_images, past_info], api_name=False, concurrency_limit=None)
    rerun.click(rerun_job, pick, past_info, api_name=False, concurrency_limit=None)
    cancel.click(cancel_job, mine, [message, panel, table, mine, live, timer], api_name=False, concurrency_limit=None)
