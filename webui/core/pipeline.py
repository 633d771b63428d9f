"""The one protocol every generation feature implements, and the state it sees.

The engine runs a request as a list of passes: the first (txt2img from noise, or img2img
from an init image) and any a feature adds (hires fix adds a second, larger one). For each
pass and batch it asks every registered feature, in registration order, to contribute:

    parse(request)               -> (this feature's typed arguments or None, field errors); called
                                 once per request, before anything loads (Engine.prepare)
    begin(run)                   once per request, after the model and the first plan: read
                                 inputs, set the first pass's size or init, add passes
    begin_pass(run, p)           once per pass: controls at this pass's size, prompt changes,
                                 weight patches (p.plan.prompts.extra_patches)
    installed(run, p)            a context around each batch's sampling of the pass (IP-Adapter
                                 attention processors on, then off)
    prepare_batch(run, batch)    per batch, before sampling: e.g. pick the batch's init images
    finish_images(run, batch, images, latents) -> images   after decoding: composites, paste-back
    infotext(run)                -> the keys this feature writes into every image's infotext
    image_prompts(prepared, seed, count) -> [ImagePrompt] or None   once per request, before any prompt
                                 is planned: each image's own prompts and seed (wildcards); the engine
                                 then runs each run of alike images as its own plain request

A pass starts from noise unless it has an `init` (a callable the owning feature sets) that
turns the batch (and the previous pass's latents) into init latents, a masked denoiser, image
conditioning for inpainting models, or a finished result. The engine imports no feature:
`app.build()` registers the built-in ones, and an extension can register its own through
`webui.extensions.api`. Features keep their per-request data in `run.state[feature.name]`.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Mapping

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..model_manager.loader import LoadedModel
    from .hooks import GenerationContext
    from .jobs import Job
    from .processing import Plan
    from .request import FieldError, GenerationRequest
    from .seeds import ImageRNG


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed validation, with every feature's arguments parsed (once) and typed."""

    request: "GenerationRequest"
    args: Mapping[str, Any]   # feature name -> its parsed arguments (None: the feature is off)


@dataclass
class Sampling:
    """One batch of one pass, as the init step may shape it before the sampler runs."""

    batch: "Batch"
    rng: "ImageRNG"
    first_noise: "torch.Tensor"
    denoiser: Any                       # core.denoiser.SigmaSpace
    previous: "torch.Tensor | None"     # the previous pass's latents (None in the first pass)
    init: "torch.Tensor | None" = None  # init latents: sample from these at `strength`
    # what the 9-channel (inpainting) models see besides the latents: (masks 0/1 at pixel size, pixels
    # of the masked image); None: the whole picture is to be painted, as AUTOMATIC1111 does for txt2img
    inpaint_inputs: tuple["torch.Tensor", list["Image.Image"]] | None = None
    inpaint_mask_rounded: bool = True   # False: those models see the mask's fractions (AUTOMATIC1111's mask_round)
    # set by an init step that has the answer already (denoising strength 0: the encoded image)
    result: "torch.Tensor | None" = None


InitStep = Callable[["Run", "Pass", Sampling], None]


@dataclass(frozen=True)
class ImagePrompt:
    """One image's prompts and seed as a feature drew them (wildcards), and the infotext keys that say how."""

    prompt: str
    negative_prompt: str
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)   # e.g. {"Template": "a {cat|dog}"}
    # the always-on scripts of this image's request (None: the request's); the drawing feature leaves itself
    # out, so a drawn text is never drawn again
    alwayson_scripts: Mapping[str, Any] | None = None


@dataclass
class Pass:
    """One sampling pass: its own request view (size, steps, prompts, sampler) and plan."""

    name: str                               # "first", "hires", ...
    request: "GenerationRequest"            # this pass's view of the request
    plan: "Plan"
    size: tuple[int, int]                   # (width, height) of this pass's images
    steps: int
    strength: float | None = None           # denoising strength; None: from pure noise
    exact_steps: bool = False               # run exactly `steps` (hires) rather than steps x strength
    init: InitStep | None = None            # how this pass gets its init latents (img2img, hires upscale)
    # the picture this pass starts from (img2img's first input), for features that need one (ControlNet)
    source_image: "Image.Image | None" = None

    def steps_to_run(self) -> int:
        from . import samplers

        return samplers.steps_to_run(self.steps, self.strength is not None, self.strength
                                     if self.strength is not None else 1.0, self.exact_steps)


@dataclass
class Batch:
    index: int                  # 0-based batch number (of n_iter)
    seeds: list[int]
    first: int                  # index of the batch's first image in the request
    # per-image data a feature attaches (e.g. img2img's prepared images), keyed by feature name
    items: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Run:
    """One request on its way through the engine."""

    request: "GenerationRequest"
    model: "LoadedModel"
    job: "Job"
    context: "GenerationContext"
    passes: list[Pass] = field(default_factory=list)
    # each feature's parsed arguments (PreparedRequest.args), read-only
    args: Mapping[str, Any] = field(default_factory=dict)
    # per-feature state, keyed by the feature's name (prepared inputs, what later passes reuse ...)
    state: dict[str, Any] = field(default_factory=dict)
    # plans a further pass from its request view (new prompts, sampler; the first pass's seeds), for the
    # request's model or another one given as the second argument (the refiner's conditioning)
    plan_for: Callable[..., "Plan"] | None = None
    # runs another whole request inside this job (a detailer's inpainting): same queue slot, the job's
    # Interrupt/Skip, this job's progress left as it was; images are returned, not saved
    generate: Callable[["GenerationRequest"], Any] | None = None

    @property
    def first(self) -> Pass:
        return self.passes[0]

    def pass_named(self, name: str) -> Pass | None:
        return next((p for p in self.passes if p.name == name), None)


class Feature:
    """Base class with every step a no-op; a feature overrides what it takes part in."""

    name: str = ""

    def parse(self, request: "GenerationRequest") -> tuple[Any, list["FieldError"]]:
        """(arguments or None when off, errors naming the fields); by default no arguments, `validate`'s errors."""
        return None, list(self.validate(request))

    def validate(self, request: "GenerationRequest") -> Iterable["FieldError"]:
        """Field errors of a feature without parsed arguments of its own (see `parse`)."""
        return ()

    def begin(self, run: Run) -> None:
        pass

    def begin_pass(self, run: Run, p: Pass) -> None:
        pass

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        return nullcontext()

    def prepare_batch(self, run: Run, batch: Batch) -> None:
        pass

    def finish_images(self, run: Run, batch: Batch, images: list["Image.Image"],
                      latents: "torch.Tensor") -> list["Image.Image"]:
        return images

    def infotext(self, run: Run) -> dict[str, Any]:
        return {}

    def image_prompts(self, prepared: PreparedRequest, seed: int, count: int) -> "list[ImagePrompt] | None":
        """Each image's own prompts and seed, drawn before anything is planned (the first feature that answers
        wins); None: every image uses the request's. `count` is the request's number of images; a list of
        another length changes it (combinatorial wildcards make one image per combination)."""
        return None

    def fields_from_infotext(self, params: dict[str, str], fields: dict[str, Any]) -> dict[str, Any]:
        """Request fields (AUTOMATIC1111 names) this feature restores from a pasted infotext."""
        return {}
