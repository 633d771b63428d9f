"""Models tab, Convert and Merge sub-tabs.

Sources are picked from the installed checkpoint and VAE lists (never typed server paths);
outputs are named, and land in models/Stable-diffusion (or beside a converted pickle).
The work itself is `model_manager.conversions` / `model_manager.merge`, run as a job on
Easel's queue so it waits for a running generation instead of competing for memory; the
handlers follow the job and show progress, then the new file's path and hash.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from ..app import Easel
from ..fileio import format_size
from ..core.jobs import Job, JobState, QueueFullError
from ..model_manager import conversions
from ..model_manager.hashing import autov2
from ..model_manager.merge import MODE_LABELS, MODES, MergeSpec, block_labels, default_name, merge_checkpoints
from ..model_manager.safe_unpickle import PICKLE_SUFFIXES
from ..paths import model_files
from .common import error_html, info_html, progress_html

POLL_SECONDS = 0.25
NONE = "None"
TO_DIFFUSERS = "Checkpoint → diffusers folder"
TO_SINGLE = "Diffusers folder → single file"
FROM_PICKLE = "Pickle (.ckpt/.pt/.bin) → .safetensors"
PRUNE = "Prune (fp16, drop EMA)"
BAKE = "Bake a VAE in"
OPERATIONS = (TO_DIFFUSERS, TO_SINGLE, FROM_PICKLE, PRUNE, BAKE)


class ToolError(ValueError):
    user_facing = True


@dataclass(frozen=True)
class Source:
    """One pickable file: what the dropdown shows, and where it is."""

    label: str
    path: Path
    kind: str  # "checkpoint" | "vae"
    format: str  # "safetensors" | "pickle" | "diffusers"


# ---- what can be picked ------------------------------------------------------------------------


def checkpoint_sources(easel: Easel) -> list[Source]:
    return [Source(c.name, c.path, "checkpoint", c.format) for c in easel.models.checkpoints()]


def vae_sources(easel: Easel) -> list[Source]:
    folder = easel.paths.model_dir("vae")
    files = model_files([folder], (".safetensors",) + PICKLE_SUFFIXES, inside_model_folders=True)
    return [Source("VAE/" + p.relative_to(folder).as_posix(), p, "vae",
                   "safetensors" if p.suffix == ".safetensors" else "pickle") for p in files]


def sources_for(easel: Easel, operation: str) -> list[Source]:
    """Sources an operation accepts; pickles only where Easel may read them (or the pickle conversion itself)."""
    checkpoints = checkpoint_sources(easel)
    allow = easel.models.allow_pickle
    if operation == TO_SINGLE:
        return [s for s in checkpoints if s.format == "diffusers"]
    if operation == FROM_PICKLE:
        return [s for s in checkpoints + vae_sources(easel) if s.format == "pickle"]
    return [s for s in checkpoints if s.format == "safetensors" or (allow and s.format == "pickle")]


def vae_choices(easel: Easel) -> list[str]:
    allow = easel.models.allow_pickle
    return [NONE] + [s.label for s in vae_sources(easel) if s.format == "safetensors" or allow]


def _find(sources: list[Source], label: str | None, field: str) -> Source:
    for source in sources:
        if source.label == label:
            return source
    if not label:
        raise ToolError(f"{field}: pick a model")
    raise ToolError(f"{field}: {label!r} is not installed (press 🔄 to refresh the lists)")


# ---- submitting ----------------------------------------------------------------------------------


Work = Callable[[conversions.ProgressFn], conversions.ConversionResult]


def _after(easel: Easel, work: Work) -> Callable[[Job], conversions.ConversionResult]:
    """The queued function: run the work with the job's progress, then rescan the model folders."""
    def run(job: Job) -> conversions.ConversionResult:
        result = work(conversions.job_progress(job))
        easel.models.refresh()  # the new model shows up in every checkpoint list
        return result
    return run


