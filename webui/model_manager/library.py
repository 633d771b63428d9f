"""One index of every model file of every kind, cheap enough for folders of thousands of files.

Each kind's folders (AUTOMATIC1111's names, `paths.MODEL_FOLDERS`) are walked; a diffusers
folder (or an insightface pack) is one entry, never walked into, and a checkpoint folder Easel
cannot load (a Flux or SD3 pipeline, a lone component) carries the reason in `unloadable`.
Per file only the safetensors header is read (its JSON: tensor names, shapes, `__metadata__`),
from which come an architecture guess, kohya training info with the most frequent training
tags as trigger words, and modelspec fields. GGUF files report their quantization types.
The index is kept in cache/library.json keyed by path with (size, mtime): a later start
re-reads only new or changed files and drops removed ones. AutoV2 hashes are computed lazily
by one low-priority background thread (stoppable) or on demand, into the shared HashCache.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_text
from ..paths import MODEL_FOLDERS, Paths, is_model_folder, walk_tree
from .hashing import HashCache, autov2

log = logging.getLogger(__name__)

INDEX_VERSION = 3  # 2: checkpoint folders carry `unloadable`; 3: loadable folders labelled by family
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not a model file
MAX_META_VALUE = 2000
TRIGGER_WORDS = 10
_FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
_PIPELINE_LABELS = {"StableDiffusionPipeline": "SD 1.x/2.x", "StableDiffusionXLPipeline": "SDXL",
                    "StableDiffusionXLImg2ImgPipeline": "SDXL refiner", "FluxPipeline": "Flux",
                    "StableDiffusion3Pipeline": "SD 3", "ZImagePipeline": "Z-Image",
                    "HunyuanDiTPipeline": "Hunyuan-DiT"}
# kohya's ss_base_model_version values and modelspec.architecture prefixes -> a short label
_BASE_LABELS = (("sdxl", "SDXL"), ("stable-diffusion-xl", "SDXL"), ("sd_v2", "SD 2.x"), ("stable-diffusion-v2", "SD 2.x"),
                ("sd_v1", "SD 1.x"), ("stable-diffusion-v1", "SD 1.x"), ("flux", "Flux"), ("sd3", "SD 3"),
                ("stable-diffusion-v3", "SD 3"))
_TRAINING_KEYS = {"ss_base_model_version": "base model", "ss_sd_model_name": "trained on", "ss_resolution": "resolution",
                  "ss_num_epochs": "epochs", "ss_epoch": "epoch", "ss_steps": "steps", "ss_max_train_steps": "max steps",
                  "ss_network_module": "network", "ss_network_dim": "dim", "ss_network_alpha": "alpha",
                  "ss_learning_rate": "learning rate", "ss_num_train_images": "train images",
                  "ss_output_name": "output name", "ss_clip_skip": "clip skip"}


@dataclass
class LibraryEntry:
    """One model file (or folder) as the library shows it; everything here comes from the header or the file system."""

    kind: str
    name: str           # path relative to the folder it was found in, with '/'
    path: str
    folder: str
    size: int
    mtime: float
    format: str         # safetensors | pickle | gguf | onnx | diffusers | pack
    architecture: str = ""
    tensors: int = 0
    quantization: str = ""        # GGUF: the tensor types, most common first ("Q8_0, F32")
    trigger_words: list[str] = field(default_factory=list)
    training: dict[str, str] = field(default_factory=dict)
    modelspec: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    note: str = ""
    unloadable: str = ""    # checkpoint folders Easel cannot load: why ("" = loadable, or a single file)

    @property
    def title(self) -> str:
        return self.modelspec.get("title") or Path(self.name).stem

    @property
    def hash_source(self) -> Path | None:
        """The file whose sha256 is the AutoV2 hash (the UNet weights of a diffusers folder); None for packs."""
        path = Path(self.path)
        if self.format == "pack":
            return None
        if self.format == "diffusers":
            for sub in ("unet", "transformer", ""):
                for candidate in sorted((path / sub).glob("*.safetensors")):
                    return candidate
            return None
        return path


# ---- reading headers ---------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries + `__metadata__`), reading nothing else."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError("header too large: not a safetensors file")
        data = handle.read(length)
    if len(data) != length:
        raise ValueError("truncated safetensors header")
    header = json.loads(data)
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not an object")
    return header


def _base_label(value: str) -> str:
    lowered = value.lower()
    return next((label for key, label in _BASE_LABELS if lowered.startswith(key)), value)


def _width_label(shapes: dict[str, tuple[int, ...]]) -> str:
    for key, shape in shapes.items():
        if ("attn2.to_k" in key or "attn2_to_k" in key) and key.endswith(("weight", "lora_down.weight")) and len(shape) >= 2:
            return _FAMILY_BY_WIDTH.get(shape[-1] if len(shape) == 2 else shape[1], "")
    return ""


def _file_variant_label(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], name: str) -> str | None:
    from ..families.registry import get
    from .detect import DetectionError, detect

    try:
        family = detect(shapes).architecture.family
    except DetectionError:
        return None
    variant = get(family).file_variant(name, metadata)
    return get(variant).label if variant else None


def guess_architecture(kind: str, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str],
                       name: str = "") -> tuple[str, str]:
    """(label, note) from tensor names/shapes, metadata and (variants with a parent's tensors) the file name."""
    spec_arch = metadata.get("modelspec.architecture", "")
    variant = _file_variant_label(shapes, metadata, name) if kind == "checkpoint" else None
    if variant:  # a variant with its parent's tensors, told by name or metadata (Flux Kontext), as the loader does
        return variant, ""
    if metadata.get("ss_base_model_version"):
        return _base_label(metadata["ss_base_model_version"]), ""
    if spec_arch:
        return _base_label(spec_arch.split("/", 1)[0]), ""
    if kind == "checkpoint":
        from .architecture import Architecture, family_label
        from .detect import DetectionError, detect

        try:
            arch: Architecture = detect(shapes).architecture
        except DetectionError as exc:
            return _width_label(shapes), str(exc)
        from ..families.registry import refine_by_name

        label = family_label(refine_by_name(arch.family, name))
        return label + (" inpainting" if arch.inpainting else ""), ""
    if kind == "lora" and any(k.startswith("lora_te2_") for k in shapes):
        return "SDXL", ""
    if kind == "embedding":
        if "clip_g" in shapes:
            return "SDXL", ""
        for shape in shapes.values():
            return _FAMILY_BY_WIDTH.get(shape[-1], "") if shape else "", ""
    if kind == "vae":
        return "VAE", ""
    return _width_label(shapes), ""


def _trigger_words(metadata: dict[str, str]) -> list[str]:
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase", "")
    words += [w.strip() for w in phrase.split(",") if w.strip()]
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency", "") or "{}")
    except ValueError:
        frequency = {}
    counts: Counter[str] = Counter()
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, (int, float)):
                        counts[str(tag).strip()] += int(count)
    for tag, _ in counts.most_common():
        if len(words) >= TRIGGER_WORDS:
            break
        if tag and tag not in words:
            words.append(tag)
    return words


