"""Two fixes to Gradio: its page script's slowdown that grows with every event, and repeated config passes.

`one_config_pass()`: building the page, enabling its queue and mounting it each make Gradio compute
the whole page config (2,100+ blocks, 0.44 s a pass on an idle 2-core box) and build an app around it;
only the last pass, in `mount_gradio_app`, is ever served (the earlier apps are thrown away, and
nothing reads their config). Inside the context those passes return an empty config: 4 of 6 passes
(~1.8 s of each start) are skipped. Mounting happens after it, with the real passes.

The page script:

Gradio's page keeps a loading status for each component an event touched and, on every status message of
any event (each progress message of a generation, each queue-panel tick), re-applies all of them — each
one a search of the whole component tree (~2,400 components here, ~10 ms on a loaded 2-core box). When an
event completes, Gradio marks it with a stream state ("closed") even when it is not a stream, and that
state makes it record a status for every one of the event's *inputs* as well. Generate reads every field
of its tab (hundreds of inputs), so after the first image each later status message re-applied hundreds
of statuses: the page fell further behind the longer a job ran (profiled: 60 % of the page's time; a
PNG Info drop waited over 60 s in CI while an inpaint job ran).

The fix gives a non-stream event no stream state when it completes, as it had none while it ran (streams,
which Easel does not use, keep theirs). Inputs then get no status; nothing visible changes: a non-stream
input never shows one. The patched file is served in place of Gradio's own under the same URL. When a
Gradio upgrade changes that code, nothing is patched and the start-up log says so (the test that checks
the patch applies fails, so the pin cannot move silently).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import gradio
from fastapi import FastAPI
from fastapi.responses import Response

log = logging.getLogger(__name__)

ASSETS = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"

# (what Gradio's minified page script says, what Easel serves instead)
STREAM_STATE_AT_COMPLETE = ("if(s.stage===`complete`){n=`closed`,",
                            "if(s.stage===`complete`){n=r.connection_type===`stream`?`closed`:null,")


@lru_cache(maxsize=1)
def patched_assets() -> dict[str, bytes]:
    """{asset file name: patched content} for Gradio's page scripts that hold the code to fix."""
    old, new = STREAM_STATE_AT_COMPLETE
    patched: dict[str, bytes] = {}
    for path in sorted(ASSETS.glob("Blocks-*.js")):
        text = path.read_text(encoding="utf-8")
        if text.count(old) == 1:
            patched[path.name] = text.replace(old, new).encode("utf-8")
    if not patched:
        log.warning("Gradio %s: its page script no longer has the code Easel patches (loading statuses of "
                    "inputs); served unpatched", gradio.__version__)
    return patched


def install(app: FastAPI) -> list[str]:
    """Route each patched asset's URL to the patched content (before Gradio's own /assets route is mounted)."""
    for name, body in patched_assets().items():
        def serve(body: bytes = body) -> Response:
            return Response(body, media_type="text/javascript", headers={"Cache-Control": "no-cache"})
        app.add_api_route(f"/assets/{name}", serve, methods=["GET"], include_in_schema=False)
    return list(patched_assets())


@contextmanager
def one_config_pass() -> Iterator[None]:
    """Skip Gradio's page-config passes while the page is built and its queue enabled (see the module doc).

    Mount the page after leaving the context: `mount_gradio_app` computes the config that is served."""
    real = gradio.Blocks.get_config_file
    gradio.Blocks.get_config_file = lambda self: {}  # type: ignore[method-assign]
    try:
        yield
    finally:
        gradio.Blocks.get_config_file = real  # type: ignore[method-assign]
