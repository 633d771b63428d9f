"""The top bar's "VAE / Text Encoder" multi-select, as Forge has it beside the checkpoint.

It lists the files in models/VAE and models/text_encoder; the choice is remembered for the
selected checkpoint (model_manager/module_choice.py) and used from its next load on. Which part
each file becomes is decided at load by its tensors, so the picker knows nothing of families.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..model_manager.lookup import ModelNotFound

if TYPE_CHECKING:
    from ..app import Easel


def checkpoint_name(easel: Easel, title: str | None = None) -> str:
    """The checkpoint a top-bar title names (the selected one when none); "" when none is installed."""
    try:
        return easel.models.find(title).name if title else easel.models.resolve(None).name
    except LookupError:
        return ""


def build_module_picker(easel: Easel, checkpoint: gr.Dropdown) -> gr.Dropdown:
    """The multi-select and its refresh; follows `checkpoint` (the top bar's checkpoint dropdown)."""
    choices = easel.models.module_choices

    def current(title: str | None = None) -> list[str]:
        name = checkpoint_name(easel, title)
        return [p.name for p in choices.chosen(name)] if name else []

    def update(title: str | None = None):
        return gr.update(choices=choices.names(), value=current(title))

    picker = gr.Dropdown(choices.names(), value=current(), multiselect=True, label="VAE / Text Encoder",
                         elem_id="setting_forge_additional_modules", scale=3,
                         info="Files from models/VAE and models/text_encoder used for this checkpoint")
    refresh = gr.Button("🔄", elem_id="refresh_forge_additional_modules", elem_classes="easel-tool", scale=0,
                        min_width=42)

    def choose(values: list[str] | None, title: str | None):
        name = checkpoint_name(easel, title)
        if not name:
            gr.Warning("Choose a checkpoint first: the VAE / Text Encoder choice is remembered per checkpoint")
            return update(title)
        try:
            choices.set_preference(name, list(values or []))
        except (ModelNotFound, ValueError, OSError) as exc:
            gr.Warning(str(exc))
        return update(title)

    picker.input(choose, [picker, checkpoint], picker, api_name=False)
    checkpoint.input(update, checkpoint, picker, api_name=False)
    refresh.click(update, checkpoint, picker, api_name=False)
    page = gr.context.Context.root_block
    if page is not None:
        page.load(update, None, picker, api_name=False)
    return picker
