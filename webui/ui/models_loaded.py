"""Models tab, Loaded sub-tab: what the model store holds now, and a button to free it.

The store (model_manager/store.py) is the one record of every loaded model of every kind; this
module only formats `store.entries()` and forwards the buttons.
"""
from __future__ import annotations

from pathlib import Path
from typing import Hashable

import gradio as gr

from ..app import Easel
from ..fileio import format_size
from ..model_manager.store import ModelStore

COLUMNS = ["Kind", "Name", "RAM", "Device memory", "In use"]


def _name(key: Hashable) -> str:
    """A readable name for a store key: a file's name, or the key's first part for compound keys."""
    first = key[0] if isinstance(key, tuple) and key else key
    text = str(first)
    return Path(text).name if ("/" in text or "\\" in text) else text


def loaded_rows(store: ModelStore) -> tuple[list[list[str]], str]:
    """Rows (most recently used first) and a one-line total with the budgets."""
    entries = list(reversed(store.entries()))
    rows = [[e.kind, _name(e.key), format_size(e.ram_bytes), format_size(e.device_bytes), "yes" if e.pinned else ""]
            for e in entries]
    totals = store.totals()
    ram_budget, device_budget = store.ram_budget(), store.device_budget()
    status = (f"{len(entries)} loaded · RAM {format_size(totals.ram)}"
              + (f" of {format_size(ram_budget)}" if ram_budget else "")
              + f" · device {format_size(totals.device)}"
              + (f" of {format_size(device_budget)}" if device_budget else ""))
    return rows, status


def free_unused(store: ModelStore) -> int:
    """Evict every entry nothing uses now (the active checkpoint and a running job's models stay)."""
    freed = 0
    for entry in store.entries():
        if not entry.pinned and store.evict(entry.kind, entry.key):
            freed += 1
    return freed


def build_loaded(easel: Easel, tab: gr.Tab) -> None:
    gr.Markdown("Models in memory now, of every kind, most recently used first. When a budget "
                "(Settings: `model_cache_ram_gb`, `model_cache_vram_gb`) is exceeded, the least recently "
                "used model that nothing is using is freed first.")
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="models_loaded_refresh", scale=0)
        free = gr.Button("Free unused models", elem_id="models_loaded_free", scale=0)
    status = gr.Markdown(elem_id="models_loaded_status")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="models_loaded_table", wrap=True)

    def show() -> tuple[list[list[str]], str]:
        return loaded_rows(easel.models.store)

    def free_and_show() -> tuple[list[list[str]], str]:
        freed = free_unused(easel.models.store)
        rows, text = loaded_rows(easel.models.store)
        return rows, f"Freed {freed} model(s). {text}"

    tab.select(show, None, [table, status], api_name=False)  # fresh each time the sub-tab opens
    refresh.click(show, None, [table, status], api_name=False)
    free.click(free_and_show, None, [table, status], api_name=False)
