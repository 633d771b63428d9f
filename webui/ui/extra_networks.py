"""The extra-networks panel under the prompt: cards for LoRAs, embeddings and checkpoints.

Cards show `name.preview.png` (or `name.png`) when one sits beside the file, otherwise a
generated card with the name. Search filters by name; clicking a LoRA card inserts
`<lora:name:1>` into the prompt, an embedding card its name, a checkpoint card selects it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from ..app import Easel
from ..features.previews import find_preview

CARD_SIZE = 192
_PALETTE = ((79, 70, 229), (5, 150, 105), (217, 119, 6), (190, 24, 93), (2, 132, 199), (101, 163, 13))


@dataclass
class Card:
    name: str
    insert: str        # text inserted into the prompt, or the checkpoint title
    image: str


def _placeholder(cache: Path, label: str) -> str:
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:16]
    path = cache / f"{digest}.png"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        colour = _PALETTE[int(digest, 16) % len(_PALETTE)]
        image = Image.new("RGB", (CARD_SIZE, CARD_SIZE), colour)
        draw = ImageDraw.Draw(image)
        initials = "".join(w[0] for w in label.replace("_", " ").replace("-", " ").split()[:2]).upper() or "?"
        draw.text((CARD_SIZE // 2, CARD_SIZE // 2), initials, fill=(255, 255, 255), anchor="mm", font_size=64)
        image.save(path)
    return str(path)


def _cards(easel: Easel, kind: str) -> list[Card]:
    cache = easel.paths.cache_dir / "cards"
    cards: list[Card] = []
    if kind == "lora":
        for path in easel.loras.files():
            preview = find_preview(path)
            cards.append(Card(path.stem, f"<lora:{path.stem}:1>", str(preview) if preview else _placeholder(cache, path.stem)))
    elif kind == "embedding":
        for path in easel.embeddings.files():
            preview = find_preview(path)
            cards.append(Card(path.stem, path.stem, str(preview) if preview else _placeholder(cache, path.stem)))
    else:
        for info in easel.models.checkpoints():
            preview = find_preview(info.path)
            cards.append(Card(info.model_name, easel.models.registry.title(info),
                              str(preview) if preview else _placeholder(cache, info.model_name)))
    return cards


def _append(prompt: str, text: str) -> str:
    prompt = (prompt or "").rstrip()
    if not prompt:
        return text
    separator = " " if prompt.endswith(",") else ", "
    return f"{prompt}{separator}{text}"


def build_extra_networks(easel: Easel, prefix: str, prompt: gr.Textbox, checkpoint: gr.Dropdown) -> None:
    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Row():
            search = gr.Textbox(placeholder="Search by name", show_label=False, elem_id=f"{prefix}_extra_search",
                                scale=4)
            refresh = gr.Button("Refresh", elem_id=f"{prefix}_extra_refresh", scale=0, min_width=90)
        galleries = []
        for kind, label in (("lora", "LoRA"), ("embedding", "Textual Inversion"), ("checkpoint", "Checkpoints")):
            with gr.Tab(label, elem_id=f"{prefix}_extra_tab_{kind}"):
                gallery = gr.Gallery(label=label, show_label=False, columns=8, fit_columns=False, height=220,
                                     allow_preview=False,
                                     object_fit="cover", elem_id=f"{prefix}_{kind}_cards", interactive=False)
                state = gr.State([])
                galleries.append((kind, gallery, state))

    def listing(kind: str, query: str):
        cards = [c for c in _cards(easel, kind) if (query or "").lower() in c.name.lower()]
        return [(c.image, c.name) for c in cards], [c.insert for c in cards]

    def fill(query: str):
        values = []
        for kind, _, _ in galleries:
            values.extend(listing(kind, query))
        return values

    outputs = [component for _, gallery, state in galleries for component in (gallery, state)]
    search.change(fill, search, outputs, api_name=False, show_progress="hidden")
    refresh.click(fill, search, outputs, api_name=False)

    for kind, gallery, state in galleries:
        if kind == "checkpoint":
            def choose(inserts: list[str], evt: gr.SelectData):
                return inserts[evt.index] if 0 <= evt.index < len(inserts) else gr.skip()
            gallery.select(choose, state, checkpoint, api_name=False)
        else:
            def insert(text: str, inserts: list[str], evt: gr.SelectData):
                return _append(text, inserts[evt.index]) if 0 <= evt.index < len(inserts) else gr.skip()
            gallery.select(insert, [prompt, state], prompt, api_name=False)
    return fill, search, outputs
