"""The Settings tab, generated from the Settings dataclass so a new option needs no UI code."""
from __future__ import annotations

from collections import defaultdict

import gradio as gr

from ..app import Easel
from ..settings import Settings
from .common import error_html, esc


def _component(name: str, value, meta: dict) -> gr.components.Component:
    label = meta.get("label") or name
    elem_id = f"setting_{name}"
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), value=value, label=label, elem_id=elem_id)
    if isinstance(value, (int, float)):
        return gr.Number(value=value, label=label, elem_id=elem_id, minimum=meta.get("minimum"),
                         maximum=meta.get("maximum"), precision=0 if isinstance(value, int) else None)
    return gr.Textbox(value=value, label=label, elem_id=elem_id)


def build_settings(easel: Easel) -> None:
    spec = Settings.spec()
    current = easel.settings.settings.as_dict()
    sections: dict[str, list[str]] = defaultdict(list)
    for name, f in spec.items():
        if name == "sd_model_checkpoint":
            continue  # chosen in the top bar
        sections[f.metadata.get("section", "General")].append(name)

    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML("", elem_id="settings_result")
    names: list[str] = []
    components: list[gr.components.Component] = []
    for section, keys in sections.items():
        with gr.Accordion(section, open=True):
            for name in keys:
                names.append(name)
                components.append(_component(name, current[name], dict(spec[name].metadata)))

    def save(*values):
        changes = {}
        for name, value in zip(names, values):
            default = spec[name].default
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                value = int(value) if value.is_integer() else value
            changes[name] = value
        try:
            changed = easel.settings.update(changes)
        except (ValueError, PermissionError) as exc:
            return error_html(str(exc))
        if not changed:
            return "<p>No changes.</p>"
        return f"<p>Saved {len(changed)} setting(s): {esc(', '.join(changed))}.</p>"

    apply.click(save, components, result, api_name=False)