def describe_safetensors(kind: str, path: Path) -> dict[str, Any]:
    """LibraryEntry fields a safetensors header gives."""
    header = read_safetensors_header(path)
    raw_meta = header.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    shapes = {k: tuple(v.get("shape", ())) for k, v in header.items() if isinstance(v, dict)}
    architecture, note = guess_architecture(kind, shapes, metadata, path.name)
    training = {label: metadata[key] for key, label in _TRAINING_KEYS.items() if metadata.get(key) not in (None, "", "None")}
    modelspec = {k.removeprefix("modelspec."): v for k, v in metadata.items() if k.startswith("modelspec.")}
    shown = {k: (v if len(v) <= MAX_META_VALUE else v[:MAX_META_VALUE] + "…") for k, v in metadata.items()
             if k != "ss_tag_frequency"}
    return {"architecture": architecture, "note": note, "tensors": len(shapes), "metadata": dict(list(shown.items())[:200]),
            "training": training, "modelspec": modelspec, "trigger_words": _trigger_words(metadata)}


def describe_diffusers(path: Path) -> dict[str, Any]:
    for name in ("model_index.json", "config.json"):
        if (path / name).is_file():
            try:
                config = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            cls = str(config.get("_class_name", ""))
            label = _PIPELINE_LABELS.get(cls, cls)
            if name == "model_index.json":
                from .registry import folder_family

                family = folder_family(path)  # the family and variant when Easel loads it ("Flux.1 dev")
                if family is not None:
                    from ..families.registry import get, refine_by_name

                    label = get(refine_by_name(family.name, path.name)).label  # SD 3.5 Large Turbo by name
            if name == "config.json" and config.get("cross_attention_dim") in _FAMILY_BY_WIDTH:
                label = f"{cls} ({_FAMILY_BY_WIDTH[config['cross_attention_dim']]})"
            return {"architecture": label}
    return {}


