"""From the request's prompts to a ready denoiser: styles, extra networks, schedules, encoding.

Order, as in AUTOMATIC1111: apply styles; take `<lora:...>` tags out of both prompts;
patch the model with the LoRAs (Merge) or prepare one patch per LoRA (Switch,
Composite); parse scheduling/alternation/AND; encode every distinct text once with
emphasis and embeddings.

Planning may patch the text encoders to encode, but the denoiser's weights belong to the
pass that samples: each pass samples inside `with plan.patches_applied():`, which sets the
shared model's weight patches to exactly this plan's set (the LoRAs of its prompt plus what
features add, e.g. PhotoMaker's LoRA). The patcher remembers the applied set, so activating
the set that is already on costs nothing, and a hires pass with other `<lora:>` tags never
leaks them into the first pass. Problems that should not stop a generation (an unknown
LoRA or style, a LoRA for another architecture) become warnings in the result.
"""
from __future__ import annotations

import re

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch

from .conditioning import PromptEncoder, StepConditioning
from .denoiser import CFGDenoiser, SigmaSpace
from .extra_networks import NetworkCall, extract
from .prompts import schedule_prompt

if TYPE_CHECKING:
    from ..model_manager.loader import LoadedModel
    from .request import GenerationRequest
    from .styles import StyleStore

DenoiserFactory = Callable[[int, "torch.Tensor | None", "torch.Tensor | None"], SigmaSpace]


class PatchReport(Protocol):
    matched: int
    unmatched: list[str]
    seconds: float
    cached: bool


class WeightPatcher(Protocol):
    """Sets one model's weight patches to exactly the given set (remembering it, so the same set is free)."""

    def set(self, specs: list[Any]) -> PatchReport: ...


class PromptNetworks(Protocol):
    """Extra networks in prompts and textual-inversion embeddings; features/lora.py implements it."""

    def load(self, call: NetworkCall) -> Any:
        """The patch spec for a `<lora:...>` call; raises ValueError or OSError to make it a warning."""

    def patcher(self, model: "LoadedModel") -> WeightPatcher: ...

    def compose(self, mode: str, patcher: WeightPatcher, specs: list[Any], denoisers: list[CFGDenoiser],
                switch_steps: int) -> SigmaSpace:
        """Several LoRAs without merging them (Switch, Composite), one denoiser per LoRA."""

    def embeddings(self) -> list[Any]:
        """Every textual-inversion embedding the prompt encoder may use."""

    def spec_name(self, spec: Any) -> str: ...


@dataclass
class PromptPlan:
    prompt: str                 # after styles, tags kept (this is what infotext records)
    negative_prompt: str
    clip_skip: int
    loras: list[Any] = field(default_factory=list)   # the prompt's LoRA specs (features/lora.LoraSpec)
    lora_mode: str = "Merge"
    switch_steps: int = 1
    embeddings: dict[str, Any] = field(default_factory=dict)  # textual inversions the prompts used, by name
    warnings: list[str] = field(default_factory=list)
    make_denoiser: DenoiserFactory | None = None
    lora_seconds: float = 0.0
    model: "LoadedModel | None" = None
    # weight patches features add for this pass (e.g. PhotoMaker's LoRA), on top of the prompt's LoRAs
    extra_patches: list[Any] = field(default_factory=list)
    patcher: WeightPatcher | None = None
    # what features change on every denoiser this plan makes (e.g. PhotoMaker's conditioning); an edit
    # that returns a denoiser replaces it (a wrapper, e.g. the refiner's mid-pass switch)
    denoiser_edits: list[Callable[[SigmaSpace], "SigmaSpace | None"]] = field(default_factory=list)

    def denoiser(self, batch: int, extra: "torch.Tensor | None", uncond_extra: "torch.Tensor | None") -> SigmaSpace:
        """A denoiser for a batch, with every feature's edits applied."""
        made = self.make_denoiser(batch, extra, uncond_extra)
        for edit in self.denoiser_edits:
            made = edit(made) or made
        return made

    @property
    def merged(self) -> bool:
        """One set of LoRAs summed into the weights (Switch/Composite set theirs per step)."""
        return len(self.loras) <= 1 or self.lora_mode == "Merge"

    def weight_patches(self) -> list[Any]:
        return (list(self.loras) if self.merged else []) + list(self.extra_patches)

    @contextmanager
    def patches_applied(self) -> Iterator[None]:
        """The shared model carries exactly this plan's weight patches while the body samples."""
        if self.patcher is not None and (self.merged or self.extra_patches):
            self.patcher.set(self.weight_patches())
        yield


