"""Models tab, Download sub-tab: the starter list, any hub file or URL, and the list of downloads.

No download logic lives here: buttons call `easel.downloads` (model_manager/downloads.py) and a timer
redraws the list from it, so a download keeps going when the page is closed and shows up again when
it is reopened. Also the first-run button shown under the "no checkpoint" notice.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..fileio import format_size
from ..model_manager.downloads import DONE, FAILED, QUEUED, RUNNING, Download, DownloadError
from ..model_manager.starter import FIRST_RUN_STARTER, STARTERS, StarterModel, starter
from ..paths import MODEL_FOLDERS
from .common import error_html, esc, format_seconds, progress_html

POLL_SECONDS = 1.0
IDLE_POLL_SECONDS = 5.0  # nothing downloading: each tick is an event the whole page pays for
_STATE_WORDS = {QUEUED: "Queued", RUNNING: "Downloading", DONE: "Done", FAILED: "Failed", "cancelled": "Cancelled"}


def _where(easel: Easel, item: Download) -> str:
    try:
        return str(item.target.relative_to(easel.paths.models_dir.resolve()))
    except ValueError:
        return str(item.target)


def _progress_text(item: Download) -> str:
    total = item.total or item.size
    text = f"{_STATE_WORDS.get(item.state, item.state)} · {format_size(item.done)}" + (f" of {format_size(total)}" if total else "")
    if item.state == RUNNING and item.speed:
        text += f" · {format_size(item.speed)}/s · {format_seconds(item.eta)} left"
    return text


def downloads_html(easel: Easel) -> str:
    items = easel.downloads.list()
    if not items:
        return '<div class="easel-notice">No downloads yet in this session.</div>'
    rows = []
    for item in reversed(items):
        detail = ""
        if item.error and item.state != DONE:
            detail = error_html(item.error)
        elif item.state == DONE:
            sha = f" · sha256 {item.computed_sha256[:12]}…" + (" (verified)" if item.sha256 else "")
            detail = f'<div style="font-size:12px;opacity:.75">Saved as {esc(_where(easel, item))}{esc(sha)}</div>'
        rows.append(f'<div class="easel-download" data-state="{esc(item.state)}" style="margin:6px 0">'
                    f"<b>{esc(item.label)}</b> → <code>{esc(_where(easel, item))}</code>"
                    f"{progress_html(item.fraction, _progress_text(item))}{detail}</div>")
    return "".join(rows)


def _choices(easel: Easel) -> list[tuple[str, str]]:
    return [(f"{item.label} ({_STATE_WORDS.get(item.state, item.state).lower()})", item.id)
            for item in reversed(easel.downloads.list())]


def _starter_markdown(item: StarterModel) -> str:
    where = MODEL_FOLDERS[item.kind]
    arch = f" · {item.architecture}" if item.architecture else ""
    return f"**{item.title}**{arch} · {format_size(item.size)} · into `models/{where}`  \n{item.description}"


def build_downloads(easel: Easel) -> None:
    gr.Markdown("Files go straight into the right `models/` folder. A download is written to a hidden partial "
                "file and renamed only when it is complete (and its checksum matches, when known), so nothing "
                "half-written ever shows up as a model. Interrupted or cancelled downloads resume where they "
                "stopped. The hub address and access token (for gated models) are in Settings → Downloads.")
    message = gr.HTML(elem_id="downloads_message")
    with gr.Accordion("Starter models", open=True, elem_id="downloads_starter"):
        starter_buttons = []
        for item in STARTERS:
            with gr.Row(equal_height=True, elem_id=f"downloads_starter_row_{item.name}"):
                gr.Markdown(_starter_markdown(item))
                button = gr.Button("Download", size="sm", scale=0, min_width=110,
                                   elem_id=f"downloads_starter_{item.name}")
                starter_buttons.append((item.name, button))
    with gr.Accordion("Hugging Face repository file or URL", open=True, elem_id="downloads_custom"):
        with gr.Row():
            source = gr.Textbox(label="Repository (owner/name) or URL", scale=3, elem_id="downloads_source",
                                placeholder="stabilityai/sdxl-turbo   or   https://…/model.safetensors")
            path = gr.Textbox(label="File path in the repository", scale=3, elem_id="downloads_path",
                              placeholder="sd_xl_turbo_1.0_fp16.safetensors (not needed for a URL)")
            revision = gr.Textbox(label="Revision", placeholder="main", scale=1, elem_id="downloads_revision")
        with gr.Row():
            kind = gr.Dropdown([(f"{k} (models/{folder})", k) for k, folder in MODEL_FOLDERS.items()],
                               value="checkpoint", label="Kind (decides the folder)", elem_id="downloads_kind")
            filename = gr.Textbox(label="Save as (optional)", elem_id="downloads_filename")
            sha256 = gr.Textbox(label="sha256 (optional; checked when given)", elem_id="downloads_sha256")
            go = gr.Button("Download", variant="primary", scale=0, min_width=120, elem_id="downloads_custom_go")
    with gr.Row(equal_height=True):
        selected = gr.Dropdown(_choices(easel), value=None, label="Selected download", scale=3,
                               elem_id="downloads_selected", allow_custom_value=True)
        cancel = gr.Button("Cancel", scale=0, min_width=90, elem_id="downloads_cancel")
        resume = gr.Button("Resume", scale=0, min_width=90, elem_id="downloads_resume")
        clear = gr.Button("Clear finished", scale=0, min_width=120, elem_id="downloads_clear")
    listing = gr.HTML(downloads_html(easel), elem_id="downloads_list")
    timer = gr.Timer(POLL_SECONDS)

    def redraw(note: str = "", select: str | None = None) -> tuple[str, str, Any]:
        update = gr.update(choices=_choices(easel)) if select is None else gr.update(choices=_choices(easel),
                                                                                      value=select)
        return note, downloads_html(easel), update

    def start_starter(name: str) -> tuple[str, str, Any]:
        try:
            items = easel.downloads.add_starter(name)
        except DownloadError as exc:
            return redraw(error_html(str(exc)))
        return redraw("", items[0].id)

    def start_custom(src: str, file_path: str, rev: str, model_kind: str, save_as: str,
                     checksum: str) -> tuple[str, str, Any]:
        try:
            item = easel.downloads.add_input(src, file_path, model_kind or "checkpoint", rev, save_as, checksum)
        except DownloadError as exc:
            return redraw(error_html(str(exc)))
        return redraw("", item.id)

    def control(action: str, download_id: str | None) -> tuple[str, str, Any]:
        if not download_id:
            return redraw(error_html("Selected download: choose a download from the list first"))
        try:
            getattr(easel.downloads, action)(download_id)
        except DownloadError as exc:
            return redraw(error_html(str(exc)))
        return redraw()

    outputs = [message, listing, selected]
    for name, button in starter_buttons:
        button.click(lambda n=name: start_starter(n), None, outputs, api_name=False)
    go.click(start_custom, [source, path, revision, kind, filename, sha256], outputs, api_name=False)
    def do_cancel(download_id: str | None) -> tuple[str, str, Any]:
        return control("cancel", download_id)

    def do_resume(download_id: str | None) -> tuple[str, str, Any]:
        return control("resume", download_id)

    cancel.click(do_cancel, selected, outputs, api_name=False)
    resume.click(do_resume, selected, outputs, api_name=False)
    clear.click(lambda: (easel.downloads.clear_finished(), redraw())[1], None, outputs, api_name=False)
    def tick() -> tuple[str, Any, Any]:
        busy = any(item.state in (QUEUED, RUNNING) for item in easel.downloads.list())
        return *redraw()[1:], gr.Timer(POLL_SECONDS if busy else IDLE_POLL_SECONDS)

    timer.tick(tick, None, [listing, selected, timer], show_progress="hidden", api_name=False,
               concurrency_limit=None)


def build_first_run_download(easel: Easel, status: gr.HTML) -> None:
    """The one-click starter model under the "no checkpoint installed" notice; hidden once a checkpoint exists."""
    item = starter(FIRST_RUN_STARTER)
    label = f"Download the starter model (SD 1.5, {item.size / 1e9:.0f} GB)"
    button = gr.Button(label, variant="primary", visible=not easel.models.checkpoints(),
                       elem_id="easel_first_run_download")
    note = gr.HTML(elem_id="easel_first_run_note")
    current = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)

    def start() -> tuple[str, Any, Any]:
        try:
            (download,) = easel.downloads.add_starter(FIRST_RUN_STARTER)
        except DownloadError as exc:
            return error_html(str(exc)), None, gr.Timer(active=False)
        return show(download.id)[0], download.id, gr.Timer(active=True)

    def show(download_id: str | None) -> tuple[str, Any]:
        if not download_id:
            return "", gr.Timer(active=False)
        try:
            download = easel.downloads.get(download_id)
        except DownloadError:
            return "", gr.Timer(active=False)
        if download.state == DONE:
            return (f'<div class="easel-notice">{esc(item.title)} is installed. Press 🔄 next to the checkpoint '
                    f"list to select it.</div>", gr.Timer(active=False))
        if download.finished:
            return (error_html(download.error + " (details and Resume in Models → Download)"), gr.Timer(active=False))
        return progress_html(download.fraction, f"{item.title}: {_progress_text(download)}"), gr.Timer(active=True)

    button.click(start, None, [note, current, timer], api_name=False)
    timer.tick(show, current, [note, timer], show_progress="hidden", api_name=False, concurrency_limit=None)
    status.change(lambda: gr.update(visible=not easel.models.checkpoints()), None, button, api_name=False,
                  show_progress="hidden")