def submit_convert(easel: Easel, operation: str, source_label: str | None, name: str = "", vae_label: str | None = None,
                   half: bool = False, drop_ema: bool = True, overwrite: bool = False) -> Job:
    """Validate the choices now (errors name the field), then queue the conversion."""
    easel.models.refresh()
    if operation not in OPERATIONS:
        raise ToolError(f"conversion: choose one of {', '.join(OPERATIONS)}")
    source = _find(sources_for(easel, operation), source_label, "source")
    out_dir = easel.paths.model_dir("checkpoint")
    hashes = easel.models.hashes
    allow = easel.models.allow_pickle
    if operation == FROM_PICKLE:
        def work(progress):
            return conversions.pickle_to_safetensors(source.path, overwrite=overwrite, hashes=hashes,
                                                     progress=progress)
    elif operation == TO_DIFFUSERS:
        target = conversions.output_path(out_dir, name or f"{Path(source.label).name.rsplit('.', 1)[0]}-diffusers",
                                         suffix=None)

        def work(progress):
            return conversions.checkpoint_to_folder(source.path, target, allow_pickle=allow, overwrite=overwrite,
                                                    hashes=hashes, progress=progress)
    elif operation == TO_SINGLE:
        target = conversions.output_path(out_dir, name or Path(source.label).name)

        def work(progress):
            return conversions.folder_to_checkpoint(source.path, target, half=half, allow_pickle=allow,
                                                    overwrite=overwrite, hashes=hashes, progress=progress)
    elif operation == PRUNE:
        target = conversions.output_path(out_dir, name or f"{_stem(source.label)}-pruned")

        def work(progress):
            return conversions.prune_checkpoint(source.path, target, half=half, drop_ema=drop_ema,
                                                allow_pickle=allow, overwrite=overwrite, hashes=hashes,
                                                progress=progress)
    else:
        vae = _find(vae_sources(easel), vae_label, "VAE") if vae_label and vae_label != NONE else None
        if vae is None:
            raise ToolError("VAE: pick the VAE to bake in (files in models/VAE)")
        target = conversions.output_path(out_dir, name or f"{_stem(source.label)}-{_stem(vae.label)}")

        def work(progress):
            return conversions.bake_vae(source.path, vae.path, target, half=half, allow_pickle=allow,
                                        overwrite=overwrite, hashes=hashes, progress=progress)

    return easel.queue.submit(_after(easel, work), kind="convert", description=f"{operation}: {source.label}")


def _stem(label: str) -> str:
    return Path(label).name.rsplit(".", 1)[0]


def submit_merge(easel: Easel, primary: str | None, secondary: str | None, tertiary: str | None = None,
                 mode: str = "weighted_sum", multiplier: float = 0.5, block_weights: str = "",
                 vae_label: str | None = None, half: bool = False, drop_ema: bool = True, name: str = "",
                 overwrite: bool = False) -> Job:
    """Validate the choices now, then queue the merge; the result lands in models/Stable-diffusion."""
    easel.models.refresh()
    if mode not in MODES:
        raise ToolError(f"method: choose one of {', '.join(MODE_LABELS.values())}")
    pool = [s for s in checkpoint_sources(easel) if s.format == "safetensors"
            or (easel.models.allow_pickle and s.format == "pickle")]
    a = _find(pool, primary, "model A")
    b = _find(pool, secondary, "model B")
    c = _find(pool, tertiary, "model C") if mode == "add_difference" else None
    vae = _find(vae_sources(easel), vae_label, "VAE") if vae_label and vae_label != NONE else None
    names = {"A": a.label, "B": b.label}
    if c:
        names["C"] = c.label
    if vae:
        names["VAE"] = vae.label
    spec = MergeSpec(a.path, b.path, c.path if c else None, mode=mode, multiplier=float(multiplier),
                     block_weights=block_weights or None, vae=vae.path if vae else None, half=half,
                     drop_ema=drop_ema, names=names)
    target = conversions.output_path(easel.paths.model_dir("checkpoint"), name or default_name(spec))
    def work(progress):
        return merge_checkpoints(spec, target, allow_pickle=easel.models.allow_pickle, overwrite=overwrite,
                                 hashes=easel.models.hashes, progress=progress)

    return easel.queue.submit(_after(easel, work), kind="merge", description=f"merge {a.label} + {b.label}")


# ---- following a job -------------------------------------------------------------------------------


