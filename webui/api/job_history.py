"""Past jobs in /easel/v1/jobs: a job from before a restart (or beyond the last 200 in memory), from the history.

The same JobInfo and JobResult shapes as a live job, and the same rules: with --auth, a job's
prompt, images and re-running are its owner's alone. The images of a past job are the files it
saved (a job run with save_images off keeps only its parameters); they are read by the paths the
history recorded, never by a path a client sends.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from fastapi import Request

from ..history import HistoryRecord
from .context import ApiContext


def may_control(ctx: ApiContext, request: Request, record: HistoryRecord) -> bool:
    return not ctx.auth_enabled or record.owner == ctx.owner(request)


def record_info(ctx: ApiContext, request: Request, record: HistoryRecord) -> dict[str, Any]:
    """A past job in JobInfo's shape (position null, no live progress)."""
    mine = record.owner == ctx.owner(request)
    total = record.total_steps
    fraction = 1.0 if record.state == "done" else (min(1.0, record.step / total) if total else 0.0)
    return {"id": record.id, "type": record.type, "state": record.state, "position": None,
            "owner": ctx.display_owner(record.owner), "mine": mine,
            "description": record.description if mine or not ctx.auth_enabled else None,
            "submitted_at": record.submitted_at, "started_at": record.started_at,
            "finished_at": record.finished_at,
            "progress": {"fraction": fraction, "step": record.step, "total_steps": total, "batch": 0,
                         "batch_count": 0, "eta_seconds": None, "text": "", "preview": None},
            "error": record.error, "rerun_of": record.rerun_of, "worker": record.worker, "retried": record.retried}


def record_result(record: HistoryRecord) -> dict[str, Any]:
    """A past job in JobResult's shape: its saved images (base64, as written, infotext included), parameters
    (the API body it was sent with, else Easel's request fields) and info (infotexts and seeds)."""
    images, missing = [], 0
    for path in record.images:
        try:
            images.append(base64.b64encode(Path(path).read_bytes()).decode("ascii"))
        except OSError:
            missing += 1
    warnings = []
    if record.error:
        warnings.append(record.error)
    if missing:
        warnings.append(f"{missing} of its {len(record.images)} image file(s) are gone from disk")
    if not record.images and record.infotexts:
        warnings.append("its images were not saved (save_images was off): only its parameters are kept")
    if record.state == "cancelled":
        warnings.append("cancelled before it ran")
    parameters = record.api_body if record.api_body is not None else record.request
    info = {"infotexts": record.infotexts, "all_seeds": record.seeds,
            "seed": record.seeds[0] if record.seeds else None, "from_history": True}
    return {"id": record.id, "state": record.state, "images": images, "parameters": parameters,
            "info": json.dumps(info, ensure_ascii=False), "warnings": warnings}
