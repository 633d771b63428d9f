"""Start-up (issue 23, item 18): the page answers first, turns into the UI by itself, and the engine warms behind it.

The in-process tests drive `StartingApp` (webui/startup.py) as uvicorn would. The browser test
starts a real server with the tiny model and an extension whose `model_loaded` hook holds the
warm-up's checkpoint load until the test opens a gate file, so "during warm-up" is a state the
test controls rather than a race it hopes to win.
"""
from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from webui.server_options import ServerOptions
from webui.starting_page import MARKER
from webui.starting_app import STATUS_PATH, StartingApp
from webui.startup import Startup

from conftest import ROOT, free_port


# ---- in process: what answers before the app exists, and what waits --------------------------------

class RecordingApp:
    """A stand-in for Easel's FastAPI app: answers every request with its path, records its lifespan."""

    def __init__(self):
        self.lifespan: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = f"app {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


async def _serving(front: StartingApp):
    """Run `front`'s lifespan startup as uvicorn does; returns (task, queue to send the shutdown on)."""
    inbox: asyncio.Queue = asyncio.Queue()
    replies: asyncio.Queue = asyncio.Queue()
    task = asyncio.create_task(front({"type": "lifespan", "state": {}}, inbox.get, replies.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await replies.get())["type"] == "lifespan.startup.complete"
    return task, inbox, replies


def _client(front: StartingApp, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://127.0.0.1:7860", **kwargs)


def test_the_starting_page_answers_and_other_requests_wait_for_the_app():
    async def scenario():
        startup = Startup()
        front = StartingApp(startup, ServerOptions())
        task, inbox, replies = await _serving(front)
        async with _client(front) as client:
            page = await client.get("/")
            assert page.status_code == 200 and MARKER in page.text and page.headers["cache-control"] == "no-store"
            status = (await client.get(STATUS_PATH)).json()
            assert status["ui"] is False and status["engine"] is False and status["error"] is None
            held = asyncio.create_task(client.get("/easel/v1/health"))
            await asyncio.sleep(0.2)
            assert not held.done()  # waits for the app instead of failing
            app = RecordingApp()
            startup.stage("Building the interface")
            await front._activate(app)
            answer = await asyncio.wait_for(held, 5)
            assert answer.status_code == 200 and answer.text == "app /easel/v1/health"
            assert app.lifespan == ["lifespan.startup"]  # Gradio starts its queue in the lifespan
            assert (await client.get("/")).text == "app /"  # the UI from now on
            status = (await client.get(STATUS_PATH)).json()
            assert status["ui"] is True and [s["name"] for s in status["stages"]] == [
                "Starting the server", "Building the interface"]
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await replies.get())["type"] == "lifespan.shutdown.complete"
        await task
        assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]

    asyncio.run(scenario())


def test_a_failed_start_answers_held_requests_with_the_reason():
    async def scenario():
        startup = Startup()
        front = StartingApp(startup, ServerOptions(api=True))
        await _serving(front)
        async with _client(front) as client:
            held = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={"prompt": "x"}))
            await asyncio.sleep(0.1)
            startup.failure = ValueError("--device mps: MPS is not available on this machine")
            front.release()
            answer = await asyncio.wait_for(held, 5)
        assert answer.status_code == 503 and "MPS is not available" in answer.text

    asyncio.run(scenario())


def test_the_starting_page_asks_for_the_login_and_checks_the_host():
    async def scenario():
        front = StartingApp(Startup(), ServerOptions(auth=[("alice", "secret")]))
        await _serving(front)
        login = "Basic " + base64.b64encode(b"alice:secret").decode()
        async with _client(front) as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get(STATUS_PATH)).status_code == 401
            assert (await client.get("/", headers={"authorization": login})).status_code == 200
            rebinding = await client.get("/", headers={"authorization": login, "host": "evil.example"})
            assert rebinding.status_code == 403

    asyncio.run(scenario())


def test_an_event_stream_for_a_session_that_is_gone_ends_quietly():
    """Gradio raises a 404 inside its event stream's already-started response when the page's session
    has gone (CI logged it as "Exception in ASGI application" during a restart); it now just ends."""
    import gradio as gr
    from fastapi import FastAPI

    async def scenario():
        with gr.Blocks() as blocks:
            gr.Button("go").click(lambda: None)
        blocks.queue()
        app = gr.mount_gradio_app(FastAPI(), blocks, path="/")
        front = StartingApp(Startup(), ServerOptions())
        await _serving(front)
        await front._activate(app)
        async with _client(front) as client:  # ASGITransport raises whatever the app raises
            stream = await client.get("/gradio_api/queue/data", params={"session_hash": "closed-tab"})
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            assert "Caught handled exception" not in stream.text
            missing = await client.get("/gradio_api/no-such-route")  # other answers are unchanged
            assert missing.status_code == 404

    asyncio.run(scenario())