def _encode(model: "LoadedModel", positive: str, negative: str, steps: int, options: dict[str, Any],
            embeddings: list[Any]) -> tuple[PromptEncoder, StepConditioning, StepConditioning]:
    encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], embeddings,
                            options["comma_padding_backtrack"], options["emphasis"] == "Original", options)
    cond = encoder.encode_scheduled(schedule_prompt(positive, steps))
    uncond = encoder.encode_scheduled(schedule_prompt(negative, steps, allow_and=False))
    return encoder, cond, uncond


def plan_prompts(request: "GenerationRequest", model: "LoadedModel", options: dict[str, Any],
                 networks: PromptNetworks, styles: "StyleStore") -> PromptPlan:
    prompt, negative, missing_styles = styles.apply(request.prompt, request.negative_prompt, request.styles)
    if options.get("enable_prompt_comments", True):
        prompt, negative = strip_comments(prompt), strip_comments(negative)
    patcher = networks.patcher(model)
    plan = PromptPlan(prompt, negative, options["CLIP_stop_at_last_layers"], lora_mode=request.lora_composition,
                      switch_steps=request.lora_switch_steps, model=model, patcher=patcher)
    plan.warnings += [f"Style {name!r} not found in styles.csv" for name in missing_styles]
    positive_text, calls = extract(prompt)
    negative_text, negative_calls = extract(negative)
    for call in [] if request.disable_extra_networks else calls + negative_calls:
        if call.kind != "lora":
            plan.warnings.append(f"{call.raw}: '{call.kind}' networks are not supported; ignored")
            continue
        try:
            plan.loras.append(networks.load(call))
        except (ValueError, OSError) as exc:
            plan.warnings.append(f"{call.raw}: {exc}; ignored")

    embeddings = networks.embeddings()
    plan.warnings += _unusable_embeddings(networks, positive_text + "\n" + negative_text)
    steps = request.steps
    if len(plan.loras) <= 1 or plan.lora_mode == "Merge":
        report = patcher.set(plan.loras)
        plan.lora_seconds = report.seconds
        _warn_unmatched(plan, report, len(plan.loras))
        encoder, cond, uncond = _encode(model, positive_text, negative_text, steps, options, embeddings)
        empty = encoder.encode("")
        plan.embeddings.update(encoder.used_embeddings)
        plan.make_denoiser = lambda batch, ids, uncond_ids: CFGDenoiser(
            model, cond, uncond, request.cfg_scale, batch, empty, ids, uncond_ids)
        return plan

    prepared = []
    for spec in plan.loras:  # each LoRA with its own text-encoder patch and conditioning
        report = patcher.set([spec])
        plan.lora_seconds += report.seconds
        _warn_unmatched(plan, report, 1, networks.spec_name(spec))
        encoder, cond, uncond = _encode(model, positive_text, negative_text, steps, options, embeddings)
        plan.embeddings.update(encoder.used_embeddings)
        prepared.append((cond, uncond, encoder.encode("")))

    def make(batch: int, ids, uncond_ids) -> SigmaSpace:
        denoisers = [CFGDenoiser(model, c, u, request.cfg_scale, batch, e, ids, uncond_ids) for c, u, e in prepared]
        return networks.compose(plan.lora_mode, patcher, plan.loras, denoisers, request.lora_switch_steps)

    plan.make_denoiser = make
    return plan


def strip_comments(text: str) -> str:
    """AUTOMATIC1111's prompt comments: a line starting with # goes, and so does the rest of a line after #."""
    if "#" not in text:
        return text
    text = re.sub(r"(^|\n)#[^\n]*(?=\n|$)", "", text)
    return re.sub(r"#[^\n]*", "", text).strip("\n")


def _unusable_embeddings(networks: PromptNetworks, text: str) -> list[str]:
    """A word of the prompt that names an embedding file Easel could not read (e.g. a refused pickle) is
    left as plain text, as AUTOMATIC1111 would; the result says so instead of ignoring it silently."""
    errors = getattr(networks, "embedding_errors", dict)()
    return [f"embedding {name}: {why}; used as plain text" for name, why in errors.items()
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]


def _warn_unmatched(plan: PromptPlan, report, count: int, name: str | None = None) -> None:
    if report.unmatched and not report.cached:
        label = f"LoRA {name}" if name else ("LoRA" if count == 1 else "LoRAs")
        plan.warnings.append(f"{label}: {len(report.unmatched)} layer(s) do not exist in this model "
                             f"(made for another architecture?), e.g. {report.unmatched[0]}")
