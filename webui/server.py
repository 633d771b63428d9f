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
from .api.controlnet import controlnet_router
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

    app.include_router(controlnet_router(easel))
    _mount_extension_assets(app, easel)
    easel.engine.hooks.call("app_started", app=app, easel=easel)

    if options.ui:
        blocks = build_ui(easel, local=options.host in ("127.0.0.1", "localhost", "::1"))
        blocks.queue(default_concurrency_limit=None)
        allowed = [str(easel.paths.outputs_dir.resolve())]
        app = gr.mount_gradio_app(app, blocks, path="/", auth=options.auth, allowed_paths=allowed, css=CSS,
                                  footer_links=["api", "settings"], show_error=False, head=_extension_head(easel))
        blocks.config = blocks.get_config_file()  # the config was built before `head` was set
    else:
        @app.get("/")
        def root() -> JSONResponse:
            return JSONResponse({"name": "Easel", "version": __version__, "docs": "/docs"})
    return app


def _extension_head(easel: Easel) -> str:
    """<script>/<link> tags for loaded extensions' javascript/*.js and style.css."""
    if easel.extensions is None:
        return ""
    scripts, styles = easel.extensions.assets()
    root = easel.extensions.folder
    tags = [f'<link rel="stylesheet" href="/easel/extension-files/{p.relative_to(root).as_posix()}">' for p in styles]
    tags += [f'<script defer src="/easel/extension-files/{p.relative_to(root).as_posix()}"></script>' for p in scripts]
    return "\n".join(tags)


def _mount_extension_assets(app: FastAPI, easel: Easel) -> None:
    from fastapi.responses import FileResponse

    from .paths import UnsafePathError, safe_join

    @app.get("/easel/extension-files/{path:path}", include_in_schema=False)
    def extension_file(path: str):
        scripts, styles = easel.extensions.assets() if easel.extensions else ([], [])
        try:
            target = safe_join(easel.extensions.folder, path)
        except UnsafePathError:
            return Response(status_code=404)
        if target not in [p.resolve() for p in scripts + styles]:  # only declared assets, nothing else
            return Response(status_code=404)
        media = "text/css" if target.suffix == ".css" else "text/javascript"
        return FileResponse(target, media_type=media)


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
        while not server.should_exit:  # "Apply and restart UI" asks for a clean restart
            if easel.restart_requested.wait(0.5):
                server.should_exit = True

    threading.Thread(target=warm_up, name="easel-warm-up", daemon=True).start()
    try:
        server.run()
    finally:
        easel.close()