def describe(kind: str, path: Path, fmt: str) -> dict[str, Any]:
    """Header facts for one entry; a file that cannot be read gets a note instead of failing the scan."""
    try:
        if fmt == "safetensors":
            return describe_safetensors(kind, path)
        if fmt == "gguf":
            from .gguf import describe_gguf

            return describe_gguf(path)
        if fmt == "diffusers":
            facts = describe_diffusers(path)
            if kind == "checkpoint":
                from .registry import folder_problem

                facts["unloadable"] = folder_problem(path) or ""
            return facts
    except Exception as exc:  # a broken or foreign file must not stop the index
        return {"note": f"cannot read header: {exc}"}
    return {}


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        return "safetensors"
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".onnx":
        return "onnx"
    return "pickle"


def _folder_stat(path: Path) -> tuple[int, float]:
    size, mtime = 0, 0.0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            size += stat.st_size
            mtime = max(mtime, stat.st_mtime)
    return size, mtime


# ---- the library -------------------------------------------------------------------------------


class ModelLibrary:
    """The persisted index plus the background hasher. Thread-safe; nothing runs until asked."""

    def __init__(self, folders: Callable[[], dict[str, list[Path]]], hashes: HashCache, index_file: Path):
        self.folders = folders
        self.hashes = hashes
        self.index_file = index_file
        self._lock = threading.RLock()
        self._entries: dict[str, LibraryEntry] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hashing: str | None = None  # the file being hashed in the background now
        self.last_scan: dict[str, float] = {}

    @classmethod
    def for_paths(cls, paths: Paths, hashes: HashCache) -> "ModelLibrary":
        def folders() -> dict[str, list[Path]]:
            out = {kind: [paths.model_dir(kind)] for kind in MODEL_FOLDERS}
            out["checkpoint"] = paths.checkpoint_dirs()
            out["lora"] = paths.lora_folders()
            out["embedding"] = paths.embedding_folders()
            return out

        return cls(folders, hashes, paths.cache_dir / "library.json")

    # ---- index ----------------------------------------------------------------------------------

    def _load_index(self) -> dict[str, LibraryEntry]:
        try:
            data = json.loads(self.index_file.read_text(encoding="utf-8"))
            if data.get("version") != INDEX_VERSION:
                return {}
            return {key: LibraryEntry(**value) for key, value in data.get("entries", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def _save_index(self, entries: dict[str, LibraryEntry]) -> None:
        data = {"version": INDEX_VERSION, "entries": {k: asdict(v) for k, v in entries.items()}}
        atomic_write_text(self.index_file, json.dumps(data, separators=(",", ":")))

    def _walk(self, kind: str, root: Path) -> list[tuple[str, Path, str, int, float]]:
        """(name, path, format, size, mtime) for every entry under one root."""
        found: list[tuple[str, Path, str, int, float]] = []
        if not root.is_dir():
            return found

        def descend(entry: os.DirEntry) -> bool:  # a pack or a model folder is one model, not walked into
            path = Path(entry.path)
            return not ((kind == "insightface" and path.parent == root) or is_model_folder(path))

        for entry, is_dir in walk_tree(root, descend):
            path = Path(entry.path)
            try:
                if is_dir:
                    size, mtime = _folder_stat(path)
                    if kind == "insightface" and path.parent == root:
                        found.append((entry.name, path, "pack", size, mtime))
                    else:
                        found.append((path.relative_to(root).as_posix(), path, "diffusers", size, mtime))
                elif path.suffix.lower() in MODEL_SUFFIXES and entry.is_file():
                    if kind == "checkpoint" and path.stem.lower().endswith(".vae"):
                        continue  # model.vae.safetensors beside a checkpoint is that checkpoint's VAE
                    stat = entry.stat()
                    found.append((path.relative_to(root).as_posix(), path, _format_of(path), stat.st_size,
                                  stat.st_mtime))
            except OSError:
                continue
        return found

    def refresh(self) -> dict[str, float]:
        """Re-walk every folder; re-read only new or changed files. Returns counts and seconds."""
        started = time.perf_counter()
        with self._lock:
            old = self._entries if self._entries is not None else self._load_index()
        fresh: dict[str, LibraryEntry] = {}
        read = 0
        for kind, roots in self.folders().items():
            seen_roots: set[str] = set()
            for root in roots:
                key_root = str(root.resolve()) if root.exists() else str(root)
                if key_root in seen_roots:
                    continue
                seen_roots.add(key_root)
                for name, path, fmt, size, mtime in self._walk(kind, root):
                    key = f"{kind}:{path}"
                    if key in fresh:
                        continue
                    known = old.get(key)
                    if known is not None and known.size == size and known.mtime == mtime:
                        fresh[key] = known
                        continue
                    facts = describe(kind, path, fmt)
                    fresh[key] = LibraryEntry(kind=kind, name=name, path=str(path), folder=str(root), size=size,
                                              mtime=mtime, format=fmt, **facts)
                    read += 1
        changed = read > 0 or set(fresh) != set(old)
        with self._lock:
            self._entries = fresh
        if changed:
            self._save_index(fresh)
        self.last_scan = {"entries": len(fresh), "read": read, "removed": len(set(old) - set(fresh)),
                          "seconds": time.perf_counter() - started}
        return self.last_scan

    def entries(self) -> list[LibraryEntry]:
        """Every entry, sorted by kind then name; scans on first use."""
        with self._lock:
            loaded = self._entries
        if loaded is None:
            self.refresh()
            with self._lock:
                loaded = self._entries or {}
        return sorted(loaded.values(), key=lambda e: (e.kind, e.name.lower()))

    def get(self, path: str) -> LibraryEntry | None:
        return next((e for e in self.entries() if e.path == path), None)

    @staticmethod
    def preview(entry: LibraryEntry) -> Path | None:
        """`name.preview.png` (and the other names AUTOMATIC1111 looks for) beside the file."""
        from ..features.previews import find_preview

        return find_preview(Path(entry.path))

    def kinds(self) -> list[str]:
        return list(MODEL_FOLDERS)

    def search(self, query: str = "", kind: str | None = None) -> list[LibraryEntry]:
        """Entries whose name, folder, kind, architecture, title or trigger words contain every word of the query."""
        words = [w for w in query.lower().split() if w]
        out = []
        for entry in self.entries():
            if kind and entry.kind != kind:
                continue
            haystack = " ".join([entry.name, entry.folder, entry.kind, entry.architecture, entry.format,
                                 entry.quantization, entry.title, *entry.trigger_words]).lower()
            if all(w in haystack for w in words):
                out.append(entry)
        return out

    # ---- hashes ---------------------------------------------------------------------------------

    def short_hash(self, entry: LibraryEntry) -> str | None:
        """AutoV2 if already known for the file as it is now; never reads the file."""
        source = entry.hash_source
        sha = self.hashes.cached(source) if source else None
        return autov2(sha) if sha else None

    def hash_now(self, entry: LibraryEntry) -> str | None:
        """Compute (or look up) the AutoV2 hash at once."""
        source = entry.hash_source
        return autov2(self.hashes.sha256(source)) if source else None

    def pending_hashes(self) -> list[LibraryEntry]:
        return [e for e in self.entries() if e.hash_source is not None and self.short_hash(e) is None]

    def start_background(self) -> None:
        """Index, then hash unhashed files one at a time at the lowest priority, in a daemon thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._background, name="easel-library", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _background(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # Linux: nice applies per thread
        except (AttributeError, OSError):
            pass
        try:
            self.refresh()
            for entry in self.pending_hashes():
                if self._stop.is_set():
                    return
                source = entry.hash_source
                if source is None or not source.exists():
                    continue
                self.hashing = entry.path
                try:
                    self.hashes.sha256(source, progress=self._check_stop)
                except _Stopped:
                    return
                except OSError as exc:
                    log.warning("cannot hash %s: %s", source, exc)
        except Exception:  # the library must never take the app down
            log.exception("library background indexing failed")
        finally:
            self.hashing = None

    def _check_stop(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise _Stopped()


class _Stopped(Exception):
    """Raised inside a hash's progress callback to abandon it when the library stops."""
