"""Prompt matrix: `a city street|night|rain` makes 4 images - the first part always, the others on/off.

Columns vary the first half of the optional parts, rows the second half; labels show which
parts are in. Written only against the public extension API. Skip leaves the combination being
generated blank and goes on; Interrupt stops and keeps what is finished.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from webui.extensions import api as easel

hookimpl = easel.hookimpl
MAX_PARTS = 8


def combinations(prompt: str, at_start: bool = False, joiner: str = ", ") -> tuple[list[str], list[str]]:
    """(prompts for every on/off combination in binary order, the optional parts)."""
    parts = [p.strip() for p in prompt.split("|")]
    base, optional = parts[0], parts[1:]
    if len(optional) > MAX_PARTS:
        raise ValueError(f"prompt: at most {MAX_PARTS} |-separated parts ({len(optional)} given)")
    prompts = []
    for mask in range(2 ** len(optional)):
        chosen = [part for bit, part in enumerate(optional) if mask & (1 << bit)]
        pieces = chosen + [base] if at_start else [base] + chosen
        prompts.append(joiner.join(p for p in pieces if p))
    return prompts, optional


@dataclass(frozen=True)
class PromptMatrixArgs:
    """The matrix's arguments, in AUTOMATIC1111's positional order."""

    at_start: bool = easel.arg(False, label="Put variable parts at start of prompt")
    different_seeds: bool = easel.arg(False, label="Use different seed for each picture")
    joiner: Literal["comma", "space"] = easel.arg("comma", label="Joining character", widget="radio")


class PromptMatrix(easel.Script):
    name = "prompt_matrix"
    title = "Prompt matrix"
    kind = "selectable"
    Args = PromptMatrixArgs

    def run(self, request: easel.GenerationRequest, args: PromptMatrixArgs,
            context: easel.GenerationContext) -> easel.Result:
        joiner = " " if args.joiner == "space" else ", "
        prompts, optional = combinations(request.prompt, args.at_start, joiner)
        seed = easel.resolve_seed(request.seed)
        cols_bits = (len(optional) + 1) // 2
        images, done = [], easel.Result()
        for index, prompt in enumerate(prompts):
            cell_seed = seed + index if args.different_seeds else seed
            result = context.generate(replace(request, prompt=prompt, seed=cell_seed, n_iter=1, batch_size=1))
            done.warnings.extend(result.warnings)
            if result.interrupted:  # Interrupt: stop, keep what is finished
                done.interrupted = True
                break
            if not result.images:  # Skip: this combination stays blank, the others go on
                done.skipped_batches += max(1, result.skipped_batches)
                images.append(None)
                continue
            images.append(result.images[0])
            for attr in ("images", "infotexts", "seeds", "paths"):
                getattr(done, attr).extend(getattr(result, attr))
        if done.interrupted or not done.images:
            return done
        cols = 2 ** cols_bits
        rows = [images[i:i + cols] for i in range(0, len(images), cols)]
        col_labels = [" ".join(("+" if c & (1 << b) else "-") + optional[b] for b in range(cols_bits)) or "base"
                      for c in range(cols)]
        row_labels = [" ".join(("+" if r & (1 << b) else "-") + optional[cols_bits + b]
                               for b in range(len(optional) - cols_bits)) or "base" for r in range(len(rows))]
        grid = easel.draw_grid(rows, row_labels if len(rows) > 1 else None, col_labels)
        if request.save_images:
            done.paths.insert(0, context.save_grid(grid, done.infotexts[0], seed))
        done.images.insert(0, grid)
        done.infotexts.insert(0, done.infotexts[0])
        done.seeds.insert(0, seed)
        return done


@hookimpl
def register_scripts():
    return [PromptMatrix()]
