"""Controls every generation tab shares: prompts, styles, sampler, size, batch, seed, output.

Each tab calls these builders with its elem_id prefix (AUTOMATIC1111's `txt2img_`,
`img2img_`, ...), adds its own inputs, and wires Generate through `wire_generation`.
Values reach the handler as a dict by field name, so adding a control never shifts
positional arguments.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from ..app import Easel
from ..core import samplers
from ..core.conditioning import CHUNK_TOKENS, prompt_token_count
from ..pnginfo import override_item_fields
from ..core.request import LORA_COMPOSITIONS, GenerationRequest
from ..core.styles import PromptStyle
from ..model_manager.tokenizer import clip_tokenizer
from .common import error_html, esc, info_html
from .runner import SessionJobs, follow
from .uploads import EditorValue, read_editors
from .guidance_ui import build_guidance_addons


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def token_counter_html(text: str, steps: int = 20) -> str:
    # an empty box needs no tokenizer, so building the page does not wait for transformers
    count, capacity = prompt_token_count(clip_tokenizer(), text, int(steps or 20)) if text else (0, CHUNK_TOKENS)
    return f'<span class="easel-token-counter" title="tokens / chunk capacity">{count}/{capacity}</span>'


@dataclass
class GenerationControls:
    prefix: str
    inputs: dict[str, gr.components.Component] = field(default_factory=dict)  # request field -> component
    prompt: Any = None
    negative: Any = None
    generate: Any = None
    interrupt: Any = None
    skip: Any = None
    steps: Any = None
    seed: Any = None
    gallery: Any = None
    info: Any = None
    progress: Any = None
    preview: Any = None
    infotexts: Any = None
    last_seed: Any = None
    selected: Any = None
    extra_networks: tuple | None = None
    send_row: Any = None
    subtabs: Any = None   # a tab's own sub-tabs (img2img: img2img/Sketch/Batch), if any
    image: Any = None     # where "Send to" puts a picture
    script_titles: dict[str, str] | None = None   # selectable script title -> name
    editor_tabs: list[tuple[Any, Any]] = field(default_factory=list)  # (sub-tab, twin of the editor it paints in)


def build_prompt_area(easel: Easel, controls: GenerationControls) -> None:
    p = controls.prefix
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            controls.prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (press Ctrl+Enter to generate)",
                                         elem_id=f"{p}_prompt")
            prompt_tokens = gr.HTML(token_counter_html(""), elem_id=f"{p}_token_counter")
            emit(easel, controls.prompt)
            controls.negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="Negative prompt",
                                           elem_id=f"{p}_neg_prompt")
            emit(easel, controls.negative)
            negative_tokens = gr.HTML(token_counter_html(""), elem_id=f"{p}_negative_token_counter")
        with gr.Column(scale=1, min_width=160):
            controls.generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate",
                                          elem_classes="easel-generate")
            with gr.Row():
                controls.interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{p}_interrupt", size="sm")
                controls.skip = gr.Button("Skip", elem_id=f"{p}_skip", size="sm")
            styles = gr.Dropdown(easel.engine.styles.names(), value=[], multiselect=True, label="Styles",
                                 elem_id=f"{p}_styles")
            with gr.Row():
                apply_styles = gr.Button("Apply styles", size="sm", elem_id=f"{p}_style_apply")
                save_style = gr.Button("Save as style", size="sm", elem_id=f"{p}_style_create")
            style_name = gr.Textbox(placeholder="Name for a new style", show_label=False, elem_id=f"{p}_style_name")
            style_status = gr.HTML("", elem_id=f"{p}_style_status")
    controls.inputs.update(prompt=controls.prompt, negative_prompt=controls.negative, styles=styles)

    count_opts = dict(api_name=False, show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)
    controls.prompt.change(token_counter_html, [controls.prompt], prompt_tokens, **count_opts)
    controls.negative.change(token_counter_html, [controls.negative], negative_tokens, **count_opts)

    def apply_selected(prompt_text: str, negative_text: str, names: list[str]):
        new_prompt, new_negative, missing = easel.engine.styles.apply(prompt_text or "", negative_text or "", names or [])
        note = error_html("Unknown style: " + ", ".join(missing)) if missing else ""
        return new_prompt, new_negative, [], note

    def save_current(name: str, prompt_text: str, negative_text: str):
        try:
            easel.engine.styles.save(PromptStyle((name or "").strip(), prompt_text or "", negative_text or ""))
        except ValueError as exc:
            return gr.skip(), error_html(str(exc))
        return gr.update(choices=easel.engine.styles.names()), f"<span>Saved style {esc(name.strip())}.</span>"

    apply_styles.click(apply_selected, [controls.prompt, controls.negative, styles],
                       [controls.prompt, controls.negative, styles, style_status], api_name=False)
    save_style.click(save_current, [style_name, controls.prompt, controls.negative], [styles, style_status],
                     api_name=False)


def build_sampling(easel: Easel, controls: GenerationControls, size_controls: bool = True) -> None:
    """Sampler, steps, size, batch, CFG, LoRA composition and seed (left column of a tab)."""
    p = controls.prefix
    with gr.Row():
        sampler = gr.Dropdown(samplers.sampler_names(), value="DPM++ 2M", label="Sampling method",
                              elem_id=f"{p}_sampling")
        schedule = gr.Dropdown(samplers.schedule_labels(), value=samplers.AUTOMATIC, label="Schedule type",
                               elem_id=f"{p}_scheduler")
    emit(easel, sampler, schedule)
    controls.steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{p}_steps")
    emit(easel, controls.steps)
    controls.inputs.update(sampler_name=sampler, scheduler=schedule, steps=controls.steps)
    if size_controls:
        with gr.Row():
            controls.inputs["width"] = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{p}_width")
            controls.inputs["height"] = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{p}_height")
    with gr.Row():
        controls.inputs["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{p}_batch_count")
        controls.inputs["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{p}_batch_size")
    controls.inputs["cfg_scale"] = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{p}_cfg_scale")
    emit(easel, controls.inputs["cfg_scale"])
    controls.inputs["distilled_cfg_scale"] = gr.Slider(0, 30, value=3.5, step=0.1, label="Distilled CFG Scale",
                                                       info="guidance-distilled models (Flux dev) only",
                                                       elem_id=f"{p}_distilled_cfg_scale")
    with gr.Accordion("Guidance", open=False, elem_id=f"{p}_guidance_box"):
        controls.inputs["cfg_rescale"] = gr.Slider(0, 1, value=0, step=0.05, label="CFG rescale phi (v-prediction)",
                                                   elem_id=f"{p}_cfg_rescale")
        with gr.Row():
            controls.inputs["cfg_interval_start"] = gr.Slider(0, 1, value=0, step=0.05, label="Apply CFG from",
                                                              elem_id=f"{p}_cfg_interval_start")
            controls.inputs["cfg_interval_end"] = gr.Slider(0, 1, value=1, step=0.05, label="Apply CFG until",
                                                            elem_id=f"{p}_cfg_interval_end")
    build_guidance_addons(easel, controls)
    with gr.Accordion("LoRA composition", open=False, elem_id=f"{p}_lora_composition_box"):
        controls.inputs["lora_composition"] = gr.Radio(
            list(LORA_COMPOSITIONS), value="Merge", label="When several LoRAs are used",
            elem_id=f"{p}_lora_composition",
            info="Merge: sum into the weights. Switch: one at a time, rotating. "
                 "Composite: average each LoRA's guided prediction every step.")
        controls.inputs["lora_switch_steps"] = gr.Slider(1, 20, value=1, step=1, label="Switch every N steps",
                                                         elem_id=f"{p}_lora_switch_steps")
    with gr.Row():
        controls.seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{p}_seed", scale=4)
        dice = gr.Button("🎲", elem_id=f"{p}_random_seed", elem_classes="easel-tool", scale=0, min_width=42)
        recycle = gr.Button("♻️", elem_id=f"{p}_reuse_seed", elem_classes="easel-tool", scale=0, min_width=42)
    controls.inputs["seed"] = controls.seed
    emit(easel, controls.seed)
    extra = gr.Checkbox(False, label="Extra", elem_id=f"{p}_subseed_show")
    with gr.Group(visible=False, elem_id=f"{p}_seed_extras") as extras:
        with gr.Row():
            controls.inputs["subseed"] = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{p}_subseed")
            controls.inputs["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                            elem_id=f"{p}_subseed_strength")
        with gr.Row():
            controls.inputs["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                              elem_id=f"{p}_seed_resize_from_w")
            controls.inputs["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                              elem_id=f"{p}_seed_resize_from_h")
    extra.change(lambda on: gr.update(visible=bool(on)), extra, extras, api_name=False, show_progress="hidden")
    # AUTOMATIC1111's "Override settings": values pasted from an image that have no control here (Clip skip,
    # RNG, ENSD, eta, sigma ...); shown only when there are some, each removable before generating
    controls.inputs["override_settings"] = gr.Dropdown(
        [], value=[], multiselect=True, allow_custom_value=True, visible=False, label="Override settings",
        elem_id=f"{p}_override_settings", info="From pasted parameters; remove an entry to use your own setting.")
    controls.last_seed = gr.State(-1)
    dice.click(lambda: -1, None, controls.seed, api_name=False)
    recycle.click(lambda s: s, controls.last_seed, controls.seed, api_name=False)


def build_output(controls: GenerationControls) -> None:
    p = controls.prefix
    controls.progress = gr.HTML("", elem_id=f"{p}_progress")
    controls.preview = gr.Image(label="Preview", visible=False, interactive=False, elem_id=f"{p}_preview",
                                format="png", height=256, elem_classes="easel-preview")
    controls.gallery = gr.Gallery(label="Output", elem_id=f"{p}_gallery", columns=4, format="png",
                                  object_fit="contain", height="auto", interactive=False)
    controls.send_row = gr.Row(elem_id=f"{p}_send_row")
    controls.info = gr.HTML("", elem_id=f"html_info_{p}")
    controls.infotexts = gr.State([])
    controls.selected = gr.State(0)

    def show_selected(texts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        text = info_html(texts[index]) if texts and 0 <= index < len(texts) else gr.skip()
        return text, index

    controls.gallery.select(show_selected, controls.infotexts, [controls.info, controls.selected], api_name=False)


def wire_generation(easel: Easel, controls: GenerationControls, sessions: SessionJobs, checkpoint: gr.Dropdown,
                    build_request: Callable[[dict[str, Any]], GenerationRequest], api_name: str,
                    queue_label: str | None = None) -> None:
    """Generate/Interrupt/Skip for a tab; `build_request` turns field values into a request.

    `queue_label`: how the queue panel lists this tab's jobs when the request's mode alone would
    mislabel them (the ControlNet tab makes txt2img requests).
    """
    by_component = {component: name for name, component in controls.inputs.items()}
    by_component[checkpoint] = "checkpoint"
    components = set(by_component)  # Gradio passes a set of inputs as one {component: value} dict

    def run(values: dict, request: gr.Request):
        fields = {by_component[component]: value for component, value in values.items()}
        fields["checkpoint"] = fields.get("checkpoint") or None
        try:
            req = build_request(fields)
        except ValueError as exc:  # a problem with the inputs (e.g. no image uploaded)
            yield gr.skip(), gr.skip(), gr.skip(), error_html(str(exc)), gr.skip(), gr.skip()
            return
        submit = easel.submit_batch if not isinstance(req, GenerationRequest) else easel.submit

        def submit_labelled():
            job = submit(req, owner=session_of(request))
            if queue_label:
                job.meta["tab"] = queue_label
            return job

        yield from follow(easel, submit_labelled, sessions, session_of(request))

    outputs = [controls.progress, controls.preview, controls.gallery, controls.info, controls.infotexts,
               controls.last_seed]
    if any(isinstance(c, EditorValue) for c in components):
        _wire_with_editors(controls, run, components, outputs, api_name)
    else:
        controls.generate.click(run, components, outputs, concurrency_limit=None, api_name=api_name,
                                show_progress="hidden")  # the tab's own progress bar and preview show it
        controls.prompt.submit(run, components, outputs, concurrency_limit=None, api_name=False,
                               show_progress="hidden")

    def interrupt_job(request: gr.Request):
        job = easel.queue.get(sessions.get(session_of(request)) or "")
        if job and not job.done:
            easel.queue.cancel(job.id)

    def skip_job(request: gr.Request):
        job = easel.queue.get(sessions.get(session_of(request)) or "")
        if job and not job.done:
            job.skip()

    controls.interrupt.click(interrupt_job, None, None, concurrency_limit=None, api_name=False)
    controls.skip.click(skip_job, None, None, concurrency_limit=None, api_name=False)


# Generate in a tab with image editors: the selected sub-tab picks which hidden "route" button to press, so
# only the editor that sub-tab paints in is read (exported and uploaded); an unknown sub-tab reads none, and
# when no sub-tab can be found every editor is read, as a plain Generate would.
ROUTE_JS = """() => {
  const tabs = document.getElementById(%(tabs)s);
  const selected = tabs && tabs.querySelector('[role="tab"][aria-selected="true"]');
  const routes = %(routes)s;
  const target = document.getElementById(selected ? (routes[selected.id] || %(none)s) : %(all)s);
  if (target) target.click();
  return [];
}"""


def _wire_with_editors(controls: GenerationControls, run: Callable, components: set, outputs: list,
                       api_name: str) -> None:
    """Generate where some inputs are editors' twins (uploads.EditorValue): each run first copies, in the browser,
    the value of the editor the selected sub-tab uses into its twin, and reads no other editor (reading a painted
    editor exports its canvases and uploads them)."""
    twins = [c for c in components if isinstance(c, EditorValue)]
    p = controls.prefix

    def route(name: str, read: list) -> str:
        button = gr.Button(visible="hidden", elem_id=f"{p}_generate_{name}")
        chain = read_editors(button.click, read).then if read else button.click
        chain(run, components, outputs, concurrency_limit=None, api_name=api_name if name == "all" else False,
              show_progress="hidden")
        return f"{p}_generate_{name}"

    everything, nothing = route("all", twins), route("none", [])
    routes = {f"{tab.elem_id}-button": route(f"tab{n}", [twin]) for n, (tab, twin) in enumerate(controls.editor_tabs)
              if tab.elem_id and twin in twins}
    tabs_id = getattr(controls.subtabs, "elem_id", None) or ""
    js = ROUTE_JS % {"tabs": json.dumps(tabs_id), "routes": json.dumps(routes), "none": json.dumps(nothing),
                     "all": json.dumps(everything)}
    for trigger in (controls.generate.click, controls.prompt.submit):
        trigger(None, None, None, js=js, queue=False, api_name=False, show_progress="hidden")


def as_int(value, default: int = 0) -> int:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return default


def as_float(value, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def emit(easel: Easel, *components: Any) -> None:
    """Let extensions add controls right after these components (component_created hook)."""
    for component in components:
        easel.engine.hooks.call("component_created", component=component, elem_id=component.elem_id)


def common_request_fields(fields: dict[str, Any], script_titles: dict[str, str] | None = None) -> dict[str, Any]:
    """Typed request fields from the shared controls' raw values (scripts included)."""
    from .controlnet_ui import controlnet_request_fields
    from .guidance_ui import guidance_fields, guidance_scripts
    from .detailer_ui import detailer_request_fields
    from .regions_ui import regions_request_fields
    from .tiled_diffusion_ui import tiled_request_fields
    from .kontext_ui import kontext_request_fields
    from .scripts_ui import script_request_fields
    from ..features.wildcards import request_entry as wildcards_entry

    scripts = script_request_fields(fields, script_titles)
    units = controlnet_request_fields(fields)
    if units:
        scripts["alwayson_scripts"]["controlnet"] = {"args": units}
    scripts["alwayson_scripts"].update(wildcards_entry(fields))
    scripts["alwayson_scripts"].update(guidance_scripts(fields))
    detailer = detailer_request_fields(fields)
    if detailer:
        scripts["alwayson_scripts"]["ADetailer"] = detailer
    regions = regions_request_fields(fields)
    if regions:
        scripts["alwayson_scripts"]["Regional Prompter"] = regions
    tiled = tiled_request_fields(fields)
    if tiled:
        scripts["alwayson_scripts"]["Tiled Diffusion"] = tiled
    kontext = kontext_request_fields(fields)
    if kontext:
        scripts["alwayson_scripts"]["Kontext"] = kontext
    return dict(**scripts,
        prompt=fields.get("prompt") or "", negative_prompt=fields.get("negative_prompt") or "",
        sampler_name=fields.get("sampler_name") or "", scheduler=fields.get("scheduler") or samplers.AUTOMATIC,
        steps=as_int(fields.get("steps")), n_iter=as_int(fields.get("n_iter"), 1),
        batch_size=as_int(fields.get("batch_size"), 1), cfg_scale=as_float(fields.get("cfg_scale")),
        distilled_cfg_scale=as_float(fields.get("distilled_cfg_scale"), 3.5),
        seed=as_int(fields.get("seed"), -1), checkpoint=fields.get("checkpoint"),
        styles=list(fields.get("styles") or []), lora_composition=fields.get("lora_composition") or "Merge",
        lora_switch_steps=as_int(fields.get("lora_switch_steps"), 1),
        subseed=as_int(fields.get("subseed"), -1), subseed_strength=as_float(fields.get("subseed_strength")),
        seed_resize_from_w=as_int(fields.get("seed_resize_from_w")),
        seed_resize_from_h=as_int(fields.get("seed_resize_from_h")),
        cfg_rescale=as_float(fields.get("cfg_rescale")), cfg_interval_start=as_float(fields.get("cfg_interval_start")),
        cfg_interval_end=as_float(fields.get("cfg_interval_end"), 1.0),
        restore_faces=bool(fields.get("restore_faces")), tiling=bool(fields.get("tiling")),
        **guidance_fields(fields), **override_item_fields(fields.get("override_settings")))
