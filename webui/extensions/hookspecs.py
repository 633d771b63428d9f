"""Every hook an Easel extension can implement — this file is the whole contract.

Hooks use pluggy: implement a function with the hook's name, decorated with
`easel_api.hookimpl`, taking any subset of the arguments listed (by name), in a
module your extension's manifest names as its entry. New arguments may be added to a
hook in later API versions; implementations that take fewer keep working.

Order of the generation hooks for one request:

    before_process -> process -> [per batch: process_batch, extra_noise,
    per step: before_cfg -> after_cfg -> step_end, then per image: before_image_saved -> image_saved]
    -> postprocess

Hooks receive read-only views of the engine's objects (webui/extensions/views.py): the
request and result cannot be changed in place; `before_process` and `postprocess` return
`dataclasses.replace(request_or_result, ...)` to change them (each extension gets the previous
one's replacement). The model is a `ModelView`. The per-step `StepContext` and the
`params`/`fields` dicts are the hooks' own channels and are changed in place.

A hook that raises is logged, reported once in the UI, and skipped; generation goes on.
HOOK_API_VERSION changes its major number only when a hook is removed or changes meaning.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # the contract test resolves every annotation (tests/test_extension_contract.py)
    import gradio as gr
    import torch
    from fastapi import FastAPI
    from PIL import Image

    from ..app import Easel
    from .api import (Feature, GenerationContext, GenerationRequest, ModelView, Result, Script, SettingSpec,
                      StepContext)

PROJECT = "easel"
# 1.1: api.resolve_seed, api.MAX_SEED
# 2.0: typed hooks with read-only views; replacing hooks return the new value; script Args dataclasses
# 2.1: register_features: engine features (api.Feature), the protocol Easel's own features implement
HOOK_API_VERSION = "2.1"
hookspec = pluggy.HookspecMarker(PROJECT)


# ---- application ---------------------------------------------------------------------------


@hookspec
def app_started(app: FastAPI, easel: Easel) -> None:
    """The FastAPI app is assembled; add routes.

    Example:

        @hookimpl
        def app_started(app):
            @app.get("/my-extension/hello")
            def hello():
                return {"hello": "world"}
    """


@hookspec
def model_loaded(model: ModelView) -> None:
    """A checkpoint finished loading; `model` says which (name, hash, family, device, dtype...).

    Example:

        @hookimpl
        def model_loaded(model):
            print("now using", model.name, model.hash, model.architecture, "on", model.device, model.dtype)
    """


@hookspec
def register_scripts() -> Sequence[Script]:
    """Return `Script` instances: selectable (dropdown) or always-on (accordion) ones.

    Example:

        @hookimpl
        def register_scripts():
            return [MyScript()]
    """


@hookspec
def register_features() -> Sequence[Feature]:
    """Return `Feature` instances: they take part in every generation like Easel's own features.

    A feature parses and checks its own arguments once (`parse`), may add or shape passes
    (`begin`, `begin_pass`), install something around sampling (`installed`), change the
    decoded images (`finish_images`) and write infotext keys (`infotext`); see api.Feature.
    `image_prompts` draws each image's own prompts and seed before anything is planned (Easel's
    wildcards do); the engine then runs each run of alike images as a plain request, and the
    generation hooks still see the whole request once (before_process, postprocess).
    Extension features run after the built-in ones; one that raises is reported and skipped.

    Example:

        @hookimpl
        def register_features():
            from webui.extensions import api as easel

            class Signature(easel.Feature):
                name = "signature"

                def infotext(self, run):
                    return {"Signed": "yes"}

            return [Signature()]
    """


# ---- user interface ---------------------------------------------------------------------------


@hookspec
def ui_tabs() -> Sequence[tuple[str, Callable[[], None]]]:
    """Return [(tab label, build function)]; the function creates Gradio components inside the tab.

    Example:

        @hookimpl
        def ui_tabs():
            def build():
                gr.Markdown("Hello from my extension")
            return [("My tab", build)]
    """


@hookspec
def ui_settings() -> Sequence[SettingSpec]:
    """Return `SettingSpec`s; they appear in the Settings tab and are saved in config.json.

    Example:

        @hookimpl
        def ui_settings():
            return [SettingSpec("my_ext_strength", 0.5, "Strength of my effect", minimum=0, maximum=1)]
    """


@hookspec
def component_created(component: gr.components.Component, elem_id: str) -> None:
    """A UI component with an elem_id was created; components you create now appear right after it.

    Example:

        @hookimpl
        def component_created(component, elem_id):
            if elem_id == "txt2img_cfg_scale":
                gr.Checkbox(label="My toggle", elem_id="my_ext_toggle")
    """


@hookspec
def infotext_pasted(text: str, fields: dict[str, Any]) -> None:
    """Parameters were pasted (PNG Info, send-to); change `fields` (request field -> value) in place.

    Example:

        @hookimpl
        def infotext_pasted(text, fields):
            if "My effect" in text:
                fields["cfg_scale"] = 5.0
    """


# ---- generation -------------------------------------------------------------------------------


@hookspec
def before_process(request: GenerationRequest, context: GenerationContext) -> GenerationRequest | None:
    """Before anything is prepared; return a changed copy of the (read-only) request to change it.

    Example:

        @hookimpl
        def before_process(request):
            from dataclasses import replace
            return replace(request, prompt=request.prompt + ", masterpiece")
    """


@hookspec
def process(request: GenerationRequest, context: GenerationContext) -> None:
    """Model loaded and prompts planned (context.model, context.plan); last chance before sampling.

    Example:

        @hookimpl
        def process(request, context):
            if request.cfg_scale > 15:
                context.extra_params["My note"] = "high CFG"
    """


@hookspec
def extra_noise(noise: torch.Tensor, request: GenerationRequest, context: GenerationContext) -> torch.Tensor | None:
    """The initial noise of a batch (B, context.model.latent_channels, h, w); return a tensor to replace it, or None.

    Example:

        @hookimpl
        def extra_noise(noise):
            return noise * 1.02
    """


@hookspec
def process_batch(request: GenerationRequest, batch_index: int, seeds: Sequence[int],
                  context: GenerationContext) -> None:
    """A batch (of `batch_size` images with these seeds) is about to be sampled.

    Example:

        @hookimpl
        def process_batch(batch_index, seeds):
            print(f"batch {batch_index}: seeds {seeds}")
    """


@hookspec
def before_cfg(step: StepContext) -> None:
    """Before the UNet call of a sampling step. `step` is a StepContext: change `step.x` (model input
    latents, including the uncond/cond copies) or `step.embeds` (text conditioning batch) in place.

    Example:

        @hookimpl
        def before_cfg(step):
            step.x = step.x * 1.0
    """


@hookspec
def after_cfg(step: StepContext) -> None:
    """After classifier-free guidance: `step.prediction` is the combined prediction; replace it to change it.

    Example:

        @hookimpl
        def after_cfg(step):
            if step.index == 0:
                step.prediction = step.prediction.clamp(-4, 4)
    """


@hookspec
def step_end(step: StepContext) -> None:
    """After a sampler step: `step.latents` are the new latents; assign a tensor to change them.

    Example:

        @hookimpl
        def step_end(step):
            if step.index == 3:
                step.latents = step.latents * 0.99
    """


@hookspec
def before_image_saved(image: Image.Image, params: dict[str, Any], request: GenerationRequest,
                       context: GenerationContext) -> Image.Image | None:
    """An image is about to be saved; edit `params` (infotext keys) in place, or return a new PIL image
    (do not draw on `image` itself: it is the engine's).

    Example:

        @hookimpl
        def before_image_saved(image, params):
            params["Watermark"] = "mine"
            return image.convert("L").convert("RGB")
    """


@hookspec
def image_saved(path: str, image: Image.Image, infotext: str, request: GenerationRequest) -> None:
    """An image was written to `path` with `infotext`.

    Example:

        @hookimpl
        def image_saved(path, infotext):
            with open(path + ".txt", "w", encoding="utf-8") as sidecar:
                sidecar.write(infotext)
    """


@hookspec
def postprocess(request: GenerationRequest, result: Result, context: GenerationContext) -> Result | None:
    """All images are done; return a changed copy of the (read-only) result to change it.

    Example:

        @hookimpl
        def postprocess(result):
            from dataclasses import replace
            return replace(result, warnings=[*result.warnings, f"{len(result.images)} images made with my extension"])
    """


HOOK_NAMES = ("app_started", "model_loaded", "register_scripts", "register_features", "ui_tabs", "ui_settings", "component_created",
              "infotext_pasted", "before_process", "process", "extra_noise", "process_batch", "before_cfg",
              "after_cfg", "step_end", "before_image_saved", "image_saved", "postprocess")
