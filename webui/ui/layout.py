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
from .queue_panel import build_queue_panel
from .extras_tab import build_extras
from .family_presets import wire_family_presets
from .gallery_tab import build_gallery_tab
from .runner import SessionJobs
from .settings_tab import build_settings, load_notice
from .controlnet_tab import build_controlnet_tab
from .extensions_tab import build_extensions
from .identity_tab import build_identity_tab
from .img2img import build_img2img, build_inpaint
from .models_downloads import build_first_run_download
from .models_tab import build_models_tab
from .models_library import build_vae_picker
from .module_picker import build_module_picker
from .storage_picker import build_storage_picker
from .pnginfo_tab import build_pnginfo, wire_pnginfo_send
from .progress_targets import light_progress
from .send_to import SendTarget, wire_send_buttons
from .txt2img import build_txt2img


def _no_checkpoint_notice(easel: Easel) -> str:
    folders = " or ".join(f"<code>{esc(p)}</code>" for p in easel.paths.checkpoint_dirs())
    return (f'<div class="easel-notice" id="easel_no_checkpoint"><b>No checkpoint installed.</b> Put a Stable '
            f"Diffusion <code>.safetensors</code> checkpoint (or a diffusers folder) into {folders}, then press "
            f"🔄 next to the checkpoint list. To try Easel right away, restart it with "
            f"<code>--demo-model</code> (a tiny random model: it makes noise, not pictures). Or download a model "
            f"with the button below or in Models → Download.</div>")


def _status(easel: Easel) -> str:
    return load_notice(easel) + _model_status(easel)  # config.json problems at start-up stay on top until fixed


def _model_status(easel: Easel) -> str:
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


def _extension_tabs(easel: Easel) -> None:
    """Tabs extensions add (ui_tabs hook); a tab whose builder raises shows the error instead."""
    for extension, returned in easel.engine.hooks.call_named("ui_tabs"):
        for item in returned if isinstance(returned, list) else [returned]:
            try:
                label, build = item
            except (TypeError, ValueError):
                continue
            with gr.Tab(str(label), elem_id=f"tab_ext_{extension}"):
                try:
                    build()
                except Exception as exc:
                    easel.engine.hooks.record(extension, "ui_tabs", exc)
                    gr.HTML(error_html(f"{extension}: this tab failed to build ({exc})"))


def build_ui(easel: Easel, local: bool = True) -> gr.Blocks:
    """The page. `local`: Easel listens on loopback only (enables server-folder features like batch)."""
    sessions = SessionJobs()
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(easel.models.titles(), value=_selected_title(easel),
                                     label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                     scale=4, allow_custom_value=True)  # titles gain hashes as files are hashed
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", elem_classes="easel-tool", scale=0,
                                min_width=42)
            build_vae_picker(easel)  # SD VAE: Automatic / None / a file from models/VAE
            build_module_picker(easel, checkpoint)  # Forge's VAE / Text Encoder, remembered per checkpoint
            build_storage_picker(easel, checkpoint)  # the checkpoint's weight storage (fp8...), remembered too
        status = gr.HTML(_status(easel), elem_id="easel_status")
        build_first_run_download(easel, status)  # one click to the starter model, shown with the notice
        build_queue_panel(easel, local)

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img(easel, checkpoint, sessions)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img(easel, checkpoint, sessions, local)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"):
                inpaint = build_inpaint(easel, checkpoint, sessions)
            with gr.Tab("ControlNet", id="controlnet", elem_id="tab_controlnet"):
                controlnet = build_controlnet_tab(easel, checkpoint, sessions)
            with gr.Tab("Identity", id="identity", elem_id="tab_identity"):
                identity = build_identity_tab(easel, checkpoint, sessions)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = build_extras(easel, sessions)
            with gr.Tab("Gallery", id="gallery", elem_id="tab_gallery") as gallery_tab:
                gallery = build_gallery_tab(easel, gallery_tab, local) if easel.gallery is not None else None
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png_image, png_text, png_buttons, png_note = build_pnginfo(easel, tabs, checkpoint)
            with gr.Tab("Models", id="models", elem_id="tab_models"):
                build_models_tab(easel)
            _extension_tabs(easel)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                build_extensions(easel)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                build_settings(easel)
        targets = [
            SendTarget("txt2img", "txt2img", controls=txt2img),
            SendTarget("controlnet", "ControlNet", controls=controlnet),
            SendTarget("identity", "Identity", controls=identity),
            SendTarget("img2img", "img2img", image=img2img.image, controls=img2img,
                       subtab=(img2img.subtabs, "img2img_plain")),
            SendTarget("inpaint", "inpaint", image=inpaint.image, controls=inpaint,
                       subtab=(inpaint.subtabs, "inpaint_paint"),
                       image_value=lambda picture: {"background": picture, "layers": [], "composite": picture}),
            SendTarget("extras", "extras", image=extras.image, subtab=(extras.tabs, "single_image"),
                       extra_outputs=[(extras.tab_index, 0)]),
        ]
        for source in (txt2img, img2img, inpaint, controlnet, identity, extras.source,
                       *([gallery.source] if gallery else [])):
            wire_send_buttons(easel, tabs, checkpoint, source, targets)
        wire_pnginfo_send(easel, tabs, checkpoint, png_image, png_text, png_buttons, png_note, targets)
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
        # the switch itself, with the tabs taking the new family's defaults (what was set per family kept)
        wire_family_presets(easel, checkpoint, [txt2img, img2img, inpaint], switch, status)
        blocks.load(lambda: (gr.update(choices=easel.models.titles(), value=_selected_title(easel)), _status(easel)),
                    None, [checkpoint, status], api_name=False)
        for controls in (txt2img, img2img, inpaint):  # the ControlNet tab has no extra-networks panel
            fill_networks, network_search, network_outputs = controls.extra_networks
            blocks.load(fill_networks, network_search, network_outputs, api_name=False)
    light_progress(blocks)  # no event's progress makes the page re-read (re-upload) an image editor
    return blocks
