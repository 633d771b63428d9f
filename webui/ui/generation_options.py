"""Per-image options under the sampling controls of txt2img and img2img: Restore faces and
Tiling (AUTOMATIC1111's checkboxes, same elem_ids), and Dynamic Prompts' accordion (enable,
combinatorial, max generations, the wildcards the folder offers). No diffusion logic here:
the values become request fields and `alwayson_scripts` entries (features/wildcards)."""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from ..features.wildcards import COMBINATORIAL_FIELD, ENABLED_FIELD, MAX_GENERATIONS, MAX_GENERATIONS_FIELD
from .common import esc
from .generation_controls import GenerationControls


def build_face_and_tiling(controls: GenerationControls) -> None:
    p = controls.prefix
    with gr.Row():
        controls.inputs["restore_faces"] = gr.Checkbox(False, label="Restore faces", elem_id=f"{p}_restore_faces",
                                                       info="Settings → Face restoration picks the model")
        controls.inputs["tiling"] = gr.Checkbox(False, label="Tiling", elem_id=f"{p}_tiling",
                                                info="A picture that repeats seamlessly")


def wildcards_html(easel: Easel) -> str:
    """The wildcards the folder offers, as a prompt would name them."""
    library = easel.engine.feature("wildcards").library()
    names = library.names()
    where = f"<p>Folder: <code>{esc(library.folder)}</code></p>"
    if not names:
        return where + "<p>No wildcards yet: put .txt, .yaml or .json files there and press Refresh.</p>"
    items = "".join(f"<li><code>__{esc(name)}__</code></li>" for name in names)
    return f'{where}<ul class="easel-wildcards">{items}</ul>'


def build_wildcards(easel: Easel, controls: GenerationControls) -> None:
    p = controls.prefix
    with gr.Accordion("Dynamic Prompts", open=False, elem_id=f"{p}_dynamic_prompts"):
        i = controls.inputs
        i[ENABLED_FIELD] = gr.Checkbox(False, label="Dynamic Prompts enabled", elem_id=f"{p}_dynamic_prompts_enabled",
                                       info="`{a|b}` picks one, `{2$$a|b|c}` two, `__name__` a line of a wildcards "
                                            "file; each image draws from its own seed")
        with gr.Row():
            i[COMBINATORIAL_FIELD] = gr.Checkbox(False, label="Combinatorial generation",
                                                 elem_id=f"{p}_dynamic_prompts_combinatorial",
                                                 info="One image per combination (batch count is ignored)")
            i[MAX_GENERATIONS_FIELD] = gr.Slider(0, MAX_GENERATIONS, value=0, step=1,
                                                 label="Max generations (0 = all combinations)",
                                                 elem_id=f"{p}_dynamic_prompts_max_generations")
        listing = gr.HTML(wildcards_html(easel), elem_id=f"{p}_dynamic_prompts_wildcards")
        refresh = gr.Button("Refresh wildcards", size="sm", elem_id=f"{p}_dynamic_prompts_refresh")
    refresh.click(lambda: wildcards_html(easel), None, listing, api_name=False, show_progress="hidden")
