"""Benchmark: click-to-result in a real browser, next to the server's own time and the bytes moved.

    python3 -m webui.bench_browser                            # demo model, headless Chromium, ~3 minutes
    python3 -m webui.bench_browser --baseline /tmp/easel-main  # the same flows against another source tree too
    python3 -m webui.bench_browser --picture 1024 --size 512 --steps 8 --rounds 3

Starts Easel in its own process (the tiny demo model on the CPU, Gradio's profiling on) and drives
it with headless Chromium through Playwright. Flows, in this order, on one page:

- txt2img: Generate until the picture and its parameters are shown;
- inpaint: a photo-like picture in the Inpaint editor, one painted stroke, Generate;
- idle: the page left alone for a few seconds with that painted picture (what it sends meanwhile);
- outpaint: the same picture in Outpaint, Generate;
- PNG Info: a PNG with parameters dropped into PNG Info, until they are shown;
- PNG Info, generation running: the same while a long txt2img job keeps the CPU busy.

For each: click -> result seconds; the server's own seconds (the job's "Time taken" for generations,
the parsing event's total for PNG Info, from Gradio's profiling traces); their ratio; the uploads
(count and KB, counted in the page), the Gradio events joined, other requests, KB up and KB down
(queue messages included); and every Gradio event of the flow with where its server time went
(queue wait, preprocess, function, postprocess). With --baseline DIR a second server is started from
that source tree (e.g. `git archive main | tar -x -C DIR`) and the rounds alternate between the two,
so both tables come from the same minutes of the same machine.
Needs Chromium (`--chromium PATH`, else `chromium` on PATH) and the playwright package.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

HERE = Path(__file__).resolve().parent.parent
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Runs in the page before Gradio: counts the bytes of every upload (Playwright cannot see multipart bodies)
# and every message of Gradio's queue stream (read by Gradio from a fetch stream Playwright only sees end).
INSTRUMENT = """
(() => {
  const messages = window.__benchSse = [];
  const uploads = window.__benchUploads = [];
  const now = () => performance.timeOrigin + performance.now();
  const realFetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : (input && input.url) || "";
    if (url.includes("/upload") && init && init.body instanceof FormData) {
      let bytes = 0;
      const names = [];
      for (const value of init.body.values()) {
        if (value instanceof Blob) { bytes += value.size; names.push(value.name || "blob"); }
      }
      uploads.push({t: now(), bytes, names});
    }
    const response = await realFetch(input, init);
    if (!url.includes("/queue/data") || !response.body || (init && init.method && init.method !== "GET")) {
      return response;
    }
    const [mine, theirs] = response.body.tee();
    (async () => {
      const reader = mine.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf("\\n\\n")) >= 0) {
          const text = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let msg = null;
          try { msg = JSON.parse(text.replace(/^data: ?/, "")).msg; } catch (e) {}
          messages.push({t: now(), bytes: text.length + 2, msg});
        }
      }
    })();
    return new Response(theirs, {status: response.status, statusText: response.statusText,
                                 headers: response.headers});
  };
})();
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, source: Path = HERE, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """Easel from the source tree `source` on a free port, data under `root`; returns once its model is loaded."""
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "GRADIO_PROFILING": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(source)}
    args = [sys.executable, "-m", "webui.cli", "--port", str(port), "--device", "cpu", "--demo-model",
            "--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"),
            "--data-dir", str(root / "data")]
    log = open(root / "server.log", "w")
    process = subprocess.Popen(args, cwd=source, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited:\n" + (root / "server.log").read_text())
        try:
            health = httpx.get(url + "/easel/v1/health", timeout=2)
            if health.status_code == 200 and health.json().get("loaded"):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not answer:\n" + (root / "server.log").read_text())


def event_names(url: str) -> dict[int, str]:
    """fn_index -> "<elem_id>.<event>" of its trigger ("... then" for chained steps), from the page's config."""
    config = httpx.get(url + "/config", timeout=30).json()
    elem = {c["id"]: c.get("props", {}).get("elem_id") or f"{c.get('type')}#{c['id']}"
            for c in config["components"]}
    deps = {dep.get("id", i): dep for i, dep in enumerate(config["dependencies"])}

    def name(key: int, depth: int = 0) -> str:
        dep = deps[key]
        if dep.get("trigger_after") is not None and depth < 5:
            return name(dep["trigger_after"], depth + 1) + " > then"
        targets = [t for t in dep.get("targets") or [] if t[0] is not None]
        return ", ".join(f"{elem.get(t[0], t[0])}.{t[1]}" for t in targets[:2]) or "load"

    return {key: name(key) for key in deps}


@dataclass
class FlowResult:
    name: str
    seconds: float
    server: float | None
    uploads: int
    upload_kb: float
    events: list[dict[str, Any]]
    other_requests: int
    kb_up: float
    kb_down: float
    queue_messages: int


@dataclass
class Session:
    """One server and one browser page on it, with everything the page sends and receives."""

    label: str
    url: str
    names: dict[int, str]
    page: Any = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    joins: dict[str, str] = field(default_factory=dict)  # event id -> event name
    results: list[FlowResult] = field(default_factory=list)

    def open(self, browser, size: int, steps: int) -> None:
        """A fresh page (a page left open keeps whatever it does in the background: it would load the other
        server's measurements), instrumented, with the generation controls set."""
        self.page = browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()
        self.page.set_default_timeout(120_000)  # a busy page can take long even to take a click: measured, not failed
        self.page.add_init_script(INSTRUMENT)
        self.attach()
        self.page.goto(self.url)
        self.page.wait_for_selector("#txt2img_prompt textarea", timeout=120_000)
        prepare(self, size, steps)

    def close(self) -> None:
        self.page.context.close()
        self.page = None

    def attach(self) -> None:
        def on_request(request):
            self.requests.append({"url": request.url, "method": request.method,
                                  "up": len(request.post_data_buffer or b""), "request": request})

        def on_response(response):
            if "/queue/join" not in response.url:
                return
            try:
                event_id = response.json().get("event_id")
                fn_index = json.loads(response.request.post_data or "{}").get("fn_index")
            except Exception:
                return
            if event_id:
                self.joins[event_id] = self.names.get(fn_index, f"fn {fn_index}")

        self.page.on("request", on_request)
        self.page.on("response", on_response)

    def measure(self, name: str, act: Callable[[], None], done: Callable[[], None],
                server: Callable[[list[dict[str, Any]]], float | None]) -> FlowResult:
        """Time `act()` (the click) until `done()` returns; collect what moved in between."""
        page = self.page
        page.wait_for_timeout(300)
        first_request = len(self.requests)
        first_message = page.evaluate("window.__benchSse.length")
        first_upload = page.evaluate("window.__benchUploads.length")
        joins_before = set(self.joins)
        started = time.time()
        act()
        done()
        seconds = time.time() - started
        page.wait_for_timeout(300)
        requests = self.requests[first_request:]
        messages = page.evaluate(f"window.__benchSse.slice({first_message})")
        uploads = page.evaluate(f"window.__benchUploads.slice({first_upload})")
        up = sum(u["bytes"] for u in uploads)
        down = sum(m["bytes"] for m in messages)
        for entry in requests:
            up += entry["up"]
            try:
                sizes = entry["request"].sizes()
                down += sizes["responseBodySize"] + sizes["responseHeadersSize"]
                up += sizes["requestHeadersSize"]
            except Exception:  # still open: the queue stream, counted by its messages
                pass
        traces = {t["event_id"]: t for t in httpx.get(self.url + "/gradio_api/profiling/traces", timeout=30).json()}
        events = []
        for event_id in [e for e in self.joins if e not in joins_before]:
            trace = traces.get(event_id, {})
            events.append({"name": self.joins[event_id], **{
                key: trace.get(f"{phase}_ms", 0) / 1000 for key, phase in
                (("wait", "queue_wait"), ("pre", "preprocess"), ("fn", "fn_call"), ("post", "postprocess"),
                 ("total", "total"))}, "yields": trace.get("n_iterations", 0)})
        others = [r for r in requests if "/upload" not in r["url"] and "/queue/join" not in r["url"]]
        result = FlowResult(name, seconds, server(events), len(uploads), sum(u["bytes"] for u in uploads) / 1024,
                            events, len(others), up / 1024, down / 1024, len(messages))
        self.results.append(result)
        return result


# ---- the flows -------------------------------------------------------------------------------------


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _tab(page, name: str, last: bool = False) -> None:
    tabs = page.get_by_role("tab", name=name, exact=True)
    (tabs.last if last else tabs.first).click()


def _time_taken(page, prefix: str) -> float | None:
    match = re.search(r"Time taken: ([\d.]+)s", page.locator(f"#html_info_{prefix}").inner_text())
    return float(match.group(1)) if match else None


def _wait_result(page, prefix: str, marker: str) -> None:
    """The new result is shown: its parameters (with `marker`) and the gallery's picture decoded."""
    page.locator(f"#html_info_{prefix}").filter(has_text=marker).wait_for(timeout=600_000)
    page.wait_for_function("""(id) => { const img = document.querySelector(`#${id} img`);
                                        return img && img.complete && img.naturalWidth > 0; }""",
                           arg=f"{prefix}_gallery", timeout=600_000)


def _generate(session: Session, prefix: str, name: str, seed: int) -> FlowResult:
    page = session.page
    page.locator(f"#{prefix}_seed input").fill(str(seed))
    page.locator(f"#{prefix}_seed input").press("Tab")
    return session.measure(name, lambda: page.locator(f"#{prefix}_generate").click(),
                           lambda: _wait_result(page, prefix, f"Seed: {seed}"), lambda _: _time_taken(page, prefix))


def paint_stroke(page, selector: str) -> None:
    """One diagonal brush stroke across the middle of the editor's canvas."""
    canvas = page.locator(f"{selector} canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.35
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + step * box["width"] * 0.03, y + step * box["height"] * 0.03)
    page.mouse.up()


def _pnginfo(session: Session, name: str, file: Path, expect: str) -> FlowResult:
    page = session.page

    def server(events):
        parsed = [e for e in events if e["name"].startswith("pnginfo_image.change")]
        return parsed[-1]["total"] if parsed else None

    return session.measure(name, lambda: page.locator("#pnginfo_image input[type=file]").set_input_files(str(file)),
                           lambda: page.locator("#pnginfo_html").filter(has_text=expect).wait_for(timeout=600_000),
                           server)


def prepare(session: Session, size: int, steps: int) -> None:
    page = session.page
    for prefix, tab in (("txt2img", "txt2img"), ("inpaint", "Inpaint")):
        _tab(page, tab)
        page.locator(f"#{prefix}_prompt textarea").fill("a lighthouse")
        _set_slider(page, f"{prefix}_steps", steps)
        _set_slider(page, f"{prefix}_width", size)
        _set_slider(page, f"{prefix}_height", size)


def one_round(session: Session, round_no: int, picture: Path, with_info: Path, size: int, idle: float) -> None:
    page = session.page
    seed = 100 + 10 * round_no
    _tab(page, "txt2img")
    _generate(session, "txt2img", "txt2img", seed + 1)

    _tab(page, "Inpaint")
    _tab(page, "Inpaint", last=True)  # the sub-tab
    page.locator("#img2maskimg input[type=file]").set_input_files(str(picture))
    page.locator("#img2maskimg canvas").first.wait_for()
    page.wait_for_timeout(1500)
    paint_stroke(page, "#img2maskimg")
    page.wait_for_timeout(500)
    _set_slider(page, "inpaint_width", size)
    _set_slider(page, "inpaint_height", size)
    _generate(session, "inpaint", "inpaint", seed + 2)
    session.measure(f"idle {idle:.0f}s, painted editor", lambda: None, lambda: page.wait_for_timeout(idle * 1000),
                    lambda _: None)

    page.get_by_role("tab", name="Outpaint", exact=True).click()
    page.locator("#outpaint_image input[type=file]").set_input_files(str(picture))
    page.locator("#outpaint_image img").first.wait_for()
    page.wait_for_timeout(1500)  # the slot's check, then the size sliders follow the picture
    _set_slider(page, "inpaint_width", size)
    _set_slider(page, "inpaint_height", size)
    _generate(session, "inpaint", "outpaint", seed + 3)

    _tab(page, "PNG Info")
    _pnginfo(session, "PNG Info", with_info, "a quiet harbour")


def pnginfo_beside_generation(session: Session, picture: Path, long_steps: int) -> None:
    page = session.page
    _tab(page, "txt2img")
    _set_slider(page, "txt2img_steps", long_steps)
    _set_slider(page, "txt2img_width", 512)
    _set_slider(page, "txt2img_height", 512)
    page.locator("#txt2img_seed input").fill("999")
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_progress").filter(has_text="Step").wait_for(timeout=120_000)
    _tab(page, "PNG Info")
    _pnginfo(session, "PNG Info, generation running", picture, "No generation parameters")
    _tab(page, "txt2img")
    page.locator("#txt2img_interrupt").click()
    page.locator("#html_info_txt2img").filter(has_text="Seed: 999").wait_for(timeout=600_000)


def write_pictures(folder: Path, side: int) -> tuple[Path, Path]:
    """A photo-like picture (a gradient with noise: PNG compresses it as it does photos) and the same
    picture with AUTOMATIC1111 parameters, for PNG Info."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp[::-1], ramp) / 2, np.full((side, side), 128)], -1)
    pixels = Image.fromarray((base + rng.normal(0, 20, (side, side, 3))).clip(0, 255).astype(np.uint8))
    picture = folder / f"picture-{side}.png"
    pixels.save(picture)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a quiet harbour at dawn\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
                  "CFG scale: 7, Seed: 1234, Size: 512x512, Model: easel-demo-tiny")
    with_info = folder / f"generated-{side}.png"
    pixels.save(with_info, pnginfo=info)
    return picture, with_info


# ---- the report ------------------------------------------------------------------------------------


def table(session: Session) -> list[str]:
    by_flow: dict[str, list[FlowResult]] = {}
    for r in session.results:
        by_flow.setdefault(r.name, []).append(r)
    head = ("flow", "click->result s", "server s", "ratio", "uploads (KB)", "events", "other req", "KB up",
            "KB down", "queue msgs")
    rows = [head]
    for name, runs in by_flow.items():
        seconds = statistics.median(r.seconds for r in runs)
        servers = [r.server for r in runs if r.server is not None]
        server = statistics.median(servers) if servers else None
        ratio = f"{seconds / server:.1f}x" if server else "-"
        def med(value: Callable[[FlowResult], float], runs: list[FlowResult] = runs) -> str:
            return f"{statistics.median(value(r) for r in runs):.0f}"

        rows.append((name, f"{seconds:.2f}", f"{server:.2f}" if server is not None else "-", ratio,
                     f"{med(lambda r: r.uploads)} ({med(lambda r: r.upload_kb)})", med(lambda r: len(r.events)),
                     med(lambda r: r.other_requests), med(lambda r: r.kb_up), med(lambda r: r.kb_down),
                     med(lambda r: r.queue_messages)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"{session.label}:"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("  Gradio events of each flow's last run (server seconds: queue wait / preprocess / function / "
                 "postprocess / total, yields):")
    for name, runs in by_flow.items():
        lines.append(f"    {name}:")
        counts: dict[str, list[dict[str, Any]]] = {}
        for e in runs[-1].events:
            counts.setdefault(e["name"], []).append(e)
        for event, group in counts.items():
            worst = max(group, key=lambda e: e["total"])
            lines.append(f"      {len(group):3d} x {event[:58]:<58} {worst['wait']:5.2f} {worst['pre']:5.2f} "
                         f"{worst['fn']:6.2f} {worst['post']:5.2f} {worst['total']:6.2f}  {worst['yields']}"
                         + ("  (slowest)" if len(group) > 1 else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench_browser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--picture", type=int, default=512, help="side of the uploaded pictures (px)")
    parser.add_argument("--size", type=int, default=64, help="generation width and height")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--idle", type=float, default=5, help="seconds the page is left alone after inpainting")
    parser.add_argument("--long-steps", type=int, default=150, help="steps of the job PNG Info runs beside")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another Easel source tree to measure in the same run")
    parser.add_argument("--chromium", default=os.environ.get("EASEL_CHROMIUM") or shutil.which("chromium")
                        or shutil.which("chromium-browser"))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium found: pass --chromium PATH")
    from playwright.sync_api import sync_playwright

    sources = ([("baseline " + str(args.baseline), args.baseline.resolve())] if args.baseline else []) + \
        [("this tree " + str(HERE), HERE)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        picture, with_info = write_pictures(root, args.picture)
        processes, sessions = [], []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=BROWSER_ARGS)
                for number, (label, source) in enumerate(sources):
                    process, url = start_server(root / f"server{number}", source)
                    processes.append(process)
                    sessions.append(Session(label, url, event_names(url)))
                for round_no in range(args.rounds):
                    for session in sessions:  # alternate, so both see the same machine load
                        try:
                            session.open(browser, args.size, args.steps)
                            one_round(session, round_no, picture, with_info, args.size, args.idle)
                            if round_no == args.rounds - 1:
                                pnginfo_beside_generation(session, picture, args.long_steps)
                        except Exception:  # report what was measured; the other rounds still run
                            traceback.print_exc()
                        finally:
                            session.close()
                browser.close()
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        kb = picture.stat().st_size / 1024
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (at the end)")
    print(f"flows: demo model on the CPU, {args.size}x{args.size}, {args.steps} steps; picture "
          f"{args.picture}x{args.picture} PNG ({kb:.0f} KB); median of {args.rounds} round(s)\n")
    for session in sessions:
        print("\n".join(table(session)) + "\n")
    if args.json:
        args.json.write_text(json.dumps({s.label: [r.__dict__ for r in s.results] for s in sessions}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
