"""Start-up: answer HTTP at once; import and build the rest of Easel in the background.

`serve()` starts uvicorn straight away with a `StartingApp` in front. Until the real app exists
it answers `/` with the starting page (webui/starting_page.py) and `/easel/v1/startup` with what
is being done; every other request (the API, Gradio's routes, the health check) waits for the
real app instead of failing. Meanwhile a thread imports torch and the engine, builds Easel
(`app.build`) and the FastAPI app with the UI (`server.create_fastapi`) and hands it over; from
then on every request passes straight through. Then the engine warms in the background: the
selected checkpoint loads as the job queue's first job, so a generation submitted meanwhile waits
behind it (the UI says "Loading the model"), and the generations queued at the last stop are
queued again.

Why not the real UI first: building Easel's Gradio page alone takes about as long as a bare
Gradio app takes to start, so the page a browser can get within 1.1x of that is this one.

Importing this module loads neither gradio, FastAPI, torch nor the engine, and starts nothing.
"""
from __future__ import annotations

import asyncio

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import uvicorn

from .server_options import ServerOptions
from .starting_app import StartingApp

if TYPE_CHECKING:
    from .app import Easel

log = logging.getLogger(__name__)
# make_easel(stage) builds Easel, calling stage("what it does now") as it goes
MakeEasel = Callable[[Callable[[str], None]], "Easel"]


@dataclass
class Stage:
    name: str
    started: float


class Startup:
    """What start-up has done so far (thread-safe), for the starting page and the command line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._stages = [Stage("Starting the server", self._began)]
        self._stopped = False
        self.ui = False  # the real app answers
        self.engine_ready: Callable[[], bool] = lambda: False  # the selected checkpoint is loaded
        self.easel: Easel | None = None
        self.failure: BaseException | None = None
        self.restart_asked: float | None = None  # monotonic time of "Apply and restart UI"

    def stage(self, name: str) -> None:
        with self._lock:
            self._stages.append(Stage(name, time.monotonic()))

    def adopt(self, easel: Easel) -> bool:
        """Keep `easel` for closing at the end; False when the server already stopped (close it yourself)."""
        with self._lock:
            if self._stopped:
                return False
            self.easel = easel
            return True

    def stop(self) -> Easel | None:
        """The server stopped: what was built, to close; nothing is adopted after this."""
        with self._lock:
            self._stopped = True
            return self.easel

    @property
    def stopped(self) -> bool:
        return self._stopped

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            ends = [stage.started for stage in self._stages[1:]] + [now]
            stages = [{"name": stage.name, "seconds": round(end - stage.started, 2)}
                      for stage, end in zip(self._stages, ends)]
        error = None if self.failure is None else (str(self.failure) or type(self.failure).__name__)
        return {"ui": self.ui, "engine": self.ui and self.engine_ready(), "stage": stages[-1]["name"],
                "stages": stages, "seconds": round(now - self._began, 2), "error": error}


STREAM_GRACE_SECONDS = 1.0  # of the 3 s graceful shutdown: then lingering connections are closed


class QuietServer(uvicorn.Server):
    """uvicorn.Server that lets the front app end its streams before the graceful shutdown, so it is quick and quiet."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets=None) -> None:  # type: ignore[override]
        ending = asyncio.ensure_future(self._keep_ending_streams())
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()

    async def _keep_ending_streams(self) -> None:
        """Tell the streams to end, and again every 0.25 s: a page event racing the shutdown opens a stream
        after the first signal, which would otherwise wait out the graceful timeout and be cancelled loudly.
        A connection still open after STREAM_GRACE_SECONDS is closed: its app then sees the client leave and
        ends the response itself (CI once logged a stream cancelled at the timeout despite the signals)."""
        started = time.monotonic()
        while True:
            try:
                self._before_shutdown()
                if time.monotonic() - started >= STREAM_GRACE_SECONDS:
                    self._drop_lingering_connections()
            except Exception:  # never let this stand in the way of shutting down
                log.debug("could not prepare the shutdown", exc_info=True)
            await asyncio.sleep(0.25)

    def _drop_lingering_connections(self) -> None:
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()


def serve(options: ServerOptions, make_easel: MakeEasel) -> Startup:
    """Answer HTTP now, build Easel and its app in the background, warm the engine; return when the server stops.

    The returned `Startup` holds the Easel that was built (its restart request included) or the
    exception that stopped start-up."""
    startup = Startup()
    front = StartingApp(startup, options)
    config = uvicorn.Config(front, host=options.host, port=options.port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=3)
    server = QuietServer(config, before_shutdown=front.stop)
    threading.Thread(target=_start_up, args=(startup, front, server, options, make_easel), name="easel-start-up",
                     daemon=True).start()
    print(f"Running on local URL:  http://{options.host}:{options.port}", flush=True)
    try:
        server.run()
    finally:
        easel = startup.stop()
        if easel is not None:
            easel.close()
        if startup.restart_asked is not None:
            log.info("stopped %.1fs after the restart was asked for", time.monotonic() - startup.restart_asked)
    return startup


def _start_up(startup: Startup, front: StartingApp, server: uvicorn.Server, options: ServerOptions,
              make_easel: MakeEasel) -> None:
    """The start-up thread: build, hand the app over, warm the engine, then watch for a restart request."""
    while not server.started:  # answer first: the heavy imports begin once the socket listens
        if server.should_exit or startup.stopped:
            return
        time.sleep(0.01)
    try:
        easel = make_easel(startup.stage)
        if not startup.adopt(easel):  # the server stopped meanwhile
            easel.close()
            return
        startup.stage("Importing the interface (gradio)")
        from .server import create_fastapi, end_gradio_streams

        startup.stage("Building the interface")
        app = create_fastapi(easel, options)
        front.before_shutdown.append(lambda: end_gradio_streams(app))
        front.activate(app)
    except ValueError as exc:  # a value only building could check (e.g. --device); the message names it
        _failed(startup, front, server, exc)
        return
    except BaseException as exc:
        if not startup.stopped:
            log.exception("start-up failed")
        _failed(startup, front, server, exc)
        return
    startup.stage("Loading the model")
    job = easel.preload()  # the queue's first job: generations submitted now wait behind it
    startup.engine_ready = (lambda: True) if job is None else (lambda: job.done)
    easel.restore_queue()  # generations queued when Easel last stopped run now, in their order
    ready = False
    while not server.should_exit:  # "Apply and restart UI" asks for a clean restart
        if not ready and startup.engine_ready():
            ready = True
            startup.stage("Ready")
        if easel.restart_requested.wait(0.1):
            startup.restart_asked = time.monotonic()
            server.should_exit = True


def _failed(startup: Startup, front: StartingApp, server: uvicorn.Server, exc: BaseException) -> None:
    startup.failure = exc
    front.release()
    server.should_exit = True
