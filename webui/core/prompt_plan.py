"""From the request's prompts to a ready denoiser: styles, extra networks, schedules, encoding.

Order, as in AUTOMATIC1111: apply styles; take `<lora:...>` tags out of both prompts;
patch the model with the LoRAs (Merge) or prepare one patch per LoRA (Switch,
Composite); parse scheduling/alternation/AND; encode every distinct text once with
emphasis and embeddings. Problems that should not stop a generation (an unknown
LoRA or style, a LoRA for another architecture) become warnings in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from .conditioning import PromptEncoder, StepConditioning
from .denoiser import CFGDenoiser, SigmaSpace
from .extra_networks import extract
from .prompts import schedule_prompt

if TYPE_CHECKING:
    from ..features.embeddings import Embedding, EmbeddingLibrary
    from ..features.lora import LoraLibrary, LoraSpec
    from ..model_manager.loader import LoadedModel
    from .request import GenerationRequest
    from .styles import StyleStore

DenoiserFactory = Callable[[int, "torch.Tensor | None", "torch.Tensor | None"], SigmaSpace]


@dataclass
class PromptPlan:
    prompt: str                 # after styles, tags kept (this is what infotext records)
    negative_prompt: str
    clip_skip: int
    loras: list["LoraSpec"] = field(default_factory=list)
    lora_mode: str = "Merge"
    switch_steps: int = 1
    embeddings: dict[str, "Embedding"] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    make_denoiser: DenoiserFactory | None = None
    lora_seconds: float = 0.0


def _encode(model: "LoadedModel", positive: str, negative: str, steps: int, options: dict[str, Any],
            embeddings: list["Embedding"]) -> tuple[PromptEncoder, StepConditioning, StepConditioning]:
    encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], embeddings,
                            options["comma_padding_backtrack"], options["emphasis"] == "Original")
    cond = encoder.encode_scheduled(schedule_prompt(positive, steps))
    uncond = encoder.encode_scheduled(schedule_prompt(negative, steps, allow_and=False))
    return encoder, cond, uncond


def plan_prompts(request: "GenerationRequest", model: "LoadedModel", options: dict[str, Any],
                 loras: "LoraLibrary", embedding_library: "EmbeddingLibrary", styles: "StyleStore") -> PromptPlan:
    from ..features.lora import LoraError, LoraPatcher, LoraSpec
    from ..features.lora_composition import LoraCompositeDenoiser, LoraSwitchDenoiser

    prompt, negative, missing_styles = styles.apply(request.prompt, request.negative_prompt, request.styles)
    plan = PromptPlan(prompt, negative, options["CLIP_stop_at_last_layers"], lora_mode=request.lora_composition,
                      switch_steps=request.lora_switch_steps)
    plan.warnings += [f"Style {name!r} not found in styles.csv" for name in missing_styles]
    positive_text, calls = extract(prompt)
    negative_text, negative_calls = extract(negative)
    for call in calls + negative_calls:
        if call.kind != "lora":
            plan.warnings.append(f"{call.raw}: '{call.kind}' networks are not supported; ignored")
            continue
        try:
            plan.loras.append(LoraSpec(loras.load(call.name), call.te, call.unet))
        except (LoraError, OSError) as exc:
            plan.warnings.append(f"{call.raw}: {exc}; ignored")

    embeddings = embedding_library.all()
    patcher = LoraPatcher.of(model)
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
        _warn_unmatched(plan, report, 1, spec.lora.name)
        encoder, cond, uncond = _encode(model, positive_text, negative_text, steps, options, embeddings)
        plan.embeddings.update(encoder.used_embeddings)
        prepared.append((cond, uncond, encoder.encode("")))

    def make(batch: int, ids, uncond_ids) -> SigmaSpace:
        denoisers = [CFGDenoiser(model, c, u, request.cfg_scale, batch, e, ids, uncond_ids) for c, u, e in prepared]
        if plan.lora_mode == "Switch":
            return LoraSwitchDenoiser(patcher, plan.loras, denoisers, request.lora_switch_steps)
        return LoraCompositeDenoiser(patcher, plan.loras, denoisers)

    plan.make_denoiser = make
    return plan


def _warn_unmatched(plan: PromptPlan, report, count: int, name: str | None = None) -> None:
    if report.unmatched and not report.cached:
        label = f"LoRA {name}" if name else ("LoRA" if count == 1 else "LoRAs")
        plan.warnings.append(f"{label}: {len(report.unmatched)} layer(s) do not exist in this model "
                             f"(made for another architecture?), e.g. {report.unmatched[0]}")