def _message(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if getattr(error, "user_facing", False) else f"Failed: {text}"


def result_html(result: conversions.ConversionResult) -> str:
    return info_html(f"{result.summary()}\n{result.path}")


def follow(easel: Easel, submit: Callable[[], Job]) -> Iterator[tuple[str, str]]:
    """Submit, then yield (progress, result) until the job ends."""
    try:
        job = submit()
    except (QueueFullError, ValueError, LookupError) as exc:
        yield "", error_html(_message(exc))
        return
    yield progress_html(0, "Queued"), ""
    while not job.wait(POLL_SECONDS):
        if job.state == JobState.QUEUED:
            position = easel.queue.position(job.id)
            yield progress_html(0, f"Waiting in queue (position {position})" if position else "Waiting"), ""
            continue
        p = job.progress
        yield progress_html(p.fraction, p.text if p.step == 0 else f"{p.step}/{p.total_steps} · {p.text}"), ""
    if job.state in (JobState.CANCELLED, JobState.INTERRUPTED):
        yield "", error_html("Stopped; nothing was written.")
    elif job.error is not None:
        yield "", error_html(_message(job.error))
    else:
        yield "", result_html(job.result)


def _hash_html(easel: Easel, operation: str, label: str | None) -> str:
    """Size and (when known or asked) hash of the picked source: check a pickle before converting it."""
    if not label:
        return ""
    try:
        source = _find(sources_for(easel, operation), label, "source")
    except ToolError as exc:
        return error_html(str(exc))
    known = easel.models.hashes.cached(source.path) if source.path.is_file() else None
    lines = [f"{source.label} · {source.format}"]
    if source.path.is_file():
        lines[0] += f" · {format_size(source.path.stat().st_size)}"
    if known:
        lines.append(f"sha256 {known}  (AutoV2 {autov2(known)})")
    elif source.format == "pickle":
        lines.append("sha256 not computed yet: press 'Show hash' to compare it with the publisher's.")
    return info_html("\n".join(lines))


def _compute_hash(easel: Easel, operation: str, label: str | None) -> str:
    try:
        source = _find(sources_for(easel, operation), label, "source")
    except ToolError as exc:
        return error_html(str(exc))
    if source.path.is_file():
        easel.models.hashes.sha256(source.path)
    return _hash_html(easel, operation, label)


# ---- layout ------------------------------------------------------------------------------------------


def _labels(sources: list[Source]) -> list[str]:
    return [s.label for s in sources]


def build_convert(easel: Easel) -> None:
    gr.Markdown("Make a new model file from an installed one. Results go to `models/Stable-diffusion` "
                "(a converted pickle is written beside it). Nothing is overwritten unless you tick *Overwrite*.")
    with gr.Row():
        operation = gr.Radio(list(OPERATIONS), value=TO_DIFFUSERS, label="Conversion", elem_id="convert_operation")
    with gr.Row():
        first = _labels(sources_for(easel, TO_DIFFUSERS))
        source = gr.Dropdown(first, value=first[0] if first else None, label="Source", elem_id="convert_source",
                             scale=4)
        vae = gr.Dropdown(vae_choices(easel), value=NONE, label="VAE to bake in", visible=False,
                          elem_id="convert_vae", scale=3)
        refresh = gr.Button("🔄", elem_classes="easel-tool", scale=0, min_width=42, elem_id="convert_refresh")
    source_info = gr.HTML(_hash_html(easel, TO_DIFFUSERS, first[0] if first else None))
    with gr.Row():
        name = gr.Textbox(label="Output name (empty: derived from the source)", elem_id="convert_name", scale=4)
        half = gr.Checkbox(False, label="Save as fp16", elem_id="convert_half", visible=False)
        drop_ema = gr.Checkbox(True, label="Drop EMA weights", elem_id="convert_drop_ema", visible=False)
        overwrite = gr.Checkbox(False, label="Overwrite", elem_id="convert_overwrite")
    with gr.Row():
        run = gr.Button("Convert", variant="primary", elem_id="convert_run")
        show_hash = gr.Button("Show hash", elem_id="convert_hash", visible=False)
    progress = gr.HTML("")
    result = gr.HTML("", elem_id="convert_result")

    def operation_changed(op: str):
        choices = _labels(sources_for(easel, op))
        value = choices[0] if choices else None
        return (gr.update(choices=choices, value=value), gr.update(visible=op == BAKE, choices=vae_choices(easel)),
                gr.update(visible=op in (TO_SINGLE, PRUNE, BAKE), value=op == PRUNE),
                gr.update(visible=op == PRUNE), gr.update(visible=op != FROM_PICKLE),
                gr.update(visible=op == FROM_PICKLE), _hash_html(easel, op, value))

    operation.change(operation_changed, operation, [source, vae, half, drop_ema, name, show_hash, source_info])

    def refreshed(op: str, current: str | None):
        easel.models.refresh()
        choices = _labels(sources_for(easel, op))
        value = current if current in choices else (choices[0] if choices else None)
        return gr.update(choices=choices, value=value), gr.update(choices=vae_choices(easel))

    refresh.click(refreshed, [operation, source], [source, vae])
    source.change(lambda op, label: _hash_html(easel, op, label), [operation, source], source_info)
    show_hash.click(lambda op, label: _compute_hash(easel, op, label), [operation, source], source_info)

    def convert(op, label, out_name, vae_label, fp16, ema, replace):
        yield from follow(easel, lambda: submit_convert(easel, op, label, out_name or "", vae_label, bool(fp16),
                                                        bool(ema), bool(replace)))

    run.click(convert, [operation, source, name, vae, half, drop_ema, overwrite], [progress, result])


def build_merge(easel: Easel) -> None:
    gr.Markdown("Merge checkpoints of the same architecture into a new `.safetensors` in `models/Stable-diffusion`. "
                "The file's metadata records the sources (name and hash), the formula, M and any block weights.")
    choices = [s.label for s in checkpoint_sources(easel) if s.format == "safetensors"
               or (easel.models.allow_pickle and s.format == "pickle")]
    with gr.Row():
        a = gr.Dropdown(choices, label="Model A (primary)", elem_id="merge_primary", scale=3)
        b = gr.Dropdown(choices, label="Model B (secondary)", elem_id="merge_secondary", scale=3)
        c = gr.Dropdown(choices, label="Model C (tertiary)", elem_id="merge_tertiary", scale=3, visible=False)
        refresh = gr.Button("🔄", elem_classes="easel-tool", scale=0, min_width=42, elem_id="merge_refresh")
    with gr.Row():
        mode = gr.Radio([(f"{MODE_LABELS[m]}: {MODES[m]}", m) for m in MODES], value="weighted_sum",
                        label="Method", elem_id="merge_mode")
        multiplier = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Multiplier (M)", elem_id="merge_multiplier")
    with gr.Accordion("Block weights (UNet)", open=False):
        gr.Markdown("One value per UNet block, replacing M there: "
                    f"SD 1.x/2.x `{','.join(block_labels(12, False)[:3])},...,OUT11` (25 values), "
                    "SDXL IN00-IN08, M00, OUT00-OUT08 (19). Put BASE first (26 / 20 values) to set the text "
                    "encoder, VAE and other tensors; without it they use M. Empty: M everywhere.")
        block_weights = gr.Textbox(label="Block weights", placeholder="BASE,IN00,IN01,...,M00,OUT00,...,OUT11",
                                   elem_id="merge_block_weights")
    with gr.Row():
        vae = gr.Dropdown(vae_choices(easel), value=NONE, label="Bake in VAE", elem_id="merge_vae")
        half = gr.Checkbox(False, label="Save as fp16", elem_id="merge_half")
        drop_ema = gr.Checkbox(True, label="Drop EMA weights", elem_id="merge_drop_ema")
    with gr.Row():
        name = gr.Textbox(label="Output name (empty: A_0.5-B_0.5-method-merged)", elem_id="merge_name", scale=4)
        overwrite = gr.Checkbox(False, label="Overwrite", elem_id="merge_overwrite")
    run = gr.Button("Merge", variant="primary", elem_id="merge_run")
    progress = gr.HTML("")
    result = gr.HTML("", elem_id="merge_result")

    mode.change(lambda m: gr.update(visible=m == "add_difference"), mode, c)

    def refreshed():
        easel.models.refresh()
        names = [s.label for s in checkpoint_sources(easel) if s.format == "safetensors"
                 or (easel.models.allow_pickle and s.format == "pickle")]
        return (gr.update(choices=names), gr.update(choices=names), gr.update(choices=names),
                gr.update(choices=vae_choices(easel)))

    refresh.click(refreshed, None, [a, b, c, vae])

    def merge(pa, pb, pc, m, mult, weights, vae_label, fp16, ema, out_name, replace):
        yield from follow(easel, lambda: submit_merge(easel, pa, pb, pc, m, mult, weights or "", vae_label,
                                                      bool(fp16), bool(ema), out_name or "", bool(replace)))

    run.click(merge, [a, b, c, mode, multiplier, block_weights, vae, half, drop_ema, name, overwrite],
              [progress, result])

