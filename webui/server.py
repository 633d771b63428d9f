"""HTTP: the Gradio UI and the API on one FastAPI app, served by uvicorn.

Easel binds 127.0.0.1 unless --listen is given; listening on other addresses requires
--auth (or --insecure), and with credentials every route (UI, API, files, docs, unknown
paths) asks for them with HTTP Basic auth. State-changing requests from foreign web
origins are refused, and no route (Gradio's included) lets another origin read it, unless
that origin is allowed with --cors-allow-origins. On loopback, requests
addressed to any other Host name are refused (DNS rebinding).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from . import __version__
from . import api
from .api.security import (LOOPBACK_NAMES, BasicAuth, BodyLimit, CorsPolicy, LoopbackHost, SameOrigin,
                            parse_credentials)
from .api.controlnet import controlnet_router
from .app import Easel
from .ui.common import CSS
from .ui.layout import build_ui
from .ui.page_script import head_script

log = logging.getLogger(__name__)


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


def parse_auth(value: str | None) -> list[tuple[str, str]]:
    """'user:pass[,user2:pass2]' -> [(user, pass), ...]; raises ValueError naming the format."""
    return parse_credentials([value])


def create_fastapi(easel: Easel, options: ServerOptions) -> FastAPI:
    app = FastAPI(title="Easel", version=__version__,
                  description="AUTOMATIC1111-compatible /sdapi/v1 (with --api or --nowebui) and Easel's job queue "
                              "API /easel/v1/jobs.")

    @app.get("/easel/v1/health", tags=["easel"])
    def health() -> dict:
        current = easel.models.current
        return {"status": "ok", "version": __version__, "device": easel.device.label,
                "checkpoints": len(easel.models.checkpoints()),
                "loaded": current.info.name if current else None,
                "queue": len(easel.queue.pending())}

    ctx = api.install(app, easel, sdapi=options.api or not options.ui, flags=options.flags,
                      usernames=frozenset(user for user, _ in options.auth))

    # outermost last: the Host check, CORS preflights, then auth, then origin and size checks
    app.add_middleware(BodyLimit, limit=options.max_body_bytes)
    app.add_middleware(SameOrigin, allowed_origins=options.cors_allow_origins)
    if options.auth:
        app.add_middleware(BasicAuth, credentials=list(options.auth))
    if options.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=options.cors_allow_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(CorsPolicy, allowed_origins=options.cors_allow_origins)  # over Gradio's own CORS too
    if options.host in LOOPBACK_NAMES:  # outermost: a rebinding page gets nothing, not even a 401
        app.add_middleware(LoopbackHost)

    app.include_router(controlnet_router(ctx))
    _mount_extension_assets(app, easel)
    easel.engine.hooks.call("app_started", app=app, easel=easel)

    if options.ui:
        blocks = build_ui(easel, local=options.host in LOOPBACK_NAMES)
        blocks.queue(default_concurrency_limit=None)
        allowed = [str(easel.paths.outputs_dir.resolve())]
        # HTTP Basic auth (above) protects the UI too, so Gradio's own login form is not used
        app = gr.mount_gradio_app(app, blocks, path="/", allowed_paths=allowed, css=CSS,
                                  footer_links=["api", "settings"], show_error=False,
                                  head=head_script() + _extension_head(easel),
                                  max_file_size=options.max_body_bytes)  # each file; BodyLimit bounds the request
        blocks.config = blocks.get_config_file()  # the config was built before `head` was set
        app.state.gradio_blocks = blocks  # serve() ends its streams before shutting down
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


def end_gradio_streams(app: FastAPI) -> None:
    """Tell Gradio's open streams to end, as Gradio's own `Blocks.close()` does (call in the event loop).

    The page keeps a heartbeat stream open for as long as it is shown, and a stream per running
    event; uvicorn's graceful shutdown would wait for them until its timeout and then cancel
    them, logging "Exception in ASGI application ... CancelledError" for each.
    """
    blocks = getattr(app.state, "gradio_blocks", None)
    if blocks is None:
        return
    from gradio.server_messages import BaseMessage
    from gradio_client.utils import ServerMessage

    queue = blocks._queue
    queue.close()
    for messages in list(queue.pending_messages_per_session.values()):
        messages.put_nowait(BaseMessage(msg=ServerMessage.server_stopped))
    for route in app.routes:  # the mounted Gradio app ends its heartbeat streams on this event
        stop_event = getattr(getattr(route, "app", None), "stop_event", None)
        if stop_event is not None:
            stop_event.set()


class QuietServer(uvicorn.Server):
    """uvicorn.Server that ends Gradio's streams before its graceful shutdown, so it is quick and quiet."""

    async def shutdown(self, sockets=None) -> None:  # type: ignore[override]
        try:
            end_gradio_streams(self.config.app)
        except Exception:  # never let this stand in the way of shutting down
            log.debug("could not end Gradio's streams", exc_info=True)
        await super().shutdown(sockets)


def serve(easel: Easel, options: ServerOptions) -> None:
    app = create_fastapi(easel, options)
    print(f"Running on local URL:  http://{options.host}:{options.port}", flush=True)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=3)
    server = QuietServer(config)

    asked: list[float] = []  # when a restart was asked for

    def warm_up() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            easel.preload()
            easel.restore_queue()  # generations queued when Easel last stopped run now, in their order
        while not server.should_exit:  # "Apply and restart UI" asks for a clean restart
            if easel.restart_requested.wait(0.1):
                asked.append(time.monotonic())
                server.should_exit = True

    threading.Thread(target=warm_up, name="easel-warm-up", daemon=True).start()
    try:
        server.run()
    finally:
        easel.close()
        if asked:
            log.info("stopped %.1fs after the restart was asked for", time.monotonic() - asked[0])
