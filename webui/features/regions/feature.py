"""Regional prompting (Regional Prompter's job) as an engine feature.

`parse` reads Regional Prompter's always-on args; `begin_pass` splits the pass's prompt into
the regions' prompts (prompts.py), encodes them laid out one region per chunk range, and gives
every denoiser of the pass that conditioning; `installed` wraps the UNet's cross-attention
processors while the pass samples (attention.py), with the region masks of the pass's size
(layout.py). Latent mode instead runs the UNet once per region and composes the guided
predictions by the region masks at latent size (latent.py). Prompt mode answers 422.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager


from ...core.conditioning import Conditioning, PromptEncoder, StepConditioning, pad_to_chunks
from ...core.image_input import decode_base64_image
from ...core.pipeline import Feature, Pass, Run
from ...core.prompts import schedule_prompt
from ...core.request import FieldError
from .args import FIELD, RegionArgs, alwayson_value, infotext_params, parse
from .attention import RegionMap, regional_attention
from .latent import latent_couple
from .layout import mask_region_masks, matrix_regions, painted_masks, rect_masks
from .prompts import RegionPromptError, lay_out, split_prompts


@dataclass
class PassRegions:
    regions: RegionMap


def _decode(value: str):
    return decode_base64_image(value, f"{FIELD}.mask")


def region_count(args: RegionArgs) -> int:
    if args.mode == "Matrix":
        return len(matrix_regions(args.ratios, args.submode, args.flip))
    painted = painted_masks(args.mask, 64)
    used = [n for n in range(64) if painted[n].any()]
    return (max(used) + 1) if used else 0


def _padded(step: StepConditioning, chunks: int, empty: Conditioning) -> StepConditioning:
    return StepConditioning([([(end, pad_to_chunks(c, chunks, empty)) for end, c in schedule], weight)
                             for schedule, weight in step.parts])


class RegionalPrompter(Feature):
    name = "regional_prompter"

    def parse(self, request: Any) -> tuple[RegionArgs | None, list[FieldError]]:
        value = alwayson_value(request)
        if value is None:
            return None, []
        args, errors = parse(value, _decode)
        if args is None:
            return None, errors
        count = region_count(args)
        if count == 0:
            return None, [FieldError(f"{FIELD}.mask", "no region is painted in Regional Prompter's colours")]
        try:
            split_prompts(request.prompt, request.negative_prompt, args, count)
        except RegionPromptError as exc:
            return None, [FieldError("prompt", str(exc))]
        return args, []

    def begin_pass(self, run: Run, p: Pass) -> None:
        args: RegionArgs | None = run.args.get(self.name)
        if args is None:
            return
        model, prompts, options = p.plan.model, p.plan.prompts, p.plan.options
        if args.mode == "Matrix":
            rects = matrix_regions(args.ratios, args.submode, args.flip)
            count = len(rects)
            masks_at = lambda h, w: (rect_masks(rects, h, w), None)  # noqa: E731
        else:
            count = region_count(args)
            painted = painted_masks(args.mask, count)
            masks_at = lambda h, w: mask_region_masks(painted, h, w, args.use_base)  # noqa: E731
        texts = split_prompts(prompts.prompt, prompts.negative_prompt, args, count)
        encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], list(prompts.embeddings.values()),
                                options["comma_padding_backtrack"], options["emphasis"] == "Original", options)
        if args.calc_mode == "Latent":
            steps = p.request.steps
            pairs = [(encoder.encode_scheduled(schedule_prompt(positive, steps)),
                      encoder.encode_scheduled(schedule_prompt(negative, steps, allow_and=False)))
                     for positive, negative in zip(([texts.base] if texts.base is not None else []) + texts.regions,
                                                   texts.negatives)]
            base = pairs.pop(0) if texts.base is not None else None
            prompts.denoiser_edits.append(lambda denoiser: latent_couple(denoiser, pairs, base, masks_at,
                                                                         args.base_ratios))
            return
        tokenizers = [model.tokenizers[name] for name in model.architecture.text_encoders]
        layout = lay_out(texts, tokenizers)
        empty = encoder.encode("")
        cond = _padded(encoder.encode_scheduled(schedule_prompt(layout.positive, p.request.steps)), layout.total, empty)
        uncond = _padded(encoder.encode_scheduled(schedule_prompt(layout.negative, p.request.steps, allow_and=False)),
                         layout.total, empty)

        def edit(denoiser) -> None:
            for inner in denoiser.inner_denoisers():
                inner.uncond = uncond
                inner.set_conditioning(cond)

        prompts.denoiser_edits.append(edit)
        ranges = list(layout.ranges)
        base_range = ranges.pop(0) if texts.base is not None else None
        factor = model.vae_scale_factor
        latent = (p.size[1] // factor, p.size[0] // factor)
        run.state[f"{self.name}.{p.name}"] = PassRegions(
            RegionMap(latent, ranges, masks_at, base_range, args.base_ratios))

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        state: PassRegions | None = run.state.get(f"{self.name}.{p.name}")
        if state is None:
            return nullcontext()
        return regional_attention(p.plan.model.unet, state.regions)

    def infotext(self, run: Run) -> dict[str, Any]:
        args = run.args.get(self.name)
        return infotext_params(args) if args is not None else {}



