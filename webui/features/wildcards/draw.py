"""Resolving `{a|b}` variants and `__name__` wildcards with the `dynamicprompts` library.

`dynamicprompts` is the library the Dynamic Prompts extension itself is built on, so its
syntax (variants `{a|b}`, counts `{2$$a|b|c}` and ranges `{1-3$$...}`, custom separators
`{2$$ and $$a|b|c}`, weights `{0.5::a|2::b}`, wildcards `__name__`, nested folders
`__colors/warm__`, globs `__colors/*__`, variables) and its wildcard files (.txt one value a
line with `#` comments, .yaml read with `yaml.safe_load` and .json as nested lists and
objects) are exactly the extension's. Random draws reseed the library's generator with each
image's seed before drawing that image's prompt, as the extension does, so an image's
prompt depends only on its own seed: seed 1002 draws the same prompt alone as third in a
batch from seed 1000. Wildcard names with `..` are refused by the library, and the folder
is only walked, never written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first used, so start-up does not wait for the parser
    from dynamicprompts.wildcards import WildcardManager

WRAP = "__"
_REFERENCE = re.compile(r"__([^_\s{}|][^{}|\s]*?)__")


class TemplateError(ValueError):
    """A template the parser cannot read, or a wildcard that names no file."""


class WildcardFolder:
    """The wildcards folder (re-read on every use, so a file added or edited counts at once)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def manager(self) -> "WildcardManager":
        from dynamicprompts.wildcards import WildcardManager

        return WildcardManager(self.folder if self.folder.is_dir() else None, wildcard_wrap=WRAP)

    def names(self) -> list[str]:
        """Every wildcard the folder offers, as `__name__` would spell it (folders joined by /)."""
        return sorted(self.manager().get_collection_names()) if self.folder.is_dir() else []

    def check(self, template: str) -> None:
        """Raise TemplateError for a template the parser rejects or a `__name__` that matches no wildcard."""
        manager = self.manager()
        for name in _REFERENCE.findall(template):
            if "${" in name or "{" in name:
                continue  # built from a variable or a variant: only known when drawn
            if not list(manager.match_collections(name)):
                known = ", ".join(sorted(manager.get_collection_names())[:8]) or f"none: {self.folder} is empty"
                raise TemplateError(f"wildcard __{name}__ not found in the wildcards folder (known: {known})")
        from dynamicprompts.generators import CombinatorialPromptGenerator

        try:
            CombinatorialPromptGenerator(manager).generate(template, max_prompts=1)
        except Exception as exc:  # pyparsing's ParseException and the library's own errors
            raise TemplateError(f"cannot be read as a dynamic prompt ({str(exc).splitlines()[0]})") from exc

    def draw(self, template: str, count: int, seeds: list[int] | None) -> list[str]:
        """`count` random draws, the i-th reseeded with seeds[i] (`seeds` None: unseeded, not reproducible)."""
        if not template:
            return [""] * count
        from dynamicprompts.generators import RandomPromptGenerator

        generator = RandomPromptGenerator(self.manager(), unlink_seed_from_prompt=seeds is None)
        return generator.generate(template, count, seeds=seeds)

    def combinations(self, template: str, limit: int) -> list[str]:
        """Every combination, in the library's order, at most `limit`."""
        if not template:
            return [""]
        from dynamicprompts.generators import CombinatorialPromptGenerator

        return CombinatorialPromptGenerator(self.manager()).generate(template, max_prompts=limit) or [""]
