"""Prompt matrix: `a city street|night|rain` makes 4 images - the first part always, the others on/off.

Columns vary the first half of the optional parts, rows the second half; labels show which
parts are in. Written only against the public extension API.
"""
from __future__ import annotations

from dataclasses import replace

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


class PromptMatrix(easel.Script):
    name = "prompt_matrix"
    title = "Prompt matrix"
    kind = "selectable"

    def ui(self, tab: str) -> dict:
        import gradio as gr

        return {
            "at_start": gr.Checkbox(False, label="Put variable parts at start of prompt",
                                    elem_id=f"script_{tab}_prompt_matrix_at_start"),
            "different_seeds": gr.Checkbox(False, label="Use different seed for each picture",
                                           elem_id=f"script_{tab}_prompt_matrix_different_seeds"),
            "joiner": gr.Radio(["comma", "space"], value="comma", label="Joining character",
                               elem_id=f"script_{tab}_prompt_matrix_joiner"),
        }

    def run(self, request: easel.GenerationRequest, args: dict, context: easel.GenerationContext) -> easel.Result:
        joiner = " " if args.get("joiner") == "space" else ", "
        prompts, optional = combinations(request.prompt, bool(args.get("at_start")), joiner)
        seed = easel.resolve_seed(request.seed)
        cols_bits = (len(optional) + 1) // 2
        images, done = [], easel.Result()
        for index, prompt in enumerate(prompts):
            cell_seed = seed + index if args.get("different_seeds") else seed
            result = context.generate(replace(request, prompt=prompt, seed=cell_seed, n_iter=1, batch_size=1))
            if not result.images:
                done.interrupted = True
                break
            images.append(result.images[0])
            for attr in ("images", "infotexts", "seeds", "paths", "warnings"):
                getattr(done, attr).extend(getattr(result, attr))
        if done.interrupted or not images:
            return done
        cols = 2 ** cols_bits
        rows = [images[i:i + cols] for i in range(0, len(images), cols)]
        col_labels = [" ".join(("+" if c & (1 << b) else "-") + optional[b] for b in range(cols_bits)) or "base"
                      for c in range(cols)]
        row_labels = [" ".join(("+" if r & (1 << b) else "-") + optional[cols_bits + b]
                               for b in range(len(optional) - cols_bits)) or "base" for r in range(len(rows))]
        grid = easel.draw_grid(rows, row_labels if len(rows) > 1 else None, col_labels)
        if request.save_images and context.save_grid is not None:
            done.paths.insert(0, context.save_grid(grid, done.infotexts[0], seed))
        done.images.insert(0, grid)
        done.infotexts.insert(0, done.infotexts[0])
        done.seeds.insert(0, seed)
        return done


@hookimpl
def register_scripts():
    return [PromptMatrix()]
