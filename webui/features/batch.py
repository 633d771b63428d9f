"""img2img over a folder of images: every readable file is processed, bad ones are reported.

Only offered in the UI when Easel listens on 127.0.0.1 (the folders are on the server);
the API never takes a server path.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..core.image_input import ImageInputError, open_image_checked
from ..core.jobs import Interrupted, Job
from ..core.request import GenerationRequest, Result

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class FolderBatch:
    """A request template plus the folders; `make` builds the request for one picture."""

    make: Callable[[Image.Image], GenerationRequest]
    input_dir: Path
    output_dir: Path
    mask_dir: Path | None = None
    mode: str = "img2img"
    prompt: str = ""


def batch_request(fields: dict[str, Any], make: Callable[[dict, Image.Image], GenerationRequest]) -> FolderBatch:
    source = Path(str(fields.get("batch_input_dir") or "").strip()).expanduser()
    target = Path(str(fields.get("batch_output_dir") or "").strip()).expanduser()
    masks = str(fields.get("batch_mask_dir") or "").strip()
    if not str(source) or not source.is_dir():
        raise ValueError(f"batch_input_dir: {source} is not a folder")
    if not str(target) or str(target) == ".":
        raise ValueError("batch_output_dir: choose an output folder")
    mask_dir = Path(masks).expanduser() if masks else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise ValueError(f"batch_mask_dir: {mask_dir} is not a folder")
    return FolderBatch(lambda image: make(fields, image), source, target, mask_dir, prompt=fields.get("prompt") or "")


def run_folder_batch(engine, batch: FolderBatch, job: Job, max_megapixels: float) -> Result:
    files = sorted(p for p in batch.input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    combined = Result()
    for index, path in enumerate(files, start=1):
        job.report(text=f"file {index}/{len(files)}: {path.name}")
        try:
            image = open_image_checked(path, max_megapixels, name=path.name)
            request = batch.make(image.convert("RGB"))
            if batch.mask_dir is not None:
                mask_path = next((p for p in batch.mask_dir.glob(path.stem + ".*")
                                  if p.suffix.lower() in IMAGE_SUFFIXES), None)
                if mask_path is not None:
                    request = replace(request, mask=open_image_checked(mask_path, max_megapixels, name=mask_path.name))
            result = engine.generate(request, job, output_dir=batch.output_dir)
        except Interrupted:
            combined.interrupted = True
            break
        except (ImageInputError, ValueError) as exc:
            combined.warnings.append(f"{path.name}: {exc}")
            continue
        for name in ("images", "infotexts", "seeds", "paths"):
            getattr(combined, name).extend(getattr(result, name))
        combined.warnings.extend(result.warnings)
        if result.interrupted:
            combined.interrupted = True
            break
    if not files:
        combined.warnings.append(f"no images found in {batch.input_dir}")
    return combined