def test_gradio_imports_without_rewriting_its_type_stubs():
    """`webui.gradio_import`: Gradio's import re-parses 85 component sources to rewrite .pyi stubs (2.3 s
    of each start); in a fresh interpreter with the hook, that function is the no-op and no stub changes."""
    code = ("import pathlib, gradio_client; from webui.gradio_import import skip_stub_rewriting\n"
            "assert skip_stub_rewriting()\n"
            "import importlib.util; folder = pathlib.Path(importlib.util.find_spec('gradio').origin).parent\n"
            "before = {p: p.stat().st_mtime_ns for p in folder.rglob('*.pyi')}\n"
            "import gradio, gradio.component_meta as meta\n"
            "assert meta.create_or_modify_pyi.__name__ == '_no_stub', meta.create_or_modify_pyi\n"
            "assert before and before == {p: p.stat().st_mtime_ns for p in folder.rglob('*.pyi')}\n"
            "assert gradio.Button is not None and not skip_stub_rewriting()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- a real server: the page first, the UI by itself, a generation that waits for the model ---------

HOLD_LOAD = '''
import time
from webui.extensions import api as easel

@easel.hookimpl
def model_loaded(model):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not __import__("os").path.exists({gate!r}):
        time.sleep(0.05)
'''


def _hold_load_extension(folder, gate) -> None:
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text('name = "hold-load"\nversion = "1.0"\napi_version = "2"\n'
                                           'entry = "extension.py"\n')
    (folder / "extension.py").write_text(HOLD_LOAD.format(gate=str(gate)))


def _wait(check, timeout: float, what: str, process: subprocess.Popen, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text()}")
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s:\n{log.read_text()[-3000:]}")


def test_page_answers_first_then_the_ui_and_a_generation_waits_for_the_model(tmp_path, tiny_ckpt_dir):
    from test_browser import BROWSER_ARGS, CHROMIUM, set_steps_and_size  # skips this test without chromium
    from playwright.sync_api import expect, sync_playwright

    gate = tmp_path / "gate"
    _hold_load_extension(tmp_path / "extensions" / "hold-load", gate)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with sync_playwright() as playwright, ThreadPoolExecutor(1) as pool:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)  # ready before the server
        process = subprocess.Popen(
            [sys.executable, "-m", "webui.cli", "--port", str(port), "--device", "cpu", "--api",
             "--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs"),
             "--data-dir", str(tmp_path / "data"), "--extensions-dir", str(tmp_path / "extensions"),
             "--ckpt-dir", str(tiny_ckpt_dir)], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            first = _wait(lambda: (r := httpx.get(url + "/", timeout=2)).status_code == 200 and r, 60,
                          "the first answer", process, log)
            status = httpx.get(url + STATUS_PATH, timeout=5).json()
            assert MARKER in first.text and not status["ui"] and not status["engine"], status
            # an API call made now waits for the app and is answered, never refused
            models = pool.submit(httpx.get, url + "/sdapi/v1/sd-models", timeout=180)

            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            expect(page.locator("#steps")).to_contain_text("Starting the server")
            # nobody reloads: the starting page turns into the UI by itself
            page.wait_for_selector("#txt2img_prompt textarea", timeout=180_000)
            assert models.result().status_code == 200
            assert any("tiny-sd1" in m["title"] for m in models.result().json())
            status = httpx.get(url + STATUS_PATH, timeout=5).json()
            assert status["ui"] and not status["engine"], status  # the checkpoint is still loading

            page.locator("#txt2img_prompt textarea").fill("a lighthouse")
            set_steps_and_size(page, 2)
            page.locator("#txt2img_generate").click()
            expect(page.locator("#txt2img_progress")).to_contain_text("Loading the model", timeout=30_000)
            expect(page.locator("#txt2img_progress")).to_contain_text("Your generation is next")
            assert page.locator("#txt2img_gallery img").count() == 0
            gate.touch()  # the load finishes; the generation runs
            expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=60_000)
            assert httpx.get(url + STATUS_PATH, timeout=5).json()["engine"]
        finally:
            gate.touch()
            browser.close()
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_value_found_wrong_while_starting_exits_2_with_the_message(tmp_path):
    done = subprocess.run([sys.executable, "-m", "webui.cli", "--port", str(free_port()), "--device", "mps",
                           "--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data"),
                           "--outputs-dir", str(tmp_path / "outputs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: --device mps: MPS is not available on this machine" in done.stderr
    assert "Traceback" not in done.stderr
