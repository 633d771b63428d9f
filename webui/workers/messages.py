"""What the head and a worker send each other; small picklable values, no engine imports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as the head knows it: workers look it up by sha256 first (their paths may differ)."""

    name: str
    sha256: str | None = None

    def label(self) -> str:
        return f"{self.name} [{self.sha256[:10]}]" if self.sha256 else self.name


@dataclass
class RemoteTask:
    """What a generation job carries so a worker elsewhere can run it (`Job.remote`)."""

    request: Any  # the GenerationRequest, validated on the head
    checkpoint: CheckpointRef

    def affinity_keys(self) -> set[str]:
        return {key for key in (self.checkpoint.name, self.checkpoint.sha256) if key}

    def network_keys(self) -> set[str]:
        """Its LoRAs and ControlNets (affinity.py), read from the request once."""
        keys = self.__dict__.get("_networks")
        if keys is None:
            from .affinity import request_keys

            keys = self.__dict__["_networks"] = request_keys(self.request)
        return keys


@dataclass
class SaveOrder:
    """An image the worker would have written: the head writes it, with its own settings and folders."""

    image: Image.Image
    mode: str
    naming: Any  # core.images.NamingContext
    text: str
    placeholder: str  # what result.paths holds until the head has saved it


@dataclass(frozen=True)
class DecodedPreview:
    """A live preview the worker already decoded (TAESD there): shown as is, whatever latents come with it."""

    image: Image.Image

    def __call__(self, latents: Any = None, index: int = 0, upscale: int = 1) -> Image.Image:
        return self.image


@dataclass
class Snapshot:
    """A worker's answer to `poll`: progress, and once finished the result or the error."""

    state: str
    step: int = 0
    total_steps: int = 0
    job_no: int = 0
    job_count: int = 0
    text: str = ""
    preview: tuple[int, Any, Any] | None = None  # (step, latents on the CPU, previewer)
    finished: bool = False
    result: Any = None
    saves: list[SaveOrder] = field(default_factory=list)
    error: tuple[str, str, bool] | None = None  # (type name, message, user_facing)
    loaded: list[str] = field(default_factory=list)


class RemoteJobError(RuntimeError):
    """A job failed on a worker; carries the worker's message (and whether it is meant for the user)."""

    def __init__(self, kind: str, message: str, user_facing: bool):
        super().__init__(message)
        self.kind = kind
        self.user_facing = user_facing
