"""The whole page: checkpoint bar above the tabs, then one module per tab."""
from __future__ import annotations

from typing import Iterator

import gradio as gr

from .. import __version__
from ..app import Easel
from ..model_manager.errors import ModelLoadError
from ..model_manager.manager import NoCheckpointError
from ..model_manager.registry import ModelNotFoundError
from .common import error_html, esc
from .extras_tab import build_extras
from .runner import SessionJobs
from .settings_tab import build_settings
from .txt2img import build_txt2img


def _no_checkpoint_notice(easel: Easel) -> str:
    folders = " or ".join(f"<code>{esc(p)}</code>" for p in easel.paths.checkpoint_dirs())
    return (f'<div class="easel-notice" id="easel_no_checkpoint"><b>No checkpoint installed.</b> Put a Stable '
            f"Diffusion <code>.safetensors</code> checkpoint (or a diffusers folder) into {folders}, then press "
            f"🔄 next to the checkpoint list. To try Easel right away, restart it with "
            f"<code>--demo-model</code> (a tiny random model: it makes noise, not pictures).</div>")


def _status(easel: Easel) -> str:
    if not easel.models.checkpoints():
        return _no_checkpoint_notice(easel)
    current = easel.models.current
    if current is None:
        return ""
    text = f"Loaded {esc(current.info.name)} ({esc(current.architecture.label)}) on {esc(easel.device.label)}"
    if current.demo:
        text += " — demo model: images are noise"
    return f'<span id="easel_model_status">{text}</span>'


def _selected_title(easel: Easel) -> str | None:
    titles = easel.models.titles()
    if not titles:
        return None
    try:
        return easel.models.registry.title(easel.models.resolve(None))
    except (NoCheckpointError, ModelNotFoundError):
        return titles[0]


def build_ui(easel: Easel) -> gr.Blocks:
    sessions = SessionJobs()
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(easel.models.titles(), value=_selected_title(easel),
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                     scale=4, allow_custom_value=False)
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", elem_classes="easel-tool", scale=0,
                                min_width=42)
        status = gr.HTML(_status(easel), elem_id="easel_status")

        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                fill_networks, network_search, network_outputs = build_txt2img(easel, checkpoint, sessions)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                build_extras(easel, SessionJobs())
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                build_settings(easel)
        gr.HTML(f'<div style="text-align:center;opacity:.6;font-size:12px">Easel {__version__} · '
                f'<a href="/docs" target="_blank">API</a></div>')

        def do_refresh():
            easel.models.refresh()
            return gr.update(choices=easel.models.titles(), value=_selected_title(easel)), _status(easel)

        def switch(title: str | None) -> Iterator[str]:
            if not title:
                yield _status(easel)
                return
            try:
                info = easel.models.find(title)
                easel.settings.update({"sd_model_checkpoint": info.name})
            except (ModelNotFoundError, ValueError) as exc:
                yield error_html(str(exc))
                return
            yield f"<span>Loading {esc(info.name)}…</span>"
            job = easel.queue.submit(lambda j: easel.models.get(info.name, progress=lambda m: j.report(text=m)),
                                     kind="load-model", description=info.name)
            job.wait()
            if job.error is not None:
                message = str(job.error) if isinstance(job.error, (ModelLoadError, ModelNotFoundError)) else (
                    f"Loading {info.name} failed: {job.error}")
                yield error_html(message)
            else:
                yield _status(easel)

        refresh.click(do_refresh, None, [checkpoint, status], api_name=False)
        checkpoint.input(switch, checkpoint, status, concurrency_limit=None, api_name=False)
        blocks.load(lambda: (gr.update(choices=easel.models.titles(), value=_selected_title(easel)), _status(easel)),
                    None, [checkpoint, status], api_name=False)
        blocks.load(fill_networks, network_search, network_outputs, api_name=False)
    return blocks
