"""The ControlNet extension's routes on a real server, and units through real HTTP."""
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from test_controlnet import picture


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server (a tiny canny ControlNet)."""
    return api_server


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


# ---- the same unit through the API and through the UI's Generate route ------------------------------

UNIT = {"Enable": True, "Preprocessor": "canny", "Model": "control_canny_tiny", "Control weight": 0.8,
        "Starting control step": 0.0, "Ending control step": 0.7, "Pixel perfect": False,
        "Preprocessor resolution": 64, "Threshold A": 60, "Threshold B": 160,
        "Control mode": "ControlNet is more important", "Resize mode": "Crop and Resize"}
GENERAL = {"Prompt": "a red fox in the snow", "Negative prompt": "blurry", "Sampling method": "Euler a",
           "Schedule type": "Automatic", "Sampling steps": 3, "Width": 64, "Height": 64, "CFG Scale": 7, "Seed": 42,
           "Batch count": 1, "Batch size": 1}


def ui_generate(server, image_path) -> Image.Image:
    """Press Generate on the txt2img tab through Gradio's HTTP API, with ControlNet unit 0 filled in."""
    from gradio_client import Client, handle_file

    params = httpx.get(server.url + "/gradio_api/info", timeout=30).json()["named_endpoints"]["/txt2img"]["parameters"]
    enables = [i for i, p in enumerate(params) if p["label"] == "Enable"]
    assert len(enables) >= 2, "ControlNet units not found on the txt2img tab"
    unit0 = {p["label"]: p["parameter_name"] for p in params[enables[0]:enables[1]]}
    general = {}
    for p in params[:enables[0]]:
        general.setdefault(p["label"], p["parameter_name"])
    missing = (set(UNIT) | {"Control image"}) - set(unit0) | set(GENERAL) - set(general)
    assert not missing, f"UI controls not found: {missing}"
    # controls without a default (empty text boxes, image slots) are sent empty, as an untouched page sends them
    kwargs = {p["parameter_name"]: "" if p["component"] == "Textbox" else None
              for p in params if not p["parameter_has_default"]}
    kwargs.update({general[label]: value for label, value in GENERAL.items()})
    kwargs.update({unit0[label]: value for label, value in UNIT.items()})
    kwargs[unit0["Control image"]] = handle_file(str(image_path))
    kwargs[general["Stable Diffusion checkpoint"]] = "tiny-sd1.safetensors"
    outputs = Client(server.url, verbose=False).predict(api_name="/txt2img", **kwargs)
    gallery = next(o for o in outputs if isinstance(o, list) and o and isinstance(o[0], dict))
    image = Image.open(gallery[0]["image"])
    image.load()
    return image


def test_alwayson_scripts_unit_gives_the_same_image_as_the_ui(server, tmp_path):
    from api_helpers import decode, max_diff
    from webui.core.images import read_infotext
    from webui.core.infotext import parse_infotext

    control = picture()
    control.save(tmp_path / "control.png")
    ui_image = ui_generate(server, tmp_path / "control.png")

    # the same settings as an AUTOMATIC1111 client sends them, with the ControlNet extension's field names
    unit = {"enabled": True, "module": "canny", "model": "control_canny_tiny", "weight": 0.8, "image": b64(control),
            "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 60, "threshold_b": 160,
            "guidance_start": 0.0, "guidance_end": 0.7, "control_mode": "ControlNet is more important",
            "pixel_perfect": False, "lowvram": False}
    body = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "sampler_name": "Euler a",
            "scheduler": "Automatic", "steps": 3, "width": 64, "height": 64, "cfg_scale": 7, "seed": 42,
            "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    answer = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=180)
    assert answer.status_code == 200, answer.text
    api_image = decode(answer.json()["images"][0])
    assert ui_image.size == api_image.size == (64, 64)
    assert max_diff(ui_image, api_image) == 0
    assert read_infotext(ui_image) == read_infotext(api_image)
    recorded = parse_infotext(read_infotext(api_image)).params["ControlNet 0"]
    assert "Module: canny" in recorded and "Weight: 0.8" in recorded and "Guidance End: 0.7" in recorded
    assert "Threshold A: 60" in recorded and "Control Mode: ControlNet is more important" in recorded

    # and the unit matters: without it the same request gives another image
    body["alwayson_scripts"] = {}
    plain = decode(httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=180).json()["images"][0])
    assert max_diff(plain, api_image) > 10
