"""The top bar's weight storage for the selected checkpoint (Forge has "Diffusion in Low Bits" there).

The choice is the checkpoint's own (model_manager/checkpoint_preferences.py), the same one Models →
Library and `PATCH /easel/v1/checkpoints/{name}` set: Automatic follows the setting `weight_storage`
(then `--weights`). The checkpoint's next generation loads it so; the infotext's `Weights:` says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..model_manager.manager import CHECKPOINT_STORAGES, WeightStorageError
from .module_picker import checkpoint_name

if TYPE_CHECKING:
    from ..app import Easel


def storage_in_force(easel: Easel, name: str) -> str:
    """The storage a checkpoint loads with and why: `fp8_e4m3fn (this checkpoint)`, `Automatic (default)`."""
    storage, source = easel.models.weight_storage_source(name)
    return f"{storage} ({'this checkpoint' if source == 'checkpoint' else source})"


def build_storage_picker(easel: Easel, checkpoint: gr.Dropdown) -> gr.Dropdown:
    """The dropdown; follows `checkpoint` (the top bar's checkpoint dropdown)."""
    models = easel.models

    def state(title: str | None = None) -> tuple[str, str]:
        """(the checkpoint's own choice, the note under the dropdown)."""
        name = checkpoint_name(easel, title)
        if not name:
            return "Automatic", "Weights of the selected checkpoint"
        return models.storage_choices.get(name) or "Automatic", f"In force: {storage_in_force(easel, name)}"

    def update(title: str | None = None):
        value, note = state(title)
        return gr.update(value=value, info=note)

    value, note = state()
    picker = gr.Dropdown(list(CHECKPOINT_STORAGES), value=value, label="Weights", info=note,
                         elem_id="checkpoint_weight_storage", scale=1)

    def choose(value: str | None, title: str | None):
        name = checkpoint_name(easel, title)
        if not name:
            gr.Warning("Choose a checkpoint first: the weight storage is remembered per checkpoint")
        else:
            try:
                models.set_weight_storage(name, value)
            except (WeightStorageError, OSError) as exc:
                gr.Warning(str(exc))
        return update(title)

    picker.input(choose, [picker, checkpoint], picker, api_name=False)
    checkpoint.input(update, checkpoint, picker, api_name=False)
    page = gr.context.Context.root_block
    if page is not None:
        page.load(update, None, picker, api_name=False)
    return picker
