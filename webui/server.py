"""HTTP: the Gradio UI and the API on one FastAPI app (served by webui/startup.py with uvicorn).

Easel binds 127.0.0.1 unless --listen is given; listening on other addresses requires
--auth (or --insecure), and with credentials every route (UI, API, files, docs, unknown
paths) asks for them with HTTP Basic auth. State-changing requests from foreign web
origins are refused, and no route (Gradio's included) lets another origin read it, unless
that origin is allowed with --cors-allow-origins. On loopback, requests
addressed to any other Host name are refused (DNS rebinding).
"""
from __future__ import annotations

import logging

import gradio as gr
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from . import __version__
from . import api
from .api.security import LOOPBACK_NAMES, BasicAuth, BodyLimit, CorsPolicy, LoopbackHost, SameOrigin
from .api.controlnet import controlnet_router
from .app import Easel
from .server_options import DEFAULT_MAX_BODY_MB, ServerOptions  # noqa: F401  (imported from here by callers)
from .ui import gradio_patches
from .ui.common import CSS
from .ui.layout import build_ui
from .ui.page_script import head_script

log = logging.getLogger(__name__)


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
        gradio_patches.install(app)  # before Gradio's /assets route: its page script with Easel's fix
        with gradio_patches.one_config_pass():  # the config that is served is computed by mounting, below
            blocks = build_ui(easel, local=options.host in LOOPBACK_NAMES)
            blocks.queue(default_concurrency_limit=None)
        allowed = [str(easel.paths.outputs_dir.resolve())]
        # HTTP Basic auth (above) protects the UI too, so Gradio's own login form is not used
        app = gr.mount_gradio_app(app, blocks, path="/", allowed_paths=allowed, css=CSS,
                                  footer_links=["api", "settings"], show_error=False,
                                  head=head_script() + _extension_head(easel),
                                  max_file_size=options.max_body_bytes)  # each file; BodyLimit bounds the request
        if blocks.config.get("head") != blocks.head:  # a Gradio that built its config before setting `head`
            blocks.config = blocks.get_config_file()  # (a whole second pass over the page: only when needed)
        app.state.gradio_blocks = blocks  # end_gradio_streams() ends its streams before shutting down
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
