"""HTTP: the Gradio UI mounted on a FastAPI app, served by uvicorn.

Easel binds 127.0.0.1 unless --listen is given; listening on other addresses requires
--auth, and then every route (UI, API, docs) asks for the credentials.
"""
from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from . import __version__
from .app import Easel
from .ui.common import CSS
from .ui.layout import build_ui

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    ui: bool = True


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth must look like user:password")
    return user, password


def _basic_auth_ok(request: Request, auth: tuple[str, str]) -> bool:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return secrets.compare_digest(user, auth[0]) and secrets.compare_digest(password, auth[1])


def create_fastapi(easel: Easel, options: ServerOptions) -> FastAPI:
    app = FastAPI(title="Easel", version=__version__)

    @app.get("/easel/v1/health", tags=["easel"])
    def health() -> dict:
        current = easel.models.current
        return {"status": "ok", "version": __version__, "device": easel.device.label,
                "checkpoints": len(easel.models.checkpoints()),
                "loaded": current.info.name if current else None,
                "queue": len(easel.queue.pending())}

    if options.auth:
        auth = options.auth

        @app.middleware("http")
        async def require_auth(request: Request, call_next):
            # Gradio's own login covers the UI; API and docs routes use HTTP basic auth.
            path = request.url.path
            if path.startswith(("/easel/", "/sdapi/", "/docs", "/openapi.json", "/redoc")):
                if not _basic_auth_ok(request, auth):
                    return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="Easel"'})
            return await call_next(request)

    if options.ui:
        blocks = build_ui(easel, local=options.host in ("127.0.0.1", "localhost", "::1"))
        blocks.queue(default_concurrency_limit=None)
        allowed = [str(easel.paths.outputs_dir.resolve())]
        app = gr.mount_gradio_app(app, blocks, path="/", auth=options.auth, allowed_paths=allowed, css=CSS,
                                  footer_links=["api", "settings"], show_error=False)
    else:
        @app.get("/")
        def root() -> JSONResponse:
            return JSONResponse({"name": "Easel", "version": __version__, "docs": "/docs"})
    return app


def serve(easel: Easel, options: ServerOptions) -> None:
    app = create_fastapi(easel, options)
    print(f"Running on local URL:  http://{options.host}:{options.port}", flush=True)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    def warm_up() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            easel.preload()

    threading.Thread(target=warm_up, name="easel-warm-up", daemon=True).start()
    try:
        server.run()
    finally:
        easel.close()
