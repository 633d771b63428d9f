"""Every image upload slot checks the declared size before decoding (img2img, Inpaint, PNG Info, ControlNet).

The components are tested directly (real Gradio components, real files), then through a
running server's Gradio routes, as the browser (PNG Info, an event with no API name) and
gradio_client (the img2img Generate event) call them.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio.data_classes import FileData
from gradio_client import Client, handle_file
from PIL import Image, PngImagePlugin

from webui.settings import SettingsStore
from webui.ui.uploads import checked_editor, checked_image, settings_limit, uploaded_image

from conftest import start_server
from upscale_helpers import png_with_declared_size, smooth_image

HUGE = (12000, 12000)  # 144 megapixels declared (over our 100, under Pillow's 179), a few bytes of data


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_with_declared_size(*HUGE))
    small = tmp_path / "small.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64")
    smooth_image(64, 48, seed=3).save(small, pnginfo=info)
    return {"huge": huge, "small": small}


def file_data(path: Path) -> FileData:
    return FileData(path=str(path), orig_name=path.name)


@pytest.fixture
def settings(tmp_path) -> SettingsStore:
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    return store


def test_checked_image_refuses_a_declared_size_over_the_limit(files, settings):
    with gr.Blocks():
        image = checked_image(settings_limit(settings), label="Image for img2img", type="pil", image_mode="RGB")
    with pytest.raises(gr.Error) as caught:
        image.preprocess(file_data(files["huge"]))
    message = caught.value.message
    assert "Image for img2img (huge.png)" in message and "12000x12000" in message and "img_max_size_mp" in message
    decoded = image.preprocess(file_data(files["small"]))
    assert isinstance(decoded, Image.Image) and decoded.size == (64, 48) and decoded.mode == "RGB"


def test_the_limit_follows_the_setting_without_a_restart(tmp_path, settings):
    path = tmp_path / "wide.png"
    Image.new("RGB", (1100, 1000), (20, 90, 160)).save(path)  # 1.1 megapixels
    with gr.Blocks():
        image = checked_image(settings_limit(settings), label="Source", type="pil", image_mode=None)
    assert image.preprocess(file_data(path)).size == (1100, 1000)
    settings.update({"img_max_size_mp": 1})
    with pytest.raises(gr.Error, match="1100x1000 is 1.1 megapixels; the largest image accepted is 1 megapixels"):
        image.preprocess(file_data(path))


def test_pnginfo_style_upload_keeps_the_text_chunks(files, settings):
    with gr.Blocks():
        image = checked_image(settings_limit(settings), label="Source", type="pil", image_mode=None)
    decoded = image.preprocess(file_data(files["small"]))
    assert decoded.info["parameters"].startswith("a lighthouse")


def test_image_editor_checks_background_and_layers(files, settings):
    with gr.Blocks():
        editor = checked_editor(settings_limit(settings), label="Paint the area to change", type="pil",
                                image_mode="RGBA")
    payload = {"background": file_data(files["huge"]), "layers": [], "composite": file_data(files["small"])}
    with pytest.raises(gr.Error, match="Paint the area to change \\(huge.png\\)"):
        editor.preprocess(editor.data_model(**payload))
    payload = {"background": file_data(files["small"]), "layers": [file_data(files["huge"])],
               "composite": file_data(files["small"])}
    with pytest.raises(gr.Error, match="144.0 megapixels"):
        editor.preprocess(editor.data_model(**payload))
    payload["layers"] = [file_data(files["small"])]
    value = editor.preprocess(editor.data_model(**payload))
    assert value["background"].size == (64, 48) and len(value["layers"]) == 1


def test_pasted_data_urls_are_checked_too(files, settings):
    import base64

    url = "data:image/png;base64," + base64.b64encode(files["huge"].read_bytes()).decode()
    with gr.Blocks():
        image = checked_image(settings_limit(settings), label="Image", type="pil")
        path_only = uploaded_image(settings_limit(settings), label="Source", type="filepath")
    for component in (image, path_only):
        with pytest.raises(gr.Error, match="12000x12000"):
            component.preprocess(FileData(url=url, path="pasted.png"))


# ---- through a running server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt_dir):
    running = start_server(tmp_path_factory.mktemp("uploads"), tiny_ckpt_dir)
    yield running
    running.stop()


def _component_id(config: dict, elem_id: str) -> int:
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def call_event(url: str, elem_id: str, trigger: str, data_for: dict[int, object]) -> dict:
    """Run the event `trigger` of the component `elem_id` as the page does (queue/join, then the SSE stream)."""
    config = httpx.get(url + "/config", timeout=30).json()
    target = _component_id(config, elem_id)
    dependency = next(d for d in config["dependencies"] if [target, trigger] in d["targets"])
    session = uuid.uuid4().hex
    body = {"data": [data_for.get(i) for i in dependency["inputs"]], "fn_index": dependency["id"],
            "trigger_id": target, "session_hash": session, "event_data": None}
    joined = httpx.post(url + "/gradio_api/queue/join", json=body, timeout=30)
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", url + "/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


def upload(url: str, path: Path) -> dict:
    with open(path, "rb") as handle:
        response = httpx.post(url + "/gradio_api/upload", files={"files": (path.name, handle, "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_pnginfo_route_refuses_the_bomb_and_reads_a_normal_image(server, files):
    config = httpx.get(server.url + "/config", timeout=30).json()
    image_id = _component_id(config, "pnginfo_image")
    refused = call_event(server.url, "pnginfo_image", "change", {image_id: upload(server.url, files["huge"])})
    assert refused["success"] is False
    error = refused["output"]["error"]
    assert "huge.png" in error and "12000x12000" in error and "img_max_size_mp" in error
    accepted = call_event(server.url, "pnginfo_image", "change", {image_id: upload(server.url, files["small"])})
    assert accepted["success"] is True
    html, text = accepted["output"]["data"][:2]
    assert "a lighthouse" in html and text.startswith("a lighthouse")


def test_img2img_route_refuses_the_bomb_and_queues_nothing(server, files):
    info = httpx.get(server.url + "/gradio_api/info").json()["named_endpoints"]["/img2img"]
    labels = {p["label"]: p["parameter_name"] for p in info["parameters"]}
    kwargs = {p["parameter_name"]: "" if p["component"] == "Textbox" else None
              for p in info["parameters"] if not p["parameter_has_default"]}
    kwargs.update({labels["Stable Diffusion checkpoint"]: "tiny-sd1.safetensors", labels["Sampling steps"]: 2,
                   labels["Width"]: 64, labels["Height"]: 64, labels["Prompt"]: "a boat",
                   labels["Image for img2img"]: handle_file(str(files["huge"]))})
    client = Client(server.url, verbose=False)
    with pytest.raises(Exception) as caught:
        client.predict(api_name="/img2img", **kwargs)
    assert "12000x12000" in str(caught.value) and "img_max_size_mp" in str(caught.value)
    jobs = httpx.get(server.url + "/easel/v1/jobs", timeout=30).json()["jobs"]
    assert [j for j in jobs if j["type"] != "load-model"] == []  # nothing was queued (the start-up load aside)
    assert not list((server.root / "outputs").rglob("*.png"))

    kwargs[labels["Image for img2img"]] = handle_file(str(files["small"]))  # the same route takes a normal one
    outputs = client.predict(api_name="/img2img", **kwargs)
    gallery = next(o for o in outputs if isinstance(o, list) and o and isinstance(o[0], dict))
    result = Image.open(gallery[0]["image"])
    assert result.size == (64, 64)
