"""Models tab, Library sub-tab: a searchable table of every model file, and a detail panel.

Everything shown comes from `easel.library` (model_manager/library.py) and `easel.vaes`; this
module only formats it and forwards button presses.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Easel
from ..fileio import format_size
from ..model_manager.library import LibraryEntry
from ..model_manager.manager import CHECKPOINT_STORAGES, KIND as CHECKPOINT, WeightStorageError
from ..model_manager.registry import ModelNotFoundError
from ..model_manager.vae import AUTOMATIC, VaeNotFoundError
from ..settings import SettingsSaveError
from .common import error_html, esc
from .module_picker import checkpoint_name
from .storage_picker import storage_in_force

COLUMNS = ["Name", "Kind", "Folder", "Size", "Architecture", "AutoV2", "Trigger words"]
MAX_ROWS = 1000
ALL = "All"


def _architecture(entry: LibraryEntry) -> str:
    parts = [entry.architecture or "?"]
    if entry.quantization:
        parts.append(f"[{entry.quantization.split(' ×')[0]}]")  # the main quantization type, e.g. Q8_0
    if entry.unloadable:
        parts.append(f"· not loadable: {entry.unloadable}")
    return " ".join(parts)


def _rows(easel: Easel, query: str, kind: str) -> tuple[list[list[str]], list[str], str]:
    entries = easel.library.search(query or "", None if kind in (None, "", ALL) else kind)
    shown = entries[:MAX_ROWS]
    rows = [[e.name, e.kind, e.folder, format_size(e.size), _architecture(e),
             easel.library.short_hash(e) or ("hashing…" if e.hash_source else ""), ", ".join(e.trigger_words[:5])]
            for e in shown]
    pending = len(easel.library.pending_hashes())
    status = f"{len(entries)} model(s)" + (f", showing the first {MAX_ROWS}: refine the search" if len(entries) > MAX_ROWS
                                           else "")
    if pending:
        status += f" · {pending} not hashed yet (hashed in the background, or press Hash now)"
    return rows, [e.path for e in shown], status


def _detail_html(easel: Easel, entry: LibraryEntry) -> str:
    short = easel.library.short_hash(entry)
    facts: list[tuple[str, str]] = [
        ("Name", entry.name), ("Title", entry.title), ("Kind", entry.kind), ("Format", entry.format),
        ("Path", entry.path), ("Size", format_size(entry.size)), ("Architecture", entry.architecture or "unknown"),
        ("Quantization", entry.quantization), ("Tensors", str(entry.tensors or "")),
        ("AutoV2", short or ("not hashed yet" if entry.hash_source else "—")),
        ("Trigger words", ", ".join(entry.trigger_words)), ("Note", entry.note),
        ("Not loadable", entry.unloadable),
    ]
    facts += [(f"Training: {k}", v) for k, v in entry.training.items()]
    facts += [(f"modelspec.{k}", v) for k, v in entry.modelspec.items()]
    if entry.kind == "checkpoint" and easel.vaes is not None:
        preferred = _preferred_vae(easel, entry)
        facts.append(("Preferred VAE", preferred or "none remembered (Automatic)"))
        facts.append(("Weight storage", _storage_said(easel, entry)))
    rows = "".join(f"<tr><th style='text-align:left;padding-right:12px'>{esc(k)}</th><td>{esc(v)}</td></tr>"
                   for k, v in facts if v)
    return f'<table id="models_library_detail_table">{rows}</table>'


def _preferred_vae(easel: Easel, entry: LibraryEntry) -> str | None:
    name = _checkpoint_name(easel, entry)
    return easel.vaes.preference(name) if name else None


def _checkpoint_name(easel: Easel, entry: LibraryEntry) -> str:
    """The checkpoint a library row is ("" when the registry does not know it)."""
    return checkpoint_name(easel, entry.name)


def _storage_said(easel: Easel, entry: LibraryEntry) -> str:
    name = _checkpoint_name(easel, entry)
    return storage_in_force(easel, name) if name else ""


def _detail(easel: Easel, path: str | None) -> tuple[Any, ...]:
    entry = easel.library.get(path) if path else None
    if entry is None:
        hidden = gr.update(visible=False)
        return "<p>Select a row to see its details.</p>", None, {}, hidden, hidden, hidden, hidden
    preview = easel.library.preview(entry)
    is_checkpoint = entry.kind == "checkpoint" and easel.vaes is not None
    vae_choices = easel.vaes.choices() if is_checkpoint else []
    name = _checkpoint_name(easel, entry) if is_checkpoint else None
    own_storage = (easel.models.storage_choices.get(name) or AUTOMATIC) if name else None
    return (_detail_html(easel, entry), str(preview) if preview else None, entry.metadata,
            gr.update(visible=is_checkpoint, choices=vae_choices, value=(_preferred_vae(easel, entry) or AUTOMATIC)
                      if is_checkpoint else None),
            gr.update(visible=is_checkpoint, value=own_storage),
            gr.update(visible=is_checkpoint), gr.update(visible=is_checkpoint))  # the two Set buttons


def build_library(easel: Easel) -> None:
    kinds = [ALL, *easel.library.kinds()]
    with gr.Row():
        search = gr.Textbox(placeholder="Search by name, folder, kind, architecture or trigger word", show_label=False,
                            scale=4, elem_id="models_library_search")
        kind = gr.Dropdown(kinds, value=ALL, label="Kind", scale=1, elem_id="models_library_kind")
        rescan = gr.Button("🔄 Rescan folders", scale=0, elem_id="models_library_rescan")
    status = gr.Markdown("", elem_id="models_library_status")
    table = gr.Dataframe([], headers=COLUMNS, interactive=False, wrap=True, elem_id="models_library_table")
    shown_paths = gr.State([])
    selected = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            detail = gr.HTML("<p>Select a row to see its details.</p>", elem_id="models_library_detail")
            with gr.Row():
                hash_now = gr.Button("Hash now", elem_id="models_library_hash_now", scale=0)
                vae = gr.Dropdown([], label="Preferred VAE for this checkpoint", visible=False, scale=3,
                                  elem_id="models_library_preferred_vae")
                set_vae = gr.Button("Set as preferred VAE", scale=0, elem_id="models_library_set_vae", visible=False)
            with gr.Row():
                storage = gr.Dropdown(list(CHECKPOINT_STORAGES), value=AUTOMATIC, visible=False, scale=3,
                                      label="Weight storage for this checkpoint",
                                      info="Automatic follows the setting weight_storage; fp8 halves the "
                                           "denoiser's memory; used from the checkpoint's next load",
                                      elem_id="models_library_weight_storage")
                set_storage = gr.Button("Set weight storage", scale=0, elem_id="models_library_set_weight_storage",
                                        visible=False)
            message = gr.HTML("", elem_id="models_library_message")
            metadata = gr.JSON({}, label="safetensors metadata", elem_id="models_library_metadata")
        with gr.Column(scale=1):
            preview = gr.Image(None, label="Preview", interactive=False, elem_id="models_library_preview")

    def fill(query: str, chosen_kind: str):
        rows, paths, text = _rows(easel, query, chosen_kind)
        return rows, paths, text

    def do_rescan(query: str, chosen_kind: str):
        scan = easel.library.refresh()
        rows, paths, text = _rows(easel, query, chosen_kind)
        return rows, paths, f"{text} · rescanned in {scan['seconds']:.2f} s ({scan['read']} new or changed)"

    def choose(paths: list[str], evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        path = paths[row] if isinstance(row, int) and 0 <= row < len(paths) else None
        return (path, *_detail(easel, path), "")

    def do_hash(path: str | None, query: str, chosen_kind: str):
        entry = easel.library.get(path) if path else None
        if entry is None:
            return (gr.skip(),) * 3 + (gr.skip(), error_html("Select a row first."))
        try:
            short = easel.library.hash_now(entry)
        except OSError as exc:
            return (gr.skip(),) * 3 + (gr.skip(), error_html(f"Cannot hash {entry.name}: {exc}"))
        rows, paths, text = _rows(easel, query, chosen_kind)
        note = f"<p>AutoV2 of {esc(entry.name)}: <code>{esc(short or '—')}</code></p>"
        return rows, paths, text, _detail_html(easel, entry), note

    def do_set_vae(path: str | None, choice: str | None):
        entry = easel.library.get(path) if path else None
        if entry is None or entry.kind != "checkpoint":
            return gr.skip(), error_html("Select a checkpoint first.")
        try:
            name = easel.models.find(entry.name).name
            easel.vaes.set_preference(name, choice)
        except (ModelNotFoundError, VaeNotFoundError) as exc:
            return gr.skip(), error_html(str(exc))
        said = "forgotten (Automatic)" if choice in (None, "", AUTOMATIC) else f"set to {choice}"
        return _detail_html(easel, entry), f"<p>Preferred VAE of {esc(name)} {esc(said)}.</p>"

    def do_set_storage(path: str | None, choice: str | None):
        entry = easel.library.get(path) if path else None
        name = _checkpoint_name(easel, entry) if entry is not None and entry.kind == "checkpoint" else ""
        if not name:
            return gr.skip(), error_html("Select a checkpoint first.")
        try:
            value = easel.models.set_weight_storage(name, choice)
        except WeightStorageError as exc:
            return gr.skip(), error_html(str(exc))
        loaded = easel.models.store.peek(CHECKPOINT, name)
        when = " It is reloaded by its next generation." if loaded is not None and (
            loaded.weight_storage != easel.models.weight_storage(name)) else ""
        return (_detail_html(easel, entry),
                f"<p>Weight storage of {esc(name)}: {esc(value)} → {esc(_storage_said(easel, entry))}.{when}</p>")

    listing = [table, shown_paths, status]
    search.submit(fill, [search, kind], listing, api_name=False)
    search.change(fill, [search, kind], listing, api_name=False, show_progress="hidden")
    kind.change(fill, [search, kind], listing, api_name=False)
    rescan.click(do_rescan, [search, kind], listing, api_name=False)
    table.select(choose, shown_paths, [selected, detail, preview, metadata, vae, storage, set_vae, set_storage,
                                       message], api_name=False)
    hash_now.click(do_hash, [selected, search, kind], [*listing, detail, message], api_name=False)
    set_vae.click(do_set_vae, [selected, vae], [detail, message], api_name=False)
    set_storage.click(do_set_storage, [selected, storage], [detail, message], api_name=False)
    page = gr.context.Context.root_block  # fill the table when the page opens, never while the UI is built
    if page is not None:
        page.load(fill, [search, kind], listing, api_name=False)


def build_vae_picker(easel: Easel) -> gr.Dropdown:
    """The top bar's SD VAE dropdown (elem_id as AUTOMATIC1111's) and its refresh button; sets `sd_vae`."""
    def current() -> str:
        return easel.settings.get("sd_vae") or AUTOMATIC

    def choices() -> list[str]:
        listed = easel.vaes.choices()
        return listed if current() in listed else [*listed, current()]  # a removed file stays visible

    dropdown = gr.Dropdown(choices(), value=current(), label="SD VAE", elem_id="setting_sd_vae", scale=2,
                           allow_custom_value=True)
    refresh = gr.Button("🔄", elem_id="refresh_sd_vae", elem_classes="easel-tool", scale=0, min_width=42)

    def choose_vae(value: str | None):
        value = value or AUTOMATIC
        try:
            easel.vaes.check(value)
            easel.settings.update({"sd_vae": value})
        except (LookupError, ValueError, SettingsSaveError) as exc:  # missing or unreadable file; unsaved
            gr.Warning(str(exc))
            return gr.update(choices=choices(), value=current())
        return gr.update(choices=choices(), value=value)

    def reload():
        return gr.update(choices=choices(), value=current())

    dropdown.input(choose_vae, dropdown, dropdown, api_name=False)
    refresh.click(reload, None, dropdown, api_name=False)
    page = gr.context.Context.root_block
    if page is not None:
        page.load(reload, None, dropdown, api_name=False)
    return dropdown
