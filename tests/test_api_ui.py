"""The API and the UI are two ways into the same engine: the same request gives the same pixels.

The UI side is driven through Gradio's own HTTP API (the Generate button's `/txt2img`
event, with the page's controls as parameters), as a browser would trigger it.
"""
from __future__ import annotations

import httpx
import pytest
from gradio_client import Client
from PIL import Image

from webui.core.images import read_infotext

from api_helpers import decode, max_diff, payload

UI_VALUES = {"Prompt": "a red fox in the snow", "Negative prompt": "blurry", "Sampling method": "Euler a",
             "Schedule type": "Automatic", "Sampling steps": 3, "Width": 64, "Height": 64, "CFG Scale": 7,
             "Seed": 42, "Batch count": 1, "Batch size": 1}


@pytest.fixture(scope="module")
def server(api_server):
    """conftest's session-wide --api server."""
    return api_server


def test_same_request_through_api_and_ui_gives_identical_pixels(server):
    info = httpx.get(server.url + "/gradio_api/info").json()["named_endpoints"]["/txt2img"]
    labels: dict[str, str] = {}
    for p in info["parameters"]:  # the tab's own control comes first (Tiled Diffusion's regions also have a Seed)
        labels.setdefault(p["label"], p["parameter_name"])
    missing = set(UI_VALUES) - set(labels)
    assert not missing, f"UI controls not found: {missing}"
    # controls without a default (empty text boxes, image slots) are sent empty, as an untouched page sends them
    kwargs = {p["parameter_name"]: "" if p["component"] == "Textbox" else None
              for p in info["parameters"] if not p["parameter_has_default"]}
    kwargs.update({labels[label]: value for label, value in UI_VALUES.items()})
    kwargs[labels["Stable Diffusion checkpoint"]] = "tiny-sd1.safetensors"
    client = Client(server.url, verbose=False)
    outputs = client.predict(api_name="/txt2img", **kwargs)
    gallery = next(o for o in outputs if isinstance(o, list) and o and isinstance(o[0], dict))
    ui_image = Image.open(gallery[0]["image"])
    ui_image.load()

    api = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=120,
                     json=payload(override_settings={"sd_model_checkpoint": "tiny-sd1"}))
    assert api.status_code == 200, api.text
    api_image = decode(api.json()["images"][0])
    assert ui_image.size == api_image.size == (64, 64)
    assert read_infotext(ui_image) == read_infotext(api_image)
    assert max_diff(ui_image, api_image) == 0
