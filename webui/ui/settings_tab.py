"""The Settings tab, generated from the Settings dataclass so a new option needs no UI code."""
from __future__ import annotations

from collections import defaultdict

import gradio as gr

from ..app import Easel
from ..settings import Settings, SettingsSaveError
from .common import error_html, esc, warning_html


# output folder settings -> the folder used when they are empty (under --outputs-dir)
DEFAULT_OUTPUT_FOLDERS = {"outdir_txt2img_samples": "txt2img-images", "outdir_img2img_samples": "img2img-images",
                          "outdir_extras_samples": "extras-images"}


def _default_folder(easel: Easel, name: str) -> str | None:
    """The folder an empty path setting means on this server (--outputs-dir), for its label and placeholder."""
    folder = DEFAULT_OUTPUT_FOLDERS.get(name)
    return str(easel.paths.outputs_dir / folder) if folder else None


def _component(name: str, value, meta: dict, placeholder: str | None = None) -> gr.components.Component:
    label = meta.get("label") or name
    if placeholder:
        label = label.split(" (empty:", 1)[0] + f" (empty: {placeholder})"
    elem_id = f"setting_{name}"
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), value=value, label=label, elem_id=elem_id)
    if isinstance(value, (int, float)):
        return gr.Number(value=value, label=label, elem_id=elem_id, minimum=meta.get("minimum"),
                         maximum=meta.get("maximum"), precision=0 if isinstance(value, int) else None)
    return gr.Textbox(value=value, label=label, elem_id=elem_id, type="password" if meta.get("secret") else "text",
                      placeholder=placeholder)


def load_notice(easel: Easel) -> str:
    """The start-up warnings about config.json, as the error box the tab shows (empty when there were none)."""
    warnings = easel.settings.load_warnings
    if not warnings:
        return ""
    return warning_html("Settings at start-up: " + " · ".join(warnings))


def build_settings(easel: Easel) -> None:
    spec = Settings.spec()
    current = easel.settings.settings.as_dict()
    sections: dict[str, list[str]] = defaultdict(list)
    for name, f in spec.items():
        if name in ("sd_model_checkpoint", "sd_vae"):
            continue  # chosen in the top bar
        sections[f.metadata.get("section", "General")].append(name)

    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    # what went wrong reading config.json at start-up (a corrupt file kept aside, a bad value) stays in view
    result = gr.HTML(load_notice(easel), elem_id="settings_result")
    names: list[str] = []
    components: list[gr.components.Component] = []
    for section, keys in sections.items():
        with gr.Accordion(section, open=True):
            for name in keys:
                names.append(name)
                components.append(_component(name, current[name], dict(spec[name].metadata),
                                             _default_folder(easel, name)))

    def save(*values):
        changes = {}
        for name, value in zip(names, values):
            default = spec[name].default
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                value = int(value) if value.is_integer() else value
            changes[name] = value
        try:
            changed = easel.settings.update(changes)
        except (ValueError, PermissionError, SettingsSaveError) as exc:
            return error_html(str(exc))
        if not changed:
            return "<p>No changes.</p>"
        return f"<p>Saved {len(changed)} setting(s): {esc(', '.join(changed))}.</p>"

    extension_specs = _extension_settings(easel)
    extension_components = []
    if extension_specs:
        with gr.Accordion("Extensions", open=True):
            for spec in extension_specs:
                value = easel.settings.get(spec.key)
                extension_components.append(_component(spec.key, spec.default if value is None else value,
                                                       {"label": spec.label, "choices": spec.choices,
                                                        "minimum": spec.minimum, "maximum": spec.maximum}))

    def save_all(*values):
        message = save(*values[:len(components)])
        for spec, value in zip(extension_specs, values[len(components):]):
            try:
                easel.settings.set_extra(spec.key, _check_extension_value(spec, value))
            except ValueError as exc:
                return error_html(str(exc))
        return message

    apply.click(save_all, components + extension_components, result, api_name=False)


def _extension_settings(easel: Easel) -> list:
    from ..extensions.api import SettingSpec

    specs = []
    for extension, returned in easel.engine.hooks.call_named("ui_settings"):
        for spec in returned if isinstance(returned, list) else [returned]:
            if isinstance(spec, SettingSpec) and spec.key not in Settings.spec():
                specs.append(spec)
            else:
                easel.engine.hooks.record(extension, "ui_settings", TypeError(f"not a usable SettingSpec: {spec!r}"))
    return specs


def _check_extension_value(spec, value):
    """Coerce to the default's type and check choices/range, naming the key on failure."""
    default = spec.default
    try:
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, str):
            value = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{spec.key}: expected a {type(default).__name__}") from None
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{spec.key}: must be one of {', '.join(map(str, spec.choices))}")
    if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{spec.key}: must be between {spec.minimum} and {spec.maximum}")
    return value
