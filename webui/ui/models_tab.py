"""The Models tab: one place for every model file (library), getting new ones (download), and
making new ones from old (convert, merge). Each sub-tab is its own module; this one only lays them out."""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from .models_downloads import build_downloads
from .models_library import build_library
from .models_loaded import build_loaded
from .models_tools import build_convert, build_merge


def build_models_tab(easel: Easel) -> None:
    with gr.Tabs(elem_id="models_subtabs"):
        with gr.Tab("Library", id="models_library", elem_id="models_library_tab"):
            build_library(easel)
        with gr.Tab("Download", id="models_download", elem_id="models_download_tab"):
            build_downloads(easel)
        with gr.Tab("Convert", id="models_convert", elem_id="models_convert_tab"):
            build_convert(easel)
        with gr.Tab("Merge", id="models_merge", elem_id="models_merge_tab"):
            build_merge(easel)
        with gr.Tab("Loaded", id="models_loaded", elem_id="models_loaded_tab") as loaded_tab:
            build_loaded(easel, loaded_tab)
