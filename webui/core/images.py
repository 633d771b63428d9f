"""Saving images the way AUTOMATIC1111 does: folders, names, and embedded infotext.

`outputs/txt2img-images/2026-11-22/00042-123456.png`: a running number (one more than
the highest in the folder), then the filename pattern (default `[seed]`). The infotext
goes into the PNG `parameters` text chunk, or the EXIF UserComment of JPEG/WebP, which
is where every tool in this family looks. Files are written under a temporary name and
renamed when complete, so a crash never leaves a half-written image.
"""
from __future__ import annotations

import datetime as _dt
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..fileio import atomic_write_bytes

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_INVALID = re.compile(r'[\x00-\x1f<>:"/\\|?*]')
_TOKEN = re.compile(r"\[(\w+)(?:<([^>]*)>)?\]")
MAX_NAME = 120


@dataclass
class NamingContext:
    """Values the filename pattern tokens draw from."""

    seed: int
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 0
    cfg_scale: float = 0.0
    sampler: str = ""
    scheduler: str = ""
    width: int = 0
    height: int = 0
    model_name: str = ""
    model_hash: str = ""
    batch_number: int = 0
    generation_number: int = 0
    job_timestamp: str = ""


def _prompt_words(prompt: str, count: int = 8) -> str:
    words = [w for w in re.split(r"[\s,()\[\]{}<>:|]+", prompt) if w]
    return " ".join(words[:count])


def _token_value(name: str, arg: str | None, ctx: NamingContext, now: _dt.datetime) -> str | None:
    values: dict[str, Any] = {
        "seed": ctx.seed, "steps": ctx.steps, "cfg": ctx.cfg_scale, "sampler": ctx.sampler,
        "scheduler": ctx.scheduler, "width": ctx.width, "height": ctx.height, "model_name": ctx.model_name,
        "model_hash": ctx.model_hash, "batch_number": ctx.batch_number, "generation_number": ctx.generation_number,
        "prompt": ctx.prompt, "prompt_spaces": ctx.prompt, "prompt_words": _prompt_words(ctx.prompt),
        "prompt_no_styles": ctx.prompt, "negative_prompt": ctx.negative_prompt,
        "date": now.strftime("%Y-%m-%d"), "job_timestamp": ctx.job_timestamp or now.strftime("%Y%m%d%H%M%S"),
    }
    if name == "datetime":
        fmt = arg or "%Y%m%d%H%M%S"
        return now.strftime(fmt)
    if name not in values:
        return None
    value = values[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if name == "prompt":
        text = text.replace(" ", "_")
    return text


def format_pattern(pattern: str, ctx: NamingContext, now: _dt.datetime | None = None) -> str:
    """Expand `[seed]`, `[prompt_words]`, `[date]`, `[datetime<%Y%m%d>]`, ...; unknown tokens stay as written."""
    now = now or _dt.datetime.now()

    def replace(match: re.Match) -> str:
        value = _token_value(match.group(1).lower(), match.group(2), ctx, now)
        return match.group(0) if value is None else value

    return sanitize(_TOKEN.sub(replace, pattern))


def sanitize(name: str) -> str:
    cleaned = _INVALID.sub("_", name).strip().strip(".")
    return cleaned[:MAX_NAME].rstrip(" .")


def next_number(folder: Path) -> int:
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = re.match(r"(\d+)", entry.name)
            if match and not entry.name.startswith("."):
                highest = max(highest, int(match.group(1)))
    return highest + 1


def encode_image(image: Image.Image, fmt: str, infotext: str | None, quality: int = 80) -> bytes:
    """Image bytes with the infotext embedded where other tools look for it."""
    buffer = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        meta = PngImagePlugin.PngInfo()
        if infotext:
            meta.add_text("parameters", infotext)
        image.save(buffer, "PNG", pnginfo=meta)
    elif fmt in ("jpg", "jpeg", "webp"):
        exif = Image.Exif()
        if infotext:
            exif.get_ifd(EXIF_IFD)[USER_COMMENT] = _UNICODE_PREFIX + infotext.encode("utf-16-be")
        rgb = image.convert("RGB")
        rgb.save(buffer, "JPEG" if fmt != "webp" else "WEBP", quality=quality, exif=exif.tobytes())
    else:
        raise ValueError(f"unsupported image format {fmt!r}")
    return buffer.getvalue()


def read_infotext(image: Image.Image) -> str | None:
    """The generation parameters stored in an image, from PNG text or EXIF UserComment."""
    text = image.info.get("parameters")
    if isinstance(text, str):
        return text
    try:
        raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:
        raw = None
    if isinstance(raw, bytes):
        if raw.startswith(_UNICODE_PREFIX):
            body = raw[len(_UNICODE_PREFIX):]
            for encoding in ("utf-16-be", "utf-16-le"):
                try:
                    decoded = body.decode(encoding)
                    if decoded.isprintable() or "\n" in decoded:
                        return decoded
                except UnicodeDecodeError:
                    continue
        if raw.startswith(_ASCII_PREFIX):
            return raw[len(_ASCII_PREFIX):].decode("ascii", "replace")
    elif isinstance(raw, str):
        return raw
    return None


def save_image(image: Image.Image, folder: Path, pattern: str, ctx: NamingContext, fmt: str = "png",
               infotext: str | None = None, quality: int = 80) -> Path:
    """Save as `NNNNN-<pattern>.<ext>` in folder (created if needed); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = encode_image(image, fmt, infotext, quality)
    decoration = format_pattern(pattern or "[seed]", ctx)
    ext = "jpg" if fmt.lower() == "jpeg" else fmt.lower()
    number = next_number(folder)
    while True:
        name = f"{number:05}-{decoration}" if decoration else f"{number:05}"
        path = folder / f"{name}.{ext}"
        if not path.exists():
            break
        number += 1
    atomic_write_bytes(path, data)
    return path
