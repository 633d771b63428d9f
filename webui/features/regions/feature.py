"""Regional prompting (Regional Prompter's job) as an engine feature.

`parse` reads Regional Prompter's always-on args; `begin_pass` splits the pass's prompt into
the regions' prompts (prompts.py), encodes them laid out one region per chunk range, and gives
every denoiser of the pass that conditioning; `installed` wraps the UNet's cross-attention
processors while the pass samples (attention.py), with the region masks of the pass's size
(layout.py). Latent mode instead runs the UNet once per region and composes the guided
predictions by the region masks at latent size (latent.py). Prompt mode finds the regions while
sampling, from the base prompt's attention to each region's target (prompt_mode.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager


from ...core.conditioning import Conditioning, PromptEncoder, StepConditioning, pad_to_chunks, tokenize
from ...core.extra_networks import extract
from ...core.image_input import decode_base64_image
from ...core.pipeline import Feature, Pass, Run
from ...core.prompts import schedule_prompt
from ...core.request import FieldError
from .args import FIELD, RegionArgs, alwayson_value, infotext_params, parse
from .attention import RegionMap, regional_attention
from .latent import latent_couple
from .layout import mask_region_masks, matrix_regions, painted_masks, rect_masks
from .prompt_mode import (PromptProbeProcessor, PromptRegionProcessor, PromptRegions, prompt_latent_couple,
                          target_positions)
from .prompts import RegionPromptError, lay_out, split_prompt_mode, split_prompts


@dataclass
class PassRegions:
    regions: RegionMap | PromptRegions


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


def _calls_marked(inner, predict, regions: PromptRegions):
    """`predict` that first tells Prompt mode's processors a model call begins (its step, its sub-prompts)."""
    def marked(x, t):
        regions.begin_call(inner.step, len(inner.cond.at(inner.step)), record=inner.step > 0)
        try:
            return predict(x, t)
        finally:
            regions.recording = False

    return marked


