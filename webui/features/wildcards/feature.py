"""Wildcards and dynamic prompts: each image draws its own prompt from a template.

The request's prompt and negative prompt are templates; when Dynamic Prompts' always-on
args switch the feature on, `image_prompts` draws every image's prompts before anything is
planned, and the engine runs each run of alike images as a plain request
(core/processing.py `_generate_drawn`). Random mode draws image i's prompt from image i's
seed (seed + i, or the request's seed for all with "fixed seed"); combinatorial mode makes
one image per combination of prompt and negative prompt (at most `max_generations`, 0: all,
capped at 1000), repeated `combinatorial_batches` times, as the extension does: the batch
count is then ignored. Every image's infotext keeps the template as Dynamic Prompts writes it
(`Template`, `Negative Template`) beside the drawn prompt, and pasting it restores the
template and switches the feature on.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

from ...core.pipeline import Feature, ImagePrompt, PreparedRequest
from ...core.request import FieldError, GenerationRequest
from ...core.seeds import MAX_SEED, image_seeds
from .args import ALWAYSON_NAME, MAX_GENERATIONS, WildcardArgs, alwayson_args, alwayson_value, parse
from .draw import TemplateError, WildcardFolder

TEMPLATE_KEY, NEGATIVE_TEMPLATE_KEY = "Template", "Negative Template"   # Dynamic Prompts' infotext keys
# the tabs' controls (and a pasted infotext's fields)
ENABLED_FIELD = "dynamic_prompts"
COMBINATORIAL_FIELD = "dynamic_prompts_combinatorial"
MAX_GENERATIONS_FIELD = "dynamic_prompts_max_generations"
UI_FIELDS = (ENABLED_FIELD, COMBINATORIAL_FIELD, MAX_GENERATIONS_FIELD)


class Wildcards(Feature):
    name = "wildcards"

    def __init__(self, folder: Callable[[], Path]):
        self.folder = folder   # the wildcards folder, as the settings say now

    def library(self) -> WildcardFolder:
        return WildcardFolder(self.folder())

    def parse(self, request: GenerationRequest) -> tuple[WildcardArgs | None, list[FieldError]]:
        """The arguments when switched on; errors name a bad argument, an unreadable template or unknown wildcard."""
        entry = alwayson_value(request.alwayson())
        if entry is None:
            return None, []
        key, value = entry
        args, errors = parse(value, f"alwayson_scripts.{key}.args")
        if args is None:
            return None, errors
        library = self.library()
        for field in ("prompt", "negative_prompt"):
            try:
                library.check(getattr(request, field))
            except TemplateError as exc:
                errors.append(FieldError(field, str(exc)))
        return (None if errors else args), errors

    def image_prompts(self, prepared: PreparedRequest, seed: int, count: int) -> list[ImagePrompt] | None:
        args: WildcardArgs | None = prepared.args.get(self.name)
        if args is None:
            return None
        request, library = prepared.request, self.library()
        template, negative = request.prompt, request.negative_prompt
        if args.combinatorial:
            limit = args.max_generations or MAX_GENERATIONS
            pairs = list(itertools.islice(itertools.product(library.combinations(template, limit),
                                                            library.combinations(negative, limit)), limit))
            pairs *= args.combinatorial_batches
            seeds = ([(seed + i // (len(pairs) // args.combinatorial_batches)) % (MAX_SEED + 1)
                      for i in range(len(pairs))] if args.fixed_seed else image_seeds(seed, len(pairs)))
        else:
            seeds = [seed] * count if args.fixed_seed else image_seeds(seed, count)
            drawing = None if args.unlink_seed else seeds
            pairs = list(zip(library.draw(template, count, drawing), library.draw(negative, count, drawing)))
        if not args.combinatorial and seeds == image_seeds(seed, count) and \
                all(pair == (template, negative) for pair in pairs):
            return None  # nothing to draw: the request runs as it is
        params = {TEMPLATE_KEY: template, **({NEGATIVE_TEMPLATE_KEY: negative} if negative else {})}
        key = alwayson_value(request.alwayson())[0]
        scripts = {k: v for k, v in request.alwayson().items() if k != key}   # a drawn text is not drawn again
        return [ImagePrompt(prompt, negative_prompt, image_seed, params, scripts)
                for (prompt, negative_prompt), image_seed in zip(pairs, seeds)]


def request_entry(fields: dict[str, Any]) -> dict[str, Any]:
    """The tabs' accordion as `alwayson_scripts` entries ({} when switched off)."""
    if not fields.get(ENABLED_FIELD):
        return {}
    try:
        limit = int(float(fields.get(MAX_GENERATIONS_FIELD) or 0))
    except (TypeError, ValueError):
        limit = 0
    return {ALWAYSON_NAME: alwayson_args(True, bool(fields.get(COMBINATORIAL_FIELD)), limit)}


def fields_from_params(params: dict[str, str]) -> dict[str, Any]:
    """A pasted infotext with Dynamic Prompts' template keys: the templates go back into the prompts, switched on."""
    if TEMPLATE_KEY not in params:
        return {}
    fields: dict[str, Any] = {"prompt": params[TEMPLATE_KEY], ENABLED_FIELD: True}
    if NEGATIVE_TEMPLATE_KEY in params:
        fields["negative_prompt"] = params[NEGATIVE_TEMPLATE_KEY]
    return fields
