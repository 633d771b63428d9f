"""The ASGI app uvicorn serves from the first moment: the starting page until Easel's app is built, then that app.

Before `activate(app)`, it answers `/` with the starting page (webui/starting_page.py) and
`/easel/v1/startup` with what start-up is doing; every other request waits until the real app is
active and is then passed to it, so API calls and Gradio's requests made during start-up are
answered, never refused. After `activate`, all but the status route go straight to the real app.
It drives the real app's lifespan (Gradio starts its queue there) itself, since uvicorn started
with this one. Imports neither gradio, FastAPI, torch nor the engine.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .api.security import LOOPBACK_NAMES, BasicAuth, LoopbackHost
from .server_options import ServerOptions
from .starting_page import starting_page

if TYPE_CHECKING:
    from .startup import Startup

log = logging.getLogger(__name__)
STATUS_PATH = "/easel/v1/startup"
EVENT_STREAM_SUFFIX = "/queue/data"  # Gradio's per-page event stream (Server-Sent Events)


class StartingApp:
    """The ASGI app uvicorn serves: the starting page until `activate(app)`, then `app` for all but the status.

    The starting page and requests held for the real app pass the same Host and login checks as
    the real app (`LoopbackHost`, `BasicAuth`), so nothing answers to a rebinding page or a
    stranger, not even "starting".
    """

    def __init__(self, startup: Startup, options: ServerOptions) -> None:
        self.startup = startup
        self.app: Any = None  # the real app, once active
        self.before_shutdown: list[Callable[[], None]] = []
        self._page = starting_page(__version__) if options.ui else None
        self._own = self._protect(self._answer, options)
        self._held = self._protect(self._wait_and_pass, options)
        self._released = asyncio.Event()  # the real app is active, or start-up ended without one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: dict[str, Any] = {}  # lifespan state uvicorn copies into each request's scope
        self._inner: _Lifespan | None = None
        self._stopping = False  # set by stop(): responses cut short from now on end quietly

    @staticmethod
    def _protect(app, options: ServerOptions):
        if options.auth:
            app = BasicAuth(app, credentials=list(options.auth))
        if options.host in LOOPBACK_NAMES:
            app = LoopbackHost(app)
        return app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if self._is_own(scope):
            return await self._own(scope, receive, send)
        if self.app is not None:
            return await self._pass(scope, receive, send)
        await self._held(scope, receive, send)

    async def _pass(self, scope, receive, send) -> None:
        """To the real app; a response that ends early for an expected reason ends quietly.

        Expected: anything the shutdown cuts short (a stream whose connection was dropped, or one
        cancelled at the graceful timeout), and Gradio's event stream when its page's session went
        away while it was open. Gradio deletes a session when one of its streams is cancelled, and a
        second stream of the same page then raises a 404 inside a response that has already started
        (CI logged that as "Exception in ASGI application" during a restart). Those are logged at
        debug level and the response is closed; any other error propagates as before.
        """
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response = {"started": False, "complete": False}

        async def watched(message) -> None:
            if message["type"] == "http.response.start":
                response["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            stream_gone = response["started"] and scope["path"].endswith(EVENT_STREAM_SUFFIX)
            if not (self._stopping or stream_gone):
                raise
            log.debug("%s ended early (%s)", scope["path"], "stopping" if self._stopping else "session gone",
                      exc_info=True)
            if response["started"] and not response["complete"]:
                try:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except Exception:  # the client has gone already
                    pass

    def _is_own(self, scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        return scope["path"] == STATUS_PATH or (scope["path"] == "/" and self._page is not None and self.app is None)

    async def _answer(self, scope, receive, send) -> None:
        if scope["path"] == STATUS_PATH:
            body, kind = json.dumps(self.startup.as_dict()).encode(), b"application/json"
        else:
            body, kind = self._page, b"text/html; charset=utf-8"
        await _respond(send, 200, body, kind, head=scope["method"] == "HEAD")

    async def _wait_and_pass(self, scope, receive, send) -> None:
        await self._released.wait()
        if self.app is not None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1013})  # try again later
        error = self.startup.as_dict()["error"]
        text = f"Easel could not start: {error}" if error else "Easel is stopping."
        await _respond(send, 503, text.encode(), b"text/plain; charset=utf-8")

    async def _lifespan(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._state = scope.get("state", {})
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._inner is not None:
                    await self._inner.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- called from the start-up thread -----------------------------------------------------

    def activate(self, app) -> None:
        """Start `app`'s lifespan (Gradio starts its queue there) and send every request to it from now on."""
        asyncio.run_coroutine_threadsafe(self._activate(app), self._event_loop()).result()

    def release(self) -> None:
        """Start-up ended without an app: requests held for it get a 503 that says why."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._released.set)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the server is not running")
        return self._loop

    async def _activate(self, app) -> None:
        self._inner = _Lifespan(app, self._state)
        await self._inner.startup()
        self.app = app
        self.startup.ui = True
        self._released.set()

    # ---- called by the server when it stops --------------------------------------------------

    def stop(self) -> None:
        """In the event loop, before uvicorn's graceful shutdown: end long-lived streams, answer held requests."""
        self._stopping = True
        for callback in self.before_shutdown:
            try:
                callback()
            except Exception:  # never stand in the way of shutting down
                log.debug("a shutdown callback failed", exc_info=True)
        self._released.set()


class _Lifespan:
    """Drives an ASGI app's lifespan protocol (startup, later shutdown) the way a server would."""

    def __init__(self, app, state: dict[str, Any]) -> None:
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
        self._task = asyncio.create_task(app(scope, self._to_app.get, self._from_app.put))

    async def startup(self) -> None:
        reply = await self._exchange("lifespan.startup")
        if reply.get("type") != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {reply.get('message') or reply}")

    async def shutdown(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._exchange("lifespan.shutdown"), timeout)
        except Exception:
            log.debug("the app's lifespan shutdown failed", exc_info=True)

    async def _exchange(self, message_type: str) -> dict:
        await self._to_app.put({"type": message_type})
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        error = self._task.exception()
        return {"type": "ended", "message": repr(error) if error else "its lifespan ended"}


async def _respond(send, status: int, body: bytes, content_type: bytes, head: bool = False) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b"" if head else body})
