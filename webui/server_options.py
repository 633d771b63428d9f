"""How the HTTP server is to run: address, logins, which parts are served, limits.

Kept apart from server.py (which imports gradio, FastAPI and the engine) so the command line
can read its flags and start answering before any of those are imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BODY_MB = 64


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 7860
    # HTTP Basic credentials; when any are set, every route requires one of them
    auth: list[tuple[str, str]] = field(default_factory=list)
    ui: bool = True
    api: bool = False  # /sdapi/v1 (AUTOMATIC1111's API); /easel/v1 is always on
    cors_allow_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY_MB << 20
    # the command line as /sdapi/v1/cmd-flags shows it (credentials already masked)
    flags: dict[str, Any] = field(default_factory=dict)
