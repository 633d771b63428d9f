"""What the history keeps of a job: its request as plain JSON (input images left out), state and results.

The request is encoded as the queue store (core/job_store.py) encodes queued requests, field by
field, except that images and arrays are dropped instead of written beside it: the history keeps
every job for ever, and a few megabytes of init images per img2img job would add up to gigabytes
(the same reason webui/api/history.py keeps API bodies without them). A record says when it lost
inputs (`inputs_dropped`), so re-running it can refuse with a clear reason instead of running
something else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..core.jobs import Job, JobState
from ..core.request import GenerationRequest

_DROPPED = object()


def _plain(value: Any, dropped: list[bool]) -> Any:
    """JSON-able copy of a value; images, arrays and foreign objects become _DROPPED (and are noted)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, (Image.Image, np.ndarray)):
        dropped.append(True)
        return _DROPPED
    if isinstance(value, (list, tuple)):
        items = [_plain(item, dropped) for item in value]
        return [item for item in items if item is not _DROPPED]
    if isinstance(value, dict):
        items = {str(key): _plain(item, dropped) for key, item in value.items()}
        return {key: (None if item is _DROPPED else item) for key, item in items.items()}
    dropped.append(True)
    return _DROPPED


def plain_request(request: GenerationRequest) -> tuple[dict[str, Any], bool]:
    """(every field of the request as JSON values, whether any input image or object was left out)."""
    dropped: list[bool] = []
    values = {}
    for name in GenerationRequest.field_names():
        value = _plain(getattr(request, name), dropped)
        values[name] = None if value is _DROPPED else value
    return values, bool(dropped)


def error_text(error: BaseException | None) -> str | None:
    """What the API says of a job's error (the same wording as api/context.job_info)."""
    if error is None:
        return None
    return str(error) if getattr(error, "user_facing", False) else f"{type(error).__name__}: {error}"


@dataclass
class HistoryRecord:
    """One past job as stored (and as read back after a restart)."""

    id: str
    state: str
    kind: str = "txt2img"
    type: str = "txt2img"            # what the way in called it (API type, UI tab, or the mode)
    owner: str | None = None
    description: str = ""
    error: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float = 0.0
    request: dict[str, Any] = field(default_factory=dict)
    inputs_dropped: bool = False
    api_type: str | None = None      # an /easel/v1/jobs or /sdapi/v1 job: its request body, as kept
    api_body: dict[str, Any] | None = None
    images: list[str] = field(default_factory=list)      # saved files (empty when save_images was off)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    rerun_of: str | None = None
    worker: str | None = None        # with --workers: the worker that ran it (the last one, when retried)
    retried: str | None = None       # why it ran again on another worker (its first one was lost)

    COLUMNS = ("id", "state", "kind", "type", "owner", "description", "error", "submitted_at", "started_at",
               "finished_at", "request", "inputs_dropped", "api_type", "api_body", "images", "infotexts", "seeds",
               "step", "total_steps", "rerun_of", "worker", "retried")
    JSON_COLUMNS = ("request", "api_body", "images", "infotexts", "seeds")

    def row(self) -> tuple:
        values = []
        for name in self.COLUMNS:
            value = getattr(self, name)
            if name in self.JSON_COLUMNS:
                value = None if value is None else json.dumps(value, ensure_ascii=False)
            elif name == "inputs_dropped":
                value = int(value)
            values.append(value)
        return tuple(values)

    @classmethod
    def from_row(cls, row: Any) -> "HistoryRecord":
        data = dict(row)
        for name in cls.JSON_COLUMNS:
            try:
                data[name] = json.loads(data[name]) if data.get(name) else (None if name == "api_body" else
                                                                             {} if name == "request" else [])
            except ValueError:
                data[name] = None if name == "api_body" else {} if name == "request" else []
        data["inputs_dropped"] = bool(data.get("inputs_dropped"))
        return cls(**{k: data[k] for k in cls.COLUMNS if k in data})

    @property
    def cursor(self) -> str:
        return f"{self.finished_at!r}~{self.id}"


def snapshot(job: Job) -> HistoryRecord:
    """A finished generation job as a record; cheap (the worker calls it), the JSON is made by the writer."""
    meta = job.meta
    result = job.result
    body = meta.get("body")
    request, dropped = meta.get("history_request") or ({}, False)
    return HistoryRecord(
        id=job.id, state=job.state.value, kind=request.get("mode") or job.kind,
        type=meta.get("type") or meta.get("tab") or request.get("mode") or job.kind, owner=job.owner,
        description=job.description, error=error_text(job.error), submitted_at=job.submitted_at,
        started_at=job.started_at, finished_at=job.finished_at or 0.0, request=request, inputs_dropped=dropped,
        api_type=meta.get("type") if body is not None else None, api_body=body,  # dumped to JSON by the writer
        images=list(getattr(result, "paths", None) or []), infotexts=list(getattr(result, "infotexts", None) or []),
        seeds=[int(s) for s in getattr(result, "seeds", None) or []], step=job.progress.step,
        total_steps=job.progress.total_steps, rerun_of=meta.get("rerun_of"), worker=meta.get("worker"),
        retried=meta.get("retried"))


FINISHED_STATES = tuple(s.value for s in JobState if s.finished)
