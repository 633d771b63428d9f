"""Prompt styles in styles.csv (AUTOMATIC1111's file: name, prompt, negative_prompt).

A style's text either contains `{prompt}`, which the user's prompt replaces, or is
appended after it with ", ". Several styles apply in the order chosen.
"""
from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write_text

PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")


@dataclass
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, prompt: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt, style_text) if part)


class StyleStore:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def all(self) -> list[PromptStyle]:
        if not self.path.exists():
            return []
        with self._lock:
            text = self.path.read_text(encoding="utf-8-sig")
        styles = []
        for row in csv.DictReader(io.StringIO(text)):
            name = (row.get("name") or "").strip()
            if name:
                styles.append(PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or ""))
        return styles

    def names(self) -> list[str]:
        return [s.name for s in self.all()]

    def get(self, name: str) -> PromptStyle | None:
        return next((s for s in self.all() if s.name == name), None)

    def save(self, style: PromptStyle) -> None:
        """Add or replace a style by name, keeping the file's order."""
        if not style.name.strip():
            raise ValueError("name: a style needs a name")
        styles = [s for s in self.all() if s.name != style.name] + [style]
        self._write(styles)

    def delete(self, name: str) -> bool:
        styles = self.all()
        kept = [s for s in styles if s.name != name]
        if len(kept) == len(styles):
            return False
        self._write(kept)
        return True

    def _write(self, styles: list[PromptStyle]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for style in styles:
            writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
        with self._lock:
            atomic_write_text(self.path, buffer.getvalue())

    def apply(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str, list[str]]:
        """(prompt, negative prompt, unknown style names) after applying the named styles."""
        known = {s.name: s for s in self.all()}
        missing = []
        for name in names:
            style = known.get(name)
            if style is None:
                missing.append(name)
                continue
            prompt = merge(style.prompt, prompt) if style.prompt else prompt
            negative_prompt = merge(style.negative_prompt, negative_prompt) if style.negative_prompt else negative_prompt
        return prompt, negative_prompt, missing
