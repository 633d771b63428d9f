"""CORS does what the README promises (issue 23, item 5), on a real server with the UI.

No other web page may read what Easel serves - Gradio's routes and generated images included -
unless its origin is listed with --cors-allow-origins; and "same origin" means the same scheme,
host and port, as browsers mean it.
"""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image


BAD_JOB = {"params": {"steps": 0}}  # refused with a 422 once it reaches the route: nothing is queued


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def output_image(server) -> Path:
    path = server.root / "outputs" / "cors-probe" / "probe.png"  # the shared ui_server: away from the tabs' folders
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


@pytest.mark.parametrize("origin", ["http://localhost:9999", "http://127.0.0.1:1", "http://evil.example"])
def test_other_pages_cannot_read_output_images(ui_server, origin):
    path = output_image(ui_server)
    response = httpx.get(f"{ui_server.url}/gradio_api/file={path.resolve()}", headers={"Origin": origin}, timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")  # served, but not to scripts
    assert cors_headers(response) == {}


def test_no_gradio_route_answers_a_foreign_preflight(ui_server):
    for path in ("/gradio_api/upload", "/gradio_api/queue/join", "/config"):
        response = httpx.options(ui_server.url + path, timeout=30, headers={
            "Origin": "http://localhost:9999", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in response.headers, path
        assert response.status_code == 403, path


def test_same_origin_means_same_scheme_host_and_port(ui_server):
    port = ui_server.url.rsplit(":", 1)[1]
    for origin in (f"https://127.0.0.1:{port}", f"http://127.0.0.1:{int(port) + 1}", f"http://localhost:{port}"):
        refused = httpx.post(ui_server.url + "/easel/v1/jobs", json=BAD_JOB, headers={"Origin": origin}, timeout=30)
        assert refused.status_code == 403 and "cross-origin" in refused.text, origin
    own = httpx.post(ui_server.url + "/easel/v1/jobs", json=BAD_JOB, headers={"Origin": ui_server.url}, timeout=30)
    assert own.status_code == 422  # reached the route: the page's own origin may
    config = httpx.get(ui_server.url + "/config", headers={"Origin": ui_server.url}, timeout=30)
    assert config.status_code == 200
