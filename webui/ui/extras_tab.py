"""The Extras tab: upscale (and restore faces of) one image or a batch of uploaded files.

Layout and elem_ids follow AUTOMATIC1111's Extras tab. The work is queued on Easel's job
queue (so it waits for a running generation instead of fighting it for the GPU); the
handler follows the job and shows progress per tile and per image. Uploaded files are
decoded by Easel only, after their declared size is checked. A1111's "Process Folder"
(server-side input/output paths) is left out on purpose: uploads cover the use, and a
field that takes server paths is something Easel does not offer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gradio as gr

from ..app import Easel
from ..core.jobs import Job, JobState, QueueFullError
from ..core.request import ValidationError
from ..features.extras import ExtrasInput, ExtrasRequest, ExtrasResult
from ..features.faces import CODEFORMER, GFPGAN
from ..features.upscalers import BUILTIN, LANCZOS, NONE
from .common import error_html, esc, format_seconds, info_html, progress_html
from .runner import SessionJobs
from .send_to import GallerySource
from .uploads import UploadedImage, settings_limit, uploaded_image  # noqa: F401  (UploadedImage: moved there)

POLL_SECONDS = 0.25


def _selected_index(evt: gr.SelectData) -> int:
    return evt.index if isinstance(evt.index, int) else 0


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _models_note(easel: Easel) -> str:
    notes = []
    skipped = easel.upscalers.skipped_pickles()
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        notes.append(f"{len(skipped)} pickle upscaler file(s) not listed ({names}): they can run code when opened. "
                     "Use .safetensors versions, or start Easel with --allow-pickle.")
    if len(easel.upscalers.list_upscalers()) == 3:
        notes.append("No upscaler models installed, so Lanczos is chosen: put .safetensors files (ESRGAN, "
                     f"Real-ESRGAN, SwinIR, DAT, HAT, SCUNet ...) into {easel.paths.model_dir('esrgan')}.")
    return "".join(f'<div class="easel-notice">{esc(n)}</div>' for n in notes)


def default_upscaler(names: list[str]) -> str:
    """The first model upscaler, else Lanczos: the tab must do something when Generate is pressed as it opens."""
    return next((name for name in names if name not in BUILTIN), LANCZOS)


NOTHING_TO_DO = ("Upscaler 1 is None and no face restoration is set, so there is nothing to do. Choose an "
                 "upscaler (Lanczos needs no model file) or a face restoration visibility.")


def _faces_note(easel: Easel) -> str:
    available = easel.faces.available()
    missing = [n for n in (GFPGAN, CODEFORMER) if n not in available]
    if not missing:
        return ""
    folders = {GFPGAN: easel.paths.model_dir("gfpgan"), CODEFORMER: easel.paths.model_dir("codeformer")}
    text = "; ".join(f"{n}: no model in {folders[n]}" for n in missing)
    return f'<div class="easel-notice" style="font-size:12px">{esc(text)}</div>'


def _job_status(easel: Easel, job: Job) -> tuple[float, str]:
    if job.state == JobState.QUEUED:
        position = easel.queue.position(job.id)
        return 0.0, f"Waiting in queue (position {position})" if position else "Waiting in queue"
    p = job.progress
    count = max(p.job_count, 1)
    within = p.step / p.total_steps if p.total_steps else 0.0
    fraction = (p.job_no + within) / count
    text = f"Image {p.job_no + 1}/{count}" if count > 1 else "Upscaling"
    if p.total_steps > 1:
        text += f" · tile {p.step}/{p.total_steps}"
    return fraction, text


def result_html(result: ExtrasResult) -> str:
    first = result.infotexts[0] if result.infotexts else ""
    footer = f"\nTime taken: {format_seconds(result.seconds)}" if result.seconds >= 1 else \
        f"\nTime taken: {result.seconds:.2f}s"
    saved = f"\nSaved {len(result.paths)} image(s)." if result.paths else ""
    return info_html(first + footer + saved if first or saved else "", result.warnings)


def follow_extras(easel: Easel, submit, sessions: SessionJobs, session: str) -> Iterator[tuple]:
    """Submit via `submit()` and yield (progress, gallery, info) until the job ends."""
    try:
        job: Job = submit()
    except ValidationError as exc:
        yield "", gr.skip(), error_html("\n".join(str(e) for e in exc.errors))
        return
    except QueueFullError as exc:
        yield "", gr.skip(), error_html(str(exc))
        return
    sessions.set(session, job.id)
    yield progress_html(0, "Queued"), gr.skip(), ""
    while not job.wait(POLL_SECONDS):
        fraction, text = _job_status(easel, job)
        yield progress_html(fraction, text), gr.skip(), gr.skip()
    if job.state == JobState.CANCELLED:
        yield "", gr.skip(), error_html("Cancelled.")
        return
    if job.error is not None:
        error = job.error
        message = str(error) if getattr(error, "user_facing", False) else f"Extras failed: {error}"
        yield "", gr.skip(), error_html(message)
        return
    result: ExtrasResult = job.result
    gallery = [(p, Path(p).name) for p in result.paths] if result.paths else list(result.images)
    if not result.images and result.failures:
        yield "", [], error_html("\n".join(result.warnings))
        return
    yield "", gallery, result_html(result)


@dataclass
class ExtrasUI:
    """What other tabs need from Extras: where "Send to extras" puts a picture, and its gallery's Send-to source."""

    image: gr.Image
    tabs: gr.Tabs          # Single Image / Batch Process
    tab_index: gr.State    # which of them Generate uses (0: single image)
    source: GallerySource


