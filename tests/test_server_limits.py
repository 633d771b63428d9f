"""Server hardening on a real server: bounded outputs and memory, bounded uploads, one status per refusal.

One server serves the module, with low output limits in config.json (4 MP per image, 40 MP per
job) so that "large" stays cheap on a CI machine, a 4 MiB body limit, and pickle model files
that must be refused the same way wherever they are named.
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api_helpers import TINY, wait_until
from conftest import start_server

MAX_OUTPUT_MP = 4
MAX_JOB_MP = 40
BODY_MB = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt_dir):
    import torch

    root = tmp_path_factory.mktemp("limits")
    (root / "data").mkdir()
    (root / "data" / "config.json").write_text(json.dumps({"img_max_output_mp": MAX_OUTPUT_MP,
                                                           "job_max_output_mp": MAX_JOB_MP}))
    for folder, name in (("ControlNet", "cnpickle.pth"), ("embeddings", "embpickle.pt")):
        (root / "models" / folder).mkdir(parents=True)
        torch.save({"weight": torch.zeros(2)}, root / "models" / folder / name)
    running = start_server(root, tiny_ckpt_dir, ["--api", "--api-max-body-mb", str(BODY_MB)])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def png_b64(width: int, height: int) -> str:
    """A picture that compresses to a few KB however large (a request stays far under the body limit)."""
    image = Image.new("RGB", (width, height), (30, 90, 160))
    image.paste((220, 180, 40), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def messages(response: httpx.Response) -> list[tuple[list, str]]:
    return [(item["loc"], item["msg"]) for item in response.json()["detail"]]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ---- outputs ------------------------------------------------------------------------------------------


def test_extras_output_over_the_limit_is_refused_before_any_work(client):
    image = png_b64(1500, 1500)
    response = client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Lanczos",
                                                                 "upscaling_resize": 8})
    assert response.status_code == 422
    assert messages(response) == [(["body", "upscaling_resize"], "upscaling_resize: the result would be 12000x12000 "
                                   "(144 MP), over the 4 MP limit (setting img_max_output_mp)")]
    scale_to = client.post("/sdapi/v1/extra-single-image", json={
        "image": image, "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 3000,
        "upscaling_resize_h": 3000})
    assert scale_to.status_code == 422 and messages(scale_to)[0][0] == ["body", "upscaling_resize_w"]
    batch = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(64, 64), "name": "small.png"}, {"data": image, "name": "big.png"}],
        "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert batch.status_code == 422
    assert "imageList.1.data would become 3000x3000 (9 MP)" in messages(batch)[0][1]
    queued = client.post("/easel/v1/jobs", json={"type": "extra-single-image",
                                                 "params": {"image": image, "upscaler_1": "Lanczos",
                                                            "upscaling_resize": 8}})
    assert queued.status_code == 422 and messages(queued)[0][0] == ["body", "params", "upscaling_resize"]


def test_generation_outputs_are_bounded_per_image_and_per_job(client):
    hires = client.post("/sdapi/v1/txt2img", json={**TINY, "width": 1024, "height": 1024, "enable_hr": True,
                                                   "hr_scale": 2, "hr_upscaler": "Latent"})
    assert hires.status_code == 422
    assert messages(hires) == [(["body", "hr_scale"], "hr_scale: the result would be 2048x2048 (4 MP), over the "
                                                      "4 MP limit (setting img_max_output_mp)")]
    many = client.post("/sdapi/v1/txt2img", json={**TINY, "width": 1024, "height": 1024, "batch_size": 8,
                                                  "n_iter": 5})
    assert many.status_code == 422
    assert messages(many) == [(["body", "n_iter"], "n_iter: 40 images would be 42 MP in all, over the 40 MP limit "
                                                   "for one job (setting job_max_output_mp)")]


def test_clients_cannot_raise_the_output_limits(client):
    for key in ("img_max_output_mp", "job_max_output_mp"):
        assert client.post("/sdapi/v1/options", json={key: 1000}).status_code == 403
        override = client.post("/sdapi/v1/txt2img", json={**TINY, "override_settings": {key: 1000}})
        assert override.status_code == 422 and key in override.text


def test_memory_returns_after_many_large_requests(client, server):
    """20 upscales to 4 MP (12 MB of pixels each) and 20 refused 64 MP ones: the job history keeps files,
    not images, so the server's RSS comes back to within 50 MB of where it started."""
    if not Path(f"/proc/{server.process.pid}/status").exists():
        pytest.skip("needs /proc")
    image = png_b64(1000, 1000)
    body = {"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 2}
    for _ in range(2):  # warm-up: imports, first allocations
        assert client.post("/sdapi/v1/extra-single-image", json=body).status_code == 200
    before = rss_mb(server.process.pid)
    for index in range(20):
        response = client.post("/sdapi/v1/extra-single-image", json=body)
        assert response.status_code == 200, response.text
        oversized = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaling_resize": 8})
        assert oversized.status_code == 422
    after = rss_mb(server.process.pid)
    print(f"RSS before {before:.0f} MB, after 40 requests {after:.0f} MB")
    assert after - before < 50, (before, after)


def test_finished_results_stay_fetchable_from_files(client, server):
    queued = client.post("/easel/v1/jobs", json={"type": "extra-single-image",
                                                 "params": {"image": png_b64(200, 100), "upscaler_1": "Lanczos"}})
    assert queued.status_code == 202
    job_id = queued.json()["id"]
    first = client.get(f"/easel/v1/jobs/{job_id}/result", params={"wait": 60}).json()
    archive = server.root / "data" / "cache" / "job-results"
    wait_until(lambda: any(archive.glob("*/00000.png")), timeout=30, what="the result to be archived")
    second = client.get(f"/easel/v1/jobs/{job_id}/result").json()
    assert len(first["images"]) == len(second["images"]) == 1
    before, after = (Image.open(io.BytesIO(base64.b64decode(r["images"][0]))) for r in (first, second))
    assert after.size == (400, 200) and after.info == before.info
    assert after.tobytes() == before.tobytes()  # the same pixels and text, read back from the file
    assert "image" not in second["parameters"]  # the history keeps no input images


# ---- uploads -----------------------------------------------------------------------------------------


def test_gradio_uploads_are_bounded_by_the_body_limit(client):
    small = client.post("/gradio_api/upload", files={"files": ("small.png", os.urandom(1 << 20), "image/png")})
    assert small.status_code == 200, small.text
    big = client.post("/gradio_api/upload", files={"files": ("big.png", os.urandom((BODY_MB + 1) << 20),
                                                             "image/png")})
    assert big.status_code == 413 and "--api-max-body-mb" in big.json()["detail"]

    def chunks():  # no Content-Length: read up to the limit, then refused
        yield b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(BODY_MB + 2):
            yield os.urandom(1 << 20)
        yield b"\r\n--xx--\r\n"

    streamed = client.post("/gradio_api/upload", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=xx"})
    assert streamed.status_code == 413


# ---- refusals ----------------------------------------------------------------------------------------


def test_the_same_refusal_gets_the_same_answer(client, server):
    image = png_b64(64, 64)
    unit = {"enabled": True, "module": "none", "image": image}
    pickle_unit = client.post("/sdapi/v1/txt2img", json={
        **TINY, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": "cnpickle"}]}}})
    assert pickle_unit.status_code == 503 and "--allow-pickle" in pickle_unit.json()["detail"]
    missing_unit = client.post("/sdapi/v1/txt2img", json={
        **TINY, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": "nosuch"}]}}})
    assert missing_unit.status_code == 422
    assert messages(missing_unit)[0][0] == ["body", "alwayson_scripts", "controlnet", "args[0]", "model"]
    style = client.post("/sdapi/v1/txt2img", json={**TINY, "styles": ["nosuch"]})
    assert style.status_code == 422 and messages(style)[0][0] == ["body", "styles", "0"]
    tags = client.post("/sdapi/v1/txt2img", json={**TINY, "prompt": "a fox, embpickle <lora:nosuch:1>"})
    assert tags.status_code == 200
    warnings = json.loads(tags.json()["info"])["easel"]["warnings"]
    assert any("nosuch" in w and "ignored" in w for w in warnings), warnings
    assert any(w.startswith("embedding embpickle: ") and "--allow-pickle" in w for w in warnings), warnings
    root = str(server.root.resolve())
    for response in (pickle_unit, missing_unit, style, tags):
        assert root not in response.text and str(server.root) not in response.text