class RegionalPrompter(Feature):
    name = "regional_prompter"
    last_masks = None   # Prompt mode: (regions, batch, h, w) 0/1 at latent size, of the last batch finished

    def parse(self, request: Any) -> tuple[RegionArgs | None, list[FieldError]]:
        value = alwayson_value(request)
        if value is None:
            return None, []
        args, errors = parse(value, _decode)
        if args is None:
            return None, errors
        if args.mode == "Prompt":
            try:
                split_prompt_mode(request.prompt, request.negative_prompt, args)
            except RegionPromptError as exc:
                return None, [FieldError("prompt", str(exc))]
            return args, []
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
        if args.mode == "Prompt":
            return self._begin_prompt_mode(run, p, args)
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
            self._warn_whole_picture_loras(run, prompts.prompt)
            steps = p.request.steps
            pairs = [(encoder.encode_scheduled(schedule_prompt(positive, steps)),
                      encoder.encode_scheduled(schedule_prompt(negative, steps, allow_and=False)))
                     for positive, negative in zip(([texts.base] if texts.base is not None else []) + texts.regions,
                                                   texts.negatives)]
            base = pairs.pop(0) if texts.base is not None else None
            prompts.denoiser_edits.append(lambda denoiser: latent_couple(denoiser, pairs, base, masks_at,
                                                                         args.base_ratios))
            return
        layout = self._laid_out(p, encoder, texts)
        ranges = list(layout.ranges)
        base_range = ranges.pop(0) if texts.base is not None else None
        factor = model.vae_scale_factor
        latent = (p.size[1] // factor, p.size[0] // factor)
        run.state[f"{self.name}.{p.name}"] = PassRegions(
            RegionMap(latent, ranges, masks_at, base_range, args.base_ratios))

    @staticmethod
    def _warn_whole_picture_loras(run: Run, prompt: str) -> None:
        """Regional Prompter's Latent mode gives a region's `<lora:...>` to that region only; Easel does not (yet)."""
        if any(call.kind in ("lora", "lyco") for call in extract(prompt)[1]):
            message = ("Regional Prompter: Easel applies the prompt's LoRAs to the whole picture, also in Latent "
                       "mode (per-region LoRA is not supported yet)")
            if message not in run.context.warnings:
                run.context.warnings.append(message)

    def _laid_out(self, p: Pass, encoder: PromptEncoder, texts):
        """Encode the regions one per chunk range and give every denoiser of the pass that conditioning."""
        model = p.plan.model
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

        p.plan.prompts.denoiser_edits.append(edit)
        return layout

    def _begin_prompt_mode(self, run: Run, p: Pass, args: RegionArgs) -> None:
        model, prompts, options = p.plan.model, p.plan.prompts, p.plan.options
        texts = split_prompt_mode(prompts.prompt, prompts.negative_prompt, args)
        encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], list(prompts.embeddings.values()),
                                options["comma_padding_backtrack"], options["emphasis"] == "Original")
        latent_mode = args.calc_mode == "Latent"
        if latent_mode:
            self._warn_whole_picture_loras(run, prompts.prompt)
            steps = p.request.steps
            pairs = [(encoder.encode_scheduled(schedule_prompt(positive, steps)),
                      encoder.encode_scheduled(schedule_prompt(negative, steps, allow_and=False)))
                     for positive, negative in zip([texts.base] + texts.regions, texts.negatives)]
            base_range, ranges = None, []
        else:
            layout = self._laid_out(p, encoder, texts)
            base_range, ranges = layout.ranges[0], list(layout.ranges[1:])
        # the targets' token positions within the base prompt's chunks, as the first encoder tokenizes them
        name = next(n for n in model.architecture.text_encoders if n in encoder.indexes)
        tokenizer, index = model.tokenizers[name], encoder.indexes[name]
        base_text = schedule_prompt(texts.base, p.request.steps).parts[0][0][0].text
        base_tokens = tokenize(tokenizer, base_text, index, encoder.comma_backtrack)
        positions = [target_positions(tokenizer, base_tokens, tokenize(tokenizer, target, index,
                                                                       encoder.comma_backtrack))
                     for target in texts.targets]
        base_range = base_range or (0, len(base_tokens.chunks))
        factor = model.vae_scale_factor
        latent = (p.size[1] // factor, p.size[0] // factor)
        regions = PromptRegions(latent, base_range, ranges, positions, args.thresholds,
                                args.base_ratios if texts.uses_base else (0.0,), args.prompt_submode == "Prompt-Ex",
                                power=4.0 if len(model.architecture.text_encoders) > 1 else 1.2)
        run.state[f"{self.name}.{p.name}"] = PassRegions(regions)
        if latent_mode:
            base_pair = pairs.pop(0)
            prompts.denoiser_edits.append(lambda denoiser: prompt_latent_couple(denoiser, base_pair, pairs, regions))
            return

        def edit(denoiser) -> None:
            regions.begin_batch(denoiser.inner_denoisers()[0].batch_size)
            for inner in denoiser.inner_denoisers():
                inner.predict = _calls_marked(inner, inner.predict, regions)

        prompts.denoiser_edits.append(edit)

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        state: PassRegions | None = run.state.get(f"{self.name}.{p.name}")
        if state is None:
            return nullcontext()
        if isinstance(state.regions, PromptRegions):
            args: RegionArgs = run.args[self.name]
            wrapper = PromptProbeProcessor if args.calc_mode == "Latent" else PromptRegionProcessor
            return regional_attention(p.plan.model.unet, state.regions, wrapper)
        return regional_attention(p.plan.model.unet, state.regions)

    def finish_images(self, run: Run, batch: Any, images: list, latents: Any) -> list:
        """Keep Prompt mode's last masks (Regional Prompter shows them after a generation) for inspection."""
        found = [state.regions for key, state in run.state.items()
                 if isinstance(key, str) and key.startswith(f"{self.name}.")  # other features key by tuples too
                 and isinstance(state.regions, PromptRegions)]
        if found and found[-1].current is not None:
            self.last_masks = found[-1].current.cpu()
        return images

    def infotext(self, run: Run) -> dict[str, Any]:
        args = run.args.get(self.name)
        return infotext_params(args) if args is not None else {}



