"""The HTTP API: AUTOMATIC1111's /sdapi/v1 and Easel's own /easel/v1/jobs and /easel/v1/checkpoints.

`install()` adds the routes and error handlers to the FastAPI app the server builds;
security.py holds the auth, same-origin and body-size middlewares the server wraps
around everything. Importing this package has no side effects, and imports neither FastAPI nor
the engine: the start-up page (webui/startup.py) uses security.py before those are loaded.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..app import Easel
    from .context import ApiContext


def install(app: FastAPI, easel: Easel, *, sdapi: bool = True, flags: dict[str, Any] | None = None,
            usernames: frozenset[str] = frozenset()) -> ApiContext:
    """Mount /easel/v1/jobs and /easel/v1/checkpoints (always) and /sdapi/v1 (when `sdapi`) on `app`."""
    from . import checkpoints, jobs, sdapi as sdapi_routes
    from .context import ApiContext
    from .errors import install_handlers

    ctx = ApiContext(easel, flags=dict(flags or {}), usernames=usernames)
    install_handlers(app)
    app.include_router(jobs.build_router(ctx))
    app.include_router(checkpoints.build_router(ctx))
    if sdapi:
        app.include_router(sdapi_routes.build_router(ctx))
    from ..gallery.api import build_router as gallery_router
    app.include_router(gallery_router(lambda: easel.gallery))
    return ctx
