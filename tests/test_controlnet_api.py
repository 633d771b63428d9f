"""The ControlNet extension's routes on a real server, and units through real HTTP."""
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import start_server
from test_controlnet import picture


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ckpt_dir):
    from webui.devices import device_config
    from webui.features.controlnet.models import write_controlnet
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder

    root = tmp_path_factory.mktemp("cnapi")
    sd1 = next(i for i in scan_folder(tiny_ckpt_dir) if i.name == "tiny-sd1.safetensors")
    write_controlnet(root / "models" / "ControlNet" / "control_canny_tiny.safetensors",
                     load_checkpoint(sd1, device_config("cpu"), False).unet, "original", seed=1)
    running = start_server(root, tiny_ckpt_dir)
    yield running
    running.stop()


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_lists(server):
    models = httpx.get(server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert len(models) == 1 and models[0].startswith("control_canny_tiny [")
    modules = httpx.get(server.url + "/controlnet/module_list", timeout=30).json()
    assert "canny" in modules["module_list"] and "ip-adapter_clip_h" in modules["module_list"]
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]][1:] == ["Low threshold", "High threshold"]
    assert httpx.get(server.url + "/controlnet/version", timeout=30).json() == {"version": 2}


def test_detect_matches_opencv_and_bad_input_is_422(server):
    import cv2

    image = picture(80, 64)
    answer = httpx.post(server.url + "/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(image)], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 50, "controlnet_threshold_b": 150}, timeout=60)
    assert answer.status_code == 200, answer.text
    detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))))
    expected = cv2.Canny(np.asarray(image), 50, 150)
    assert np.array_equal(detected[..., 0] if detected.ndim == 3 else detected, expected)
    for body, field in [({"controlnet_module": "wobble", "controlnet_input_images": [b64(image)]}, "controlnet_module"),
                        ({"controlnet_module": "canny", "controlnet_input_images": ["/etc/passwd"]},
                         "controlnet_input_images"),
                        ({"controlnet_module": "softedge_hed", "controlnet_input_images": [b64(image)]},
                         "controlnet_module")]:
        answer = httpx.post(server.url + "/controlnet/detect", json=body, timeout=60)
        assert answer.status_code == 422 and field in answer.text, answer.text
    assert "ControlNetHED.pth" in answer.text
    assert httpx.get(server.url + "/easel/v1/health", timeout=10).status_code == 200
