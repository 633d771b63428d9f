"""Benchmark: how heavy the page is — what building it costs the server and loading it costs the browser.

    python3 -m webui.bench_page                        # build + config numbers, ~30 s
    python3 -m webui.bench_page --browser --rounds 3   # + a real server and headless Chromium page loads
    python3 -m webui.bench_page --settings '{"control_net_unit_count": 3}'   # with other settings

Every browser test and every server start with the UI pays for the page: Gradio builds each
component and handler in Python, serialises them into one config, and the browser's Gradio
walks that config (for each component it scans every handler: the cost grows with components
times handlers). Printed, per section of the page (tabs, accordions) too:

- components and handlers (Gradio "dependencies") in the config, and its size in bytes;
- seconds to build the Blocks (`build_ui`) and to serialise the config, in this process;
- with --browser: a server started as the tests start one, its start-up stages, and seconds from
  `page.goto` to txt2img's prompt box (the "ready" every browser test waits for), per round; the
  CPU seconds Chromium spends on each load; and what an idle open page costs the browser and the
  server per minute (its timers' events), which every other step of a browser test waits behind.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = "#txt2img_prompt textarea"


def _sections(config: dict[str, Any], top: int) -> list[tuple[int, str]]:
    """(layout nodes, name) of each tab and accordion with `top` or more nodes under it."""
    components = {c["id"]: c for c in config["components"]}
    rows: list[tuple[int, str]] = []

    def size(node: dict) -> int:
        return 1 + sum(size(child) for child in node.get("children", []))

    def walk(node: dict, depth: int) -> None:
        component = components.get(node["id"])
        if component and component["type"] in ("tabitem", "accordion") and size(node) >= top:
            props = component.get("props", {})
            rows.append((size(node), "  " * depth + f'{props.get("label") or ""} ({props.get("elem_id") or "-"})'))
            depth += 1
        for child in node.get("children", []):
            walk(child, depth)

    walk(config["layout"], 0)
    return rows


def measure_build(root: Path, settings: dict[str, Any], rounds: int) -> dict[str, Any]:
    from .app import AppOptions, build
    from .ui.layout import build_ui

    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "config.json").write_text(json.dumps(settings))
    easel = build(AppOptions(models_dir=root / "models", ckpt_dirs=[root / "ckpt"], outputs_dir=root / "outputs",
                             data_dir=root / "data", device="cpu"))
    builds, serialise = [], []
    try:
        for _ in range(rounds):
            start = time.process_time()
            blocks = build_ui(easel)
            builds.append(time.process_time() - start)
            start = time.process_time()
            config = blocks.get_config_file()
            serialise.append(time.process_time() - start)
    finally:
        easel.close()
    text = json.dumps(config, default=str)
    return {"components": len(config["components"]), "handlers": len(config["dependencies"]),
            "config_bytes": len(text), "build_s": statistics.median(builds), "config_s": statistics.median(serialise),
            "sections": _sections(json.loads(text), 40)}


def measure_browser(root: Path, settings: dict[str, Any], rounds: int, chromium: str,
                    idle: float = 30.0) -> dict[str, Any]:
    import httpx
    from playwright.sync_api import sync_playwright

    server_root = root / "server"
    (server_root / "data").mkdir(parents=True, exist_ok=True)
    (server_root / "data" / "config.json").write_text(json.dumps(settings))
    start = time.monotonic()
    server, url = _start_server(server_root, root / "ckpt")
    started = time.monotonic() - start
    loads, cpu = [], []
    try:
        stages = {s["name"]: s["seconds"] for s in httpx.get(url + "/easel/v1/startup").json()["stages"]}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            for _ in range(rounds):
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                before, start = _browser_cpu(), time.monotonic()
                page.goto(url)
                page.wait_for_selector(READY, timeout=180_000)
                loads.append(time.monotonic() - start)
                cpu.append(_browser_cpu() - before)
                page.close()
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector(READY, timeout=180_000)
            time.sleep(5)  # the load events settle
            before, server_before = _browser_cpu(), _cpu_of(server.pid)
            time.sleep(idle)
            idle_cpu = (_browser_cpu() - before) / idle * 60
            idle_server = (_cpu_of(server.pid) - server_before) / idle * 60
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    return {"server_start_s": started, "stages": stages, "page_ready_s": loads, "page_cpu_s": cpu,
            "idle_browser_cpu_per_min": idle_cpu, "idle_server_cpu_per_min": idle_server}


def _start_server(root: Path, ckpt_dir: Path) -> tuple[subprocess.Popen, str]:
    """Easel with the UI on a free port, as the tests start it; returns once its page answers."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "webui.cli", "--port", str(port), "--device", "cpu",
                                "--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"),
                                "--data-dir", str(root / "data"), "--ckpt-dir", str(ckpt_dir)],
                               cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/easel/v1/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start")


def _cpu_of(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _browser_cpu() -> float:
    """CPU seconds used so far by every Chromium process of this one (the page's renderer included): on a
    busy machine the wall time of a page load says more about the neighbours than about the page."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name().lower():
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m webui.bench_page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also start a server and load the page in Chromium")
    parser.add_argument("--chromium", default=os.environ.get("EASEL_CHROMIUM") or "/usr/bin/chromium")
    parser.add_argument("--settings", default="{}", help="config.json content (JSON) for both measurements")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .model_manager.architecture import Architecture
    from .model_manager.tiny import write_single_file

    settings = json.loads(args.settings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ckpt").mkdir()
        write_single_file(root / "ckpt" / "tiny-sd1.safetensors", Architecture("sd1"), seed=7)
        built = measure_build(root, settings, args.rounds)
        print(f"components {built['components']}  handlers {built['handlers']}  "
              f"config {built['config_bytes'] / 1e6:.2f} MB  build {built['build_s']:.2f} s  "
              f"config {built['config_s']:.2f} s (CPU seconds, medians of {args.rounds})")
        print("layout nodes per section (40 or more):")
        for size, name in built["sections"]:
            print(f"  {size:5d}  {name}")
        if args.browser:
            loaded = measure_browser(root, settings, args.rounds, args.chromium)
            print(f"server start {loaded['server_start_s']:.1f} s  stages: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in loaded["stages"].items()))
            print("page ready (goto -> txt2img prompt), s: " + " ".join(f"{s:.1f}" for s in loaded["page_ready_s"])
                  + f"  median {statistics.median(loaded['page_ready_s']):.1f}")
            print("browser CPU seconds per load: " + " ".join(f"{s:.1f}" for s in loaded["page_cpu_s"])
                  + f"  median {statistics.median(loaded['page_cpu_s']):.1f}")
            print(f"an idle page (txt2img shown): browser {loaded['idle_browser_cpu_per_min']:.1f}, server "
                  f"{loaded['idle_server_cpu_per_min']:.1f} CPU seconds per minute")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
