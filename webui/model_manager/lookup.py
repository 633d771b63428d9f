"""One contract for finding a model by name, kept by every model library.

Every library of model files (the checkpoint registry, `VaeLibrary`, `LoraLibrary`,
`EmbeddingLibrary`, `ControlNetLibrary`, `IPAdapterLibrary`, `Upscalers`) has a
`find(name)` that behaves the same way, so a caller never has to know which one it holds:

- **It answers to every name a user or an AUTOMATIC1111 client may hold:** the listed name,
  the file name, the file stem, the path relative to the library's folder (with or without
  the suffix, `\\` or `/`), and a title with the short hash appended (`name [0123abcd]`, the
  bracket is ignored unless a file is literally called that). Exact matches win over matches
  that ignore case; within each, earlier kinds of name win (see `match`).
- **It is cheap:** it matches against the folder listing (names only) and never reads weights;
  at most it reads the safetensors header of the one file it found (ControlNet, IP-Adapter).
  Reading the weights is `load()`'s job, so callers may call `find` freely (validation,
  infotext, dropdowns).
- **It returns the library's own record** of the model (a `CheckpointInfo`, a `ControlNetInfo`,
  an `UpscalerEntry`, or the file's `Path` where the library has no record type) and never
  returns None.
- **An unknown name raises `ModelNotFound`**: user-facing, a `LookupError`, naming the kind of
  model, the name asked for, the closest installed names and what is installed (or, when
  nothing is, where files of that kind go).
  A library may raise a subclass that is also its own error type (`LoraNotFound` is a
  `LoraError`), so that older `except` clauses keep working; code that does not care about the
  kind catches `ModelNotFound`.

`tests/test_lookup.py` holds every library to this contract on real files.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")
MAX_SHOWN = 20
MAX_CLOSE = 3


class ModelNotFound(LookupError):
    """No model of this kind answers to the name; the message says what is installed instead."""

    user_facing = True

    def __init__(self, kind: str, name: str, available: Sequence[str] = (), where: str = "", field: str = "",
                 reason: str = ""):
        self.kind = kind
        self.name = name
        self.available = list(available)
        self.where = where
        self.field = field
        self.reason = reason
        self.close = close_names(name, self.available)
        super().__init__(self._message())

    @property
    def query(self) -> str:
        """The name asked for (the attribute the checkpoint registry's error always had)."""
        return self.name

    def _message(self) -> str:
        prefix = f"{self.field}: " if self.field else ""
        if self.reason:
            return f"{prefix}{self.kind} {self.name!r} is on disk but cannot be loaded: {self.reason}"
        text = f"{prefix}{self.kind} {self.name!r} not found"
        if self.close:
            text += "; did you mean " + " or ".join(repr(c) for c in self.close) + "?"
        if self.available:
            shown = ", ".join(self.available[:MAX_SHOWN])
            more = len(self.available) - MAX_SHOWN
            text += f" (installed: {shown}{f', and {more} more' if more > 0 else ''})"
        else:
            text += f" (none installed{' in ' + public_folders(self.where) if self.where else ''})"
        return text


def public_folders(where: str) -> str:
    """Folders as a client may see them: `models/<name>`, never the server's absolute path."""
    names = [Path(part.strip()).name for part in where.split(" or ") if part.strip()]
    return " or ".join(f"models/{name}" for name in dict.fromkeys(names))


def close_names(name: str, available: Sequence[str]) -> list[str]:
    """Up to three installed names that look like `name`, ignoring case, folders, suffixes and hashes."""
    by_plain: dict[str, str] = {}
    for candidate in available:
        by_plain.setdefault(_plain(candidate), candidate)
    found = difflib.get_close_matches(_plain(name), list(by_plain), n=MAX_CLOSE, cutoff=0.6)
    return [by_plain[f] for f in found]


def _plain(name: str) -> str:
    """`sub/Model.safetensors [abcd]` -> `model`: what a person means when they misremember a name."""
    base = without_hash(name).replace("\\", "/").rsplit("/", 1)[-1].lower()
    stem, dot, suffix = base.rpartition(".")
    return stem if dot and stem and suffix in _SUFFIXES else base


_SUFFIXES = {"safetensors", "sft", "ckpt", "pt", "pth", "bin", "gguf", "onnx"}


def without_hash(name: str) -> str:
    """`name [0123abcd]` -> `name`: titles carry the short hash, names do not."""
    name = name.strip()
    if name.endswith("]") and " [" in name:
        return name.rsplit(" [", 1)[0].strip()
    return name


def path_names(path: Path, folders: Iterable[Path], is_folder: bool = False) -> list[str]:
    """The names a model file (or folder) answers to: file name, stem, and its path under a library folder."""
    names = [path.name] if is_folder else [path.name, path.stem]
    for folder in folders:
        try:
            relative = path.relative_to(folder).as_posix()
        except ValueError:
            continue
        names.append(relative)
        if not is_folder and path.suffix:
            names.append(relative[: -len(path.suffix)])
    return names


def match(query: str, items: Iterable[T], *tiers: Callable[[T], Iterable[str]]) -> T | None:
    """The item that answers to `query`, or None.

    Each tier in order (all items per tier, so one item's main name beats another item's
    stem), with the query as given and then without a trailing ` [hash]`; then all of that
    again ignoring case, so an exact match anywhere beats a case-insensitive one.
    """
    table = [(item, [[n.replace("\\", "/") for n in tier(item)] for tier in tiers]) for item in items]
    query = query.strip().replace("\\", "/")
    wanted = [query] + ([without_hash(query)] if without_hash(query) != query else [])
    for fold in (False, True):
        for level in range(len(tiers)):
            for want in wanted:
                key = want.lower() if fold else want
                for item, names in table:
                    if key in ([n.lower() for n in names[level]] if fold else names[level]):
                        return item
    return None


def find_file(query: str, files: Sequence[Path], folders: Sequence[Path],
              not_found: Callable[[str, list[str], str], ModelNotFound],
              shown: Callable[[Path], str] = lambda path: path.stem) -> Path:
    """A model file of a folder-listed library by any of its `path_names`; else the library's `not_found`
    error with the installed files (as `shown`) and the folders to put one in."""
    found = match(query, files, lambda path: path_names(path, folders))
    if found is None:
        raise not_found(query.strip(), [shown(path) for path in files], " or ".join(map(str, folders)))
    return found