def build_extras(easel: Easel, sessions: SessionJobs) -> ExtrasUI:
    tab_index = gr.State(0)
    resize_mode = gr.State(0)
    choices = easel.upscalers.list_upscalers()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="mode_extras") as mode_tabs:
                with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as tab_single:
                    image = uploaded_image(settings_limit(easel.settings), label="Source", type="filepath",
                                           sources=["upload", "clipboard"], elem_id="extras_image", height=320)
                with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as tab_batch:
                    files = gr.Files(label="Batch Process", file_types=["image"], elem_id="extras_image_batch")
            with gr.Accordion("Upscale", open=True, elem_id="extras_upscale"):
                with gr.Tabs(elem_id="extras_resize_mode"):
                    with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as tab_scale_by:
                        resize = gr.Slider(1.0, 8.0, value=4, step=0.05, label="Resize",
                                           elem_id="extras_upscaling_resize")
                    with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as tab_scale_to:
                        with gr.Row():
                            width = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                              elem_id="extras_upscaling_resize_w")
                            height = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                               elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
                with gr.Row():
                    upscaler_1 = gr.Dropdown(choices, value=default_upscaler(choices), label="Upscaler 1",
                                             elem_id="extras_upscaler_1", scale=4)
                    refresh = gr.Button("🔄", elem_id="extras_refresh_upscalers", elem_classes="easel-tool", scale=0,
                                        min_width=42)
                with gr.Row():
                    upscaler_2 = gr.Dropdown(choices, value=NONE, label="Upscaler 2", elem_id="extras_upscaler_2")
                    visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                           elem_id="extras_upscaler_2_visibility")
                models_note = gr.HTML(_models_note(easel), elem_id="extras_models_note")
            with gr.Accordion("Restore faces", open=False, elem_id="extras_restore_faces"):
                gfpgan = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                                   elem_id="extras_gfpgan_visibility")
                with gr.Row():
                    codeformer = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                           elem_id="extras_codeformer_visibility")
                    codeformer_weight = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                                  label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                                  elem_id="extras_codeformer_weight")
                faces_note = gr.HTML(_faces_note(easel), elem_id="extras_faces_note")
        with gr.Column(scale=1):
            with gr.Row(elem_id="extras_generate_box"):
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Stop", variant="stop", elem_id="extras_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="extras_skip", size="sm")
            progress = gr.HTML("", elem_id="extras_progress")
            gallery = gr.Gallery(label="Output", elem_id="extras_gallery", columns=2, format="png",
                                 object_fit="contain", height="auto", interactive=False)
            send_row = gr.Row(elem_id="extras_send_row")
            info = gr.HTML("", elem_id="html_info_extras")
    selected = gr.State(0)
    gallery.select(_selected_index, None, selected, api_name=False)

    tab_single.select(lambda: 0, None, tab_index, api_name=False)
    tab_batch.select(lambda: 1, None, tab_index, api_name=False)
    tab_scale_by.select(lambda: 0, None, resize_mode, api_name=False)
    tab_scale_to.select(lambda: 1, None, resize_mode, api_name=False)

    def run(mode, image_path, batch, scale_mode, resize_by, to_w, to_h, crop_to_fit, up1, up2, up2_visibility,
            gfpgan_visibility, codeformer_visibility, weight, request: gr.Request):
        if mode == 1:
            inputs = [ExtrasInput(str(f), Path(str(f)).name) for f in (batch or [])]
            if not inputs:
                yield "", gr.skip(), error_html("Batch Process: upload one or more images first.")
                return
        else:
            if not image_path:
                yield "", gr.skip(), error_html("Single Image: upload an image first.")
                return
            inputs = [ExtrasInput(str(image_path), "")]
        req = ExtrasRequest(resize_mode=int(scale_mode or 0), upscaling_resize=float(resize_by),
                            upscaling_resize_w=int(to_w), upscaling_resize_h=int(to_h),
                            upscaling_crop=bool(crop_to_fit), upscaler_1=up1 or NONE, upscaler_2=up2 or NONE,
                            extras_upscaler_2_visibility=float(up2_visibility or 0),
                            gfpgan_visibility=float(gfpgan_visibility or 0),
                            codeformer_visibility=float(codeformer_visibility or 0),
                            codeformer_weight=float(weight or 0))
        if not req.does_anything:  # it would save an unchanged copy
            yield "", gr.skip(), error_html(NOTHING_TO_DO)
            return
        session = _session(request)
        yield from follow_extras(easel, lambda: easel.extras.submit(easel.queue, req, inputs, owner=session),
                                 sessions, session)

    generate.click(run, [tab_index, image, files, resize_mode, resize, width, height, crop, upscaler_1, upscaler_2,
                         visibility, gfpgan, codeformer, codeformer_weight],
                   [progress, gallery, info], concurrency_limit=None, api_name=False)

    def own_job(request: gr.Request) -> Job | None:
        job = easel.queue.get(sessions.get(_session(request)) or "")
        return job if job and not job.done and job.kind == "extras" else None

    def stop(request: gr.Request):
        job = own_job(request)
        if job:
            easel.queue.cancel(job.id)

    def skip_image(request: gr.Request):
        job = own_job(request)
        if job:
            job.skip()

    interrupt.click(stop, None, None, concurrency_limit=None, api_name=False)
    skip.click(skip_image, None, None, concurrency_limit=None, api_name=False)

    def do_refresh(current_1: str, current_2: str):
        names = easel.upscalers.list_upscalers()
        keep = lambda v: v if v in names else NONE  # noqa: E731
        return (gr.update(choices=names, value=keep(current_1)), gr.update(choices=names, value=keep(current_2)),
                _models_note(easel), _faces_note(easel))

    refresh.click(do_refresh, [upscaler_1, upscaler_2], [upscaler_1, upscaler_2, models_note, faces_note],
                  api_name=False)
    return ExtrasUI(image=image, tabs=mode_tabs, tab_index=tab_index,
                    source=GallerySource("extras", gallery, selected, gr.State([]), send_row))
