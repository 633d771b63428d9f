"""Gallery tab: the indexed images (webui/gallery) as a paged grid, with search, filters and a detail view.

No logic of its own: every query and change goes to `easel.gallery`; Send-to buttons are wired by
layout.py with send_to.py like any other gallery (the detail view is a one-image gallery).
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from ..app import Easel
from ..core.infotext import Infotext, format_parsed
from ..gallery import GalleryError, Query
from .common import error_html, esc
from .send_to import GallerySource

PAGE = 48
ALL = "All"
SORT_LABELS = {"Newest": "newest", "Oldest": "oldest", "Rating": "rating", "Favourites first": "favourites"}
DATES = {"Any time": None, "Today": 0, "Last 7 days": 7, "Last 30 days": 30, "Last year": 365}


@dataclass
class GalleryUI:
    source: GallerySource


def _since(label: str) -> float | None:
    days = DATES.get(label)
    if days is None:
        return None
    today = _dt.datetime.combine(_dt.date.today(), _dt.time())
    return (today - _dt.timedelta(days=days)).timestamp()


def _choices(values: list[str]) -> list[str]:
    return [ALL, *values]


def _value(value: Any) -> Any:
    return None if value in (None, "", ALL) else value


def _shown(easel: Easel, path) -> Any:
    """A picture for a gr.Gallery: its path where Gradio may serve files (outputs, the working folder, the temp
    folder), else the decoded image (an added folder elsewhere, a data dir elsewhere), which Gradio caches."""
    resolved = os.path.realpath(path)
    for root in (easel.paths.outputs_dir, os.getcwd(), tempfile.gettempdir()):
        root = os.path.realpath(root)
        if resolved.startswith(root + os.sep):
            return str(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except OSError:
        return None


def _status_html(easel: Easel, total: int, page: int) -> str:
    status = easel.gallery.status()
    scan = status["scan"]
    text = f"{total} image(s) match · {status['images']} in the gallery"
    if scan["state"] == "scanning":
        text += f" · scanning {esc(scan['folder'])}: {scan['seen']}/{scan['total']}"
    pages = max(1, -(-total // PAGE))
    return f'<span id="gallery_status_text">{text} · page {page + 1} of {pages}</span>'


def scan_html(easel: Easel) -> str:
    """The background scan's progress line (the tab's timer reads it every second while a scan runs)."""
    scan = easel.gallery.progress
    if scan.state == "scanning":
        return (f'<span id="gallery_scan_text">Scanning {esc(scan.folder)}: {scan.seen} of {scan.total} file(s) '
                f"looked at, {scan.indexed} indexed…</span>")
    if scan.state == "done":
        return (f'<span id="gallery_scan_text">Scan done: {scan.total} file(s), {scan.indexed} indexed, '
                f"{scan.removed} removed.</span>")
    return ""


def _detail_html(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    params = row.get("params") or {}
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in params.items())
    negative = f"<p><b>Negative prompt:</b> {esc(row['negative_prompt'])}</p>" if row.get("negative_prompt") else ""
    state = []
    if row.get("favourite"):
        state.append("★ favourite")
    if row.get("rating"):
        state.append(f"rating {row['rating']}/5")
    if row.get("board"):
        state.append(f"board: {esc(row['board'])}")
    if row.get("trashed_at"):
        state.append("in the trash")
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.get("created") or 0))
    return (f'<div id="gallery_detail_info"><p class="easel-source">{esc(row["path"])} · {created}'
            f'{" · " + " · ".join(state) if state else ""}</p>'
            f"<p><b>Prompt:</b> {esc(row.get('prompt') or '')}</p>{negative}"
            f"<table class='easel-params'>{rows}</table></div>")


def build_gallery_tab(easel: Easel, tab: gr.Tab, local: bool = True) -> GalleryUI:
    gallery = easel.gallery
    with gr.Row():
        search = gr.Textbox(label="Search prompts", placeholder="words of the prompt", elem_id="gallery_search",
                            scale=4)
        sort = gr.Dropdown(list(SORT_LABELS), value="Newest", label="Sort", elem_id="gallery_sort", scale=1)
        refresh = gr.Button("🔄", elem_id="gallery_refresh", elem_classes="easel-tool", scale=0, min_width=42)
    with gr.Row():
        model = gr.Dropdown([ALL], value=ALL, label="Model", elem_id="gallery_model")
        sampler = gr.Dropdown([ALL], value=ALL, label="Sampler", elem_id="gallery_sampler")
        size = gr.Dropdown([ALL], value=ALL, label="Size", elem_id="gallery_size")
        date = gr.Dropdown(list(DATES), value="Any time", label="Date", elem_id="gallery_date")
        board_filter = gr.Dropdown([ALL], value=ALL, label="Board", elem_id="gallery_board_filter")
        with gr.Column(min_width=120):
            favourites = gr.Checkbox(label="Favourites only", elem_id="gallery_favourites")
            trash_view = gr.Checkbox(label="Trash", elem_id="gallery_trash_view")
    status = gr.HTML("", elem_id="gallery_status")
    scan_line = gr.HTML("", elem_id="gallery_scan")
    scan_timer = gr.Timer(1.0, active=False)  # on while a scan runs, so its progress shows without a click
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            grid = gr.Gallery(label="Images", show_label=False, columns=6, height=560, allow_preview=False,
                              elem_id="gallery_grid", object_fit="contain")
            with gr.Row():
                prev_page = gr.Button("◀ Previous", size="sm", elem_id="gallery_prev")
                next_page = gr.Button("Next ▶", size="sm", elem_id="gallery_next")
        with gr.Column(scale=2):
            detail = gr.Gallery(label="Image", show_label=False, columns=1, height=360, allow_preview=False,
                                elem_id="gallery_detail", object_fit="contain")
            with gr.Row():
                favourite = gr.Button("☆ Favourite", size="sm", elem_id="gallery_favourite")
                rating = gr.Radio(["0", "1", "2", "3", "4", "5"], label="Rating", elem_id="gallery_rating")
            with gr.Row():
                board_name = gr.Textbox(label="Board", placeholder="board name", elem_id="gallery_board_name",
                                        scale=2)
                move = gr.Button("Move to board", size="sm", elem_id="gallery_move")
                unboard = gr.Button("Remove from board", size="sm", elem_id="gallery_unboard")
                drop_board = gr.Button("Delete board", size="sm", elem_id="gallery_drop_board")
            with gr.Row():
                delete = gr.Button("🗑 Delete", size="sm", variant="stop", elem_id="gallery_delete")
                restore = gr.Button("Restore", size="sm", elem_id="gallery_restore")
                empty_trash = gr.Button("Empty trash", size="sm", variant="stop", elem_id="gallery_empty_trash")
            message = gr.HTML("", elem_id="gallery_message")
            info = gr.HTML("", elem_id="gallery_info")
            send_row = gr.Row(elem_id="gallery_send_row")
    with gr.Accordion("Select many", open=False, elem_id="gallery_select_many"):
        picked = gr.CheckboxGroup([], label="Images on this page", elem_id="gallery_picked")
        with gr.Row():
            pick_all = gr.Button("Select all on this page", size="sm", elem_id="gallery_pick_all")
            pick_none = gr.Button("Select none", size="sm", elem_id="gallery_pick_none")
            bulk_action = gr.Dropdown(["favourite", "unfavourite", "board", "unboard", "trash", "restore"],
                                      value="favourite", label="Action", elem_id="gallery_bulk_action")
            bulk_board = gr.Textbox(label="Board (for board)", elem_id="gallery_bulk_board")
            bulk_apply = gr.Button("Apply to the selected", size="sm", elem_id="gallery_bulk_apply")
    with gr.Accordion("Folders", open=False, elem_id="gallery_folders"):
        folders = gr.HTML("", elem_id="gallery_folder_list")
        with gr.Row():
            folder = gr.Textbox(label="Add a folder (absolute path; images from other tools are indexed too)",
                                elem_id="gallery_folder", interactive=local, scale=4)
            add_folder = gr.Button("Add", size="sm", elem_id="gallery_add_folder", interactive=local)
            rescan = gr.Button("Rescan", size="sm", elem_id="gallery_rescan")
        with gr.Row():
            added = gr.Dropdown([], value=None, label="Added folders", elem_id="gallery_added_folders", scale=4,
                                interactive=local)
            remove_folder = gr.Button("Remove from the gallery (the files stay)", size="sm",
                                      elem_id="gallery_remove_folder", interactive=local)
    page = gr.State(0)
    ids = gr.State([])
    selected_id = gr.State(None)
    selected_index = gr.State(0)
    infotexts = gr.State([])

    filters = [search, sort, model, sampler, size, date, board_filter, favourites, trash_view]

    def query(text, sort_label, model_v, sampler_v, size_v, date_v, board_v, fav, trash, page_no) -> Query:
        return Query(text=text or "", model=_value(model_v), sampler=_value(sampler_v), size=_value(size_v),
                     since=_since(date_v), board=_value(board_v), favourite=bool(fav), trash=bool(trash),
                     sort=SORT_LABELS.get(sort_label, "newest"), offset=int(page_no) * PAGE, limit=PAGE)

    def show(*values):
        *args, page_no = values
        page_no = max(0, int(page_no or 0))
        rows, total = gallery.search(query(*args, page_no))
        if not rows and page_no > 0:
            page_no = max(0, (total - 1) // PAGE)
            rows, total = gallery.search(query(*args, page_no))
        items, shown = [], []
        for row in rows:  # files gone since the last scan are left out of the page
            thumb = gallery.thumbnail(row["id"])
            picture = _shown(easel, thumb) if thumb is not None else None
            if picture is not None:
                items.append((picture, (row.get("prompt") or "")[:60]))
                shown.append(row["id"])
        labels = [(f"#{row['id']} {(row.get('prompt') or '')[:40]}", row["id"]) for row in rows
                  if row["id"] in shown]
        return items, shown, page_no, _status_html(easel, total, page_no), gr.update(choices=labels, value=[])

    grid_outputs = [grid, ids, page, status, picked]
    serial = {"concurrency_id": "gallery_grid", "concurrency_limit": 1, "api_name": False}  # pages in the order asked

    def first_page(*values):
        return show(*values[:-1], 0)

    def step(delta):
        def go(*values):
            *args, page_no = values
            return show(*args, int(page_no or 0) + delta)
        return go

    def choices():
        index = gallery.index
        return (gr.update(choices=_choices(index.distinct("model"))),
                gr.update(choices=_choices(index.distinct("sampler"))),
                gr.update(choices=_choices(index.distinct("size"))),
                gr.update(choices=_choices(index.boards())),
                "".join(f"<div><code>{esc(p)}</code></div>" for p in gallery.roots()),
                gr.update(choices=gallery.index.folders(), value=None))

    choice_outputs = [model, sampler, size, board_filter, folders, added]
    search.change(first_page, [*filters, page], grid_outputs, trigger_mode="always_last", show_progress="hidden",
                 **serial)
    for control in filters[1:]:
        control.input(first_page, [*filters, page], grid_outputs, show_progress="hidden", **serial)
    prev_page.click(step(-1), [*filters, page], grid_outputs, **serial)
    next_page.click(step(1), [*filters, page], grid_outputs, **serial)
    for event in (refresh.click, tab.select):
        event(choices, None, choice_outputs, api_name=False).then(show, [*filters, page], grid_outputs, **serial)

    def follow_scan():
        return scan_html(easel), gr.Timer(active=gallery.progress.state == "scanning")

    def scan_started():
        return scan_html(easel), gr.Timer(active=True)

    tab.select(follow_scan, None, [scan_line, scan_timer], api_name=False)
    scan_timer.tick(follow_scan, None, [scan_line, scan_timer], show_progress="hidden", api_name=False)

    def detail_of(image_id):
        if image_id is None:
            return [], None, "", gr.update(value="☆ Favourite"), None, "", []
        try:
            row = gallery.record(image_id)
        except GalleryError:
            return [], None, "", gr.update(value="☆ Favourite"), None, "", []
        path = gallery.file_of(image_id)
        text = format_parsed(Infotext(row.get("prompt") or "", row.get("negative_prompt") or "",
                                      row.get("params") or {})) if row.get("params") or row.get("prompt") else ""
        picture = _shown(easel, path) if path else None
        return ([(picture, None)] if picture is not None else [], image_id, _detail_html(row),
                gr.update(value="★ Favourite" if row.get("favourite") else "☆ Favourite"),
                str(row.get("rating") or 0), row.get("board") or "", [text])

    detail_outputs = [detail, selected_id, info, favourite, rating, board_name, infotexts]

    def select(shown, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        image_id = shown[index] if 0 <= index < len(shown) else None
        return (*detail_of(image_id), "")

    grid.select(select, ids, [*detail_outputs, message], api_name=False)

    def act(action):
        def run(image_id, *args):
            if image_id is None:
                return (*detail_of(None), error_html("Select an image first."))
            try:
                note = action(image_id, *args) or ""
            except (GalleryError, ValueError) as exc:
                return (*detail_of(image_id), error_html(str(exc)))
            return (*detail_of(image_id), note)
        return run

    def toggle_favourite(image_id):
        row = gallery.record(image_id)
        gallery.index.set_favourite(image_id, not row.get("favourite"))

    def set_rating(image_id, value):
        gallery.index.set_rating(image_id, int(value or 0))

    def move_to(image_id, name):
        gallery.index.set_board([image_id], name)
        return f'<span id="gallery_note">Moved to {esc(name.strip())}.</span>'

    def off_board(image_id, _name):
        gallery.index.set_board([image_id], None)

    def delete_board(name):
        name = (name or "").strip()
        if not name:
            return error_html("Type the name of the board to delete.")
        gallery.index.remove_board(name)
        return f'<span id="gallery_note">Board {esc(name)} deleted; its images stay in the gallery.</span>'

    def to_trash(image_id):
        gallery.trash(image_id)
        return '<span id="gallery_note">Moved to the trash (tick Trash to see it and restore it).</span>'

    def from_trash(image_id):
        path = gallery.restore(image_id)
        return f'<span id="gallery_note">Restored to {esc(path)}.</span>'

    outputs = [*detail_outputs, message]
    favourite.click(act(toggle_favourite), selected_id, outputs, api_name=False)
    rating.input(act(set_rating), [selected_id, rating], outputs, api_name=False)
    move.click(act(move_to), [selected_id, board_name], outputs, api_name=False).then(
        choices, None, choice_outputs, api_name=False)
    unboard.click(act(off_board), [selected_id, board_name], outputs, api_name=False)
    drop_board.click(delete_board, board_name, message, api_name=False).then(
        choices, None, choice_outputs, api_name=False).then(show, [*filters, page], grid_outputs, **serial)
    for button, action in ((delete, to_trash), (restore, from_trash)):
        button.click(act(action), selected_id, outputs, api_name=False).then(
            show, [*filters, page], grid_outputs, **serial)

    def apply_bulk(chosen, action, name):
        if not chosen:
            return error_html("Select images first.")
        try:
            outcome = gallery.bulk(list(chosen), action, name)
        except (GalleryError, ValueError) as exc:
            return error_html(str(exc))
        failed = "".join(f"<div>#{k}: {esc(v)}</div>" for k, v in outcome["failed"].items())
        return f'<span id="gallery_note">{action}: {outcome["done"]} image(s).</span>{failed}'

    pick_all.click(lambda shown: shown, ids, picked, api_name=False)
    pick_none.click(lambda: [], None, picked, api_name=False)
    bulk_apply.click(apply_bulk, [picked, bulk_action, bulk_board], message, api_name=False).then(
        choices, None, choice_outputs, api_name=False).then(show, [*filters, page], grid_outputs, **serial)

    def add(path):
        try:
            added = gallery.add_folder(path or "")
        except GalleryError as exc:
            return error_html(str(exc))
        return f'<span id="gallery_note">Added {esc(added)}; indexing in the background.</span>'

    add_folder.click(add, folder, message, api_name=False).then(choices, None, choice_outputs, api_name=False).then(
        scan_started, None, [scan_line, scan_timer], api_name=False)
    rescan.click(lambda: gallery.scan(), None, None, api_name=False).then(
        scan_started, None, [scan_line, scan_timer], api_name=False)

    def drop_folder(path):
        if not path:
            return error_html("Choose one of the added folders.")
        try:
            gallery.remove_folder(path)
        except GalleryError as exc:
            return error_html(str(exc))
        return f'<span id="gallery_note">{esc(path)} is no longer in the gallery; its files are untouched.</span>'

    remove_folder.click(drop_folder, added, message, api_name=False).then(
        choices, None, choice_outputs, api_name=False).then(show, [*filters, page], grid_outputs, **serial)

    armed: dict[str, float] = {}  # session -> when Empty trash was clicked once; a second click within a minute deletes

    def empty(request: gr.Request):
        session = getattr(request, "session_hash", None) or ""
        count = len(gallery.index.trashed())
        if not count:
            return '<span id="gallery_note">The trash is empty.</span>'
        if time.time() - armed.get(session, 0.0) > 60:
            armed[session] = time.time()
            return f'<span id="gallery_note">Click Empty trash again to delete {count} image(s) for good.</span>'
        armed.pop(session, None)
        removed = gallery.empty_trash()
        return f'<span id="gallery_note">Deleted {removed} image(s) for good.</span>'

    empty_trash.click(empty, None, message, api_name=False).then(
        show, [*filters, page], grid_outputs, **serial)
    return GalleryUI(GallerySource("gallery", detail, selected_index, infotexts, send_row))
