"""The txt2img tab. Component elem_ids are AUTOMATIC1111's, so user scripts and styles keep working."""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from ..core import samplers
from ..core.conditioning import prompt_token_count
from ..core.request import LORA_COMPOSITIONS, GenerationRequest
from ..core.styles import PromptStyle
from ..model_manager.tokenizer import clip_tokenizer
from .common import error_html, esc, info_html
from .extra_networks import build_extra_networks
from .runner import SessionJobs, follow


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def token_counter_html(text: str, steps: int = 20) -> str:
    count, capacity = prompt_token_count(clip_tokenizer(), text or "", steps)
    return f'<span class="easel-token-counter" title="tokens / chunk capacity">{count}/{capacity}</span>'


def build_txt2img(easel: Easel, checkpoint: gr.Dropdown, sessions: SessionJobs):
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (press Ctrl+Enter to generate)",
                                elem_id="txt2img_prompt")
            prompt_tokens = gr.HTML(token_counter_html(""), elem_id="txt2img_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="Negative prompt",
                                  elem_id="txt2img_neg_prompt")
            negative_tokens = gr.HTML(token_counter_html(""), elem_id="txt2img_negative_token_counter")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="txt2img_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="txt2img_skip", size="sm")
            styles = gr.Dropdown(easel.engine.styles.names(), value=[], multiselect=True, label="Styles",
                                 elem_id="txt2img_styles")
            with gr.Row():
                apply_styles = gr.Button("Apply styles", size="sm", elem_id="txt2img_style_apply")
                save_style = gr.Button("Save as style", size="sm", elem_id="txt2img_style_create")
            style_name = gr.Textbox(placeholder="Name for a new style", show_label=False, elem_id="txt2img_style_name")
            style_status = gr.HTML("", elem_id="txt2img_style_status")
    network_fill = build_extra_networks(easel, "txt2img", prompt, checkpoint)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Row():
                sampler = gr.Dropdown(samplers.sampler_names(), value="DPM++ 2M", label="Sampling method",
                                      elem_id="txt2img_sampling")
                schedule = gr.Dropdown(samplers.schedule_labels(), value=samplers.AUTOMATIC, label="Schedule type",
                                       elem_id="txt2img_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            with gr.Accordion("LoRA composition", open=False, elem_id="txt2img_lora_composition_box"):
                composition = gr.Radio(list(LORA_COMPOSITIONS), value="Merge", label="When several LoRAs are used",
                                       elem_id="txt2img_lora_composition",
                                       info="Merge: sum into the weights. Switch: one at a time, rotating. "
                                            "Composite: average each LoRA's guided prediction every step.")
                switch_steps = gr.Slider(1, 20, value=1, step=1, label="Switch every N steps",
                                         elem_id="txt2img_lora_switch_steps")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed", elem_id="txt2img_seed", scale=4)
                dice = gr.Button("🎲", elem_id="txt2img_random_seed", elem_classes="easel-tool", scale=0,
                                 min_width=42)
                recycle = gr.Button("♻️", elem_id="txt2img_reuse_seed", elem_classes="easel-tool", scale=0,
                                    min_width=42)
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id="txt2img_progress")
            preview = gr.Image(label="Preview", visible=False, interactive=False, elem_id="txt2img_preview",
                               format="png", height=256)
            gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=4, format="png",
                                 object_fit="contain", height="auto", interactive=False)
            info = gr.HTML("", elem_id="html_info_txt2img")
    infotexts = gr.State([])
    last_seed = gr.State(-1)

    def run(prompt_text, negative_text, sampler_name, schedule_label, steps_value, width_value, height_value,
            count, size, cfg_value, seed_value, checkpoint_title, style_names, composition_mode, every,
            request: gr.Request):
        req = GenerationRequest(
            prompt=prompt_text or "", negative_prompt=negative_text or "", sampler_name=sampler_name or "",
            scheduler=schedule_label or samplers.AUTOMATIC, steps=_int(steps_value), width=_int(width_value),
            height=_int(height_value), n_iter=_int(count), batch_size=_int(size), cfg_scale=_float(cfg_value),
            seed=_int(seed_value, -1), checkpoint=checkpoint_title or None, styles=list(style_names or []),
            lora_composition=composition_mode or "Merge", lora_switch_steps=_int(every, 1))
        current = easel.models.current
        yield from follow(easel, lambda: easel.submit_txt2img(req, owner=_session(request)), sessions,
                          _session(request), lambda: bool(current and current.architecture.is_sdxl))

    inputs = [prompt, negative, sampler, schedule, steps, width, height, batch_count, batch_size, cfg, seed, checkpoint,
              styles, composition, switch_steps]
    outputs = [progress, preview, gallery, info, infotexts, last_seed]
    generate.click(run, inputs, outputs, concurrency_limit=None, api_name="txt2img")
    prompt.submit(run, inputs, outputs, concurrency_limit=None, api_name=False)

    def interrupt_job(request: gr.Request):
        job = easel.queue.get(sessions.get(_session(request)) or "")
        if job and not job.done:
            easel.queue.cancel(job.id)

    def skip_job(request: gr.Request):
        job = easel.queue.get(sessions.get(_session(request)) or "")
        if job and not job.done:
            job.skip()

    interrupt.click(interrupt_job, None, None, concurrency_limit=None, api_name=False)
    skip.click(skip_job, None, None, concurrency_limit=None, api_name=False)
    dice.click(lambda: -1, None, seed, api_name=False)
    recycle.click(lambda s: s, last_seed, seed, api_name=False)

    def show_selected(texts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return info_html(texts[index]) if texts and 0 <= index < len(texts) else gr.skip()

    gallery.select(show_selected, infotexts, info, api_name=False)

    count_opts = dict(api_name=False, show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)
    prompt.change(token_counter_html, [prompt, steps], prompt_tokens, **count_opts)
    negative.change(token_counter_html, [negative, steps], negative_tokens, **count_opts)

    def apply_selected(prompt_text: str, negative_text: str, names: list[str]):
        new_prompt, new_negative, missing = easel.engine.styles.apply(prompt_text or "", negative_text or "", names or [])
        note = error_html("Unknown style: " + ", ".join(missing)) if missing else ""
        return new_prompt, new_negative, [], note

    def save_current(name: str, prompt_text: str, negative_text: str):
        try:
            easel.engine.styles.save(PromptStyle((name or "").strip(), prompt_text or "", negative_text or ""))
        except ValueError as exc:
            return gr.skip(), error_html(str(exc))
        names = easel.engine.styles.names()
        return gr.update(choices=names), f"<span>Saved style {esc(name.strip())}.</span>"

    apply_styles.click(apply_selected, [prompt, negative, styles], [prompt, negative, styles, style_status],
                       api_name=False)
    save_style.click(save_current, [style_name, prompt, negative], [styles, style_status], api_name=False)
    return network_fill


def _int(value, default: int = 0) -> int:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return default


def _float(value, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
