"""A tiny SD 3.5 folder through the A1111 API of a real Easel server (txt2img and img2img) and through
`launch.py generate` (the CLI): the same image for the same settings, the infotext pasted back restores it."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_server
from webui.model_manager.tiny_sd3 import write_sd3_folder

ROOT = Path(__file__).resolve().parent.parent
BODY = {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "steps": 3, "width": 64, "height": 64,
        "seed": 4, "sampler_name": "Euler", "cfg_scale": 4.5, "override_settings": {"sd_model_checkpoint": "tiny-sd35"}}


@pytest.fixture(scope="module")
def sd3_server(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("sd3-server")
    write_sd3_folder(root / "ckpt" / "tiny-sd35", "sd35-medium", seed=6)
    _controlnets(root / "models" / "ControlNet", root / "ckpt" / "tiny-sd35", tiny_ckpt_dir)
    server = start_server(root, root / "ckpt", ["--api", "--nowebui"])  # API only: no page to build
    yield server
    server.stop()


def _controlnets(folder: Path, sd3_folder: Path, tiny_ckpt_dir: Path) -> None:
    """An SD 3.5 depth ControlNet in Stability's single-file layout, and an SD 1.x one (the wrong family)."""
    from diffusers import SD3Transformer2DModel

    from webui.devices import device_config
    from webui.features.controlnet.models import write_controlnet
    from webui.features.controlnet.sd3 import write_sd3_controlnet
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder

    write_sd3_controlnet(folder / "sd3.5_large_controlnet_depth.safetensors",
                         SD3Transformer2DModel.from_pretrained(str(sd3_folder / "transformer")), control_type=2)
    sd1 = next(i for i in scan_folder(tiny_ckpt_dir) if i.name == "tiny-sd1.safetensors")
    write_controlnet(folder / "control_sd15_depth.safetensors", load_checkpoint(sd1, device_config("cpu"), False).unet)


def _image(data: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data["images"][0]))), dtype=np.float64)


def test_api_txt2img_img2img_and_the_cli_agree(sd3_server):
    models = httpx.get(sd3_server.url + "/sdapi/v1/sd-models", timeout=30).json()
    assert [m["model_name"] for m in models] == ["tiny-sd35"]
    first = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", json=BODY, timeout=300)
    assert first.status_code == 200, first.text
    text = json.loads(first.json()["info"])["infotexts"][0]
    for part in ("Negative prompt: fog", "Sampler: Euler", "Schedule type: Simple", "CFG scale: 4.5",
                 "Model: tiny-sd35"):
        assert part in text
    again = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", timeout=300, json={
        "infotext": text, "override_settings": {"sd_model_checkpoint": "tiny-sd35"}})
    assert again.status_code == 200, again.text
    assert np.abs(_image(again.json()) - _image(first.json())).max() == 0

    slg = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", timeout=300, json=dict(
        BODY, alwayson_scripts={"Skip Layer Guidance": {"args": [True, 2.8, "0,1", 0.01, 0.9]}}))
    assert slg.status_code == 200, slg.text
    assert "SLG scale: 2.8, SLG layers: \"0,1\", SLG start: 0.01, SLG end: 0.9" in json.loads(
        slg.json()["info"])["infotexts"][0]
    assert np.abs(_image(slg.json()) - _image(first.json())).max() > 0
    bad = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", timeout=60, json=dict(
        BODY, alwayson_scripts={"skip layer guidance": {"args": [True, 2.8, "7;8", 0.01, 0.2]}}))
    assert bad.status_code == 422 and "layers" in bad.text

    img2img = httpx.post(sd3_server.url + "/sdapi/v1/img2img", timeout=300, json=dict(
        BODY, init_images=[first.json()["images"][0]], denoising_strength=0.6))
    assert img2img.status_code == 200, img2img.text
    assert "Denoising strength: 0.6" in json.loads(img2img.json()["info"])["infotexts"][0]
    assert _image(img2img.json()).shape == (64, 64, 3)

    # the command line (`launch.py generate`; its module is run directly, as tests/test_cli.py shows they are
    # one entry point, so no virtual environment is set up): the same image
    cli = sd3_server.root / "cli"
    done = subprocess.run([sys.executable, "-m", "webui.cli", "generate", "--device", "cpu",
                           "--models-dir", str(cli / "models"), "--data-dir", str(cli / "data"),
                           "--outputs-dir", str(cli / "outputs"), "--ckpt-dir", str(sd3_server.root / "ckpt"),
                           "--model", "tiny-sd35", "--prompt", BODY["prompt"], "--negative-prompt", "fog",
                           "--steps", "3", "--sampler", "Euler", "--cfg-scale", "4.5", "--seed", "4",
                           "--width", "64", "--height", "64", "--out", str(cli / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split()[0])
    assert np.abs(np.asarray(Image.open(path), dtype=np.float64) - _image(first.json())).max() == 0


def test_controlnet_units_through_the_a1111_api(sd3_server):
    """The ControlNet extension's API args with an SD 3.5 ControlNet; one made for SD 1.x is a 422 on its unit."""
    picture = io.BytesIO()
    Image.fromarray((np.indices((64, 64)).sum(0) % 16 * 16).astype(np.uint8)).convert("RGB").save(picture, "PNG")
    unit = {"enabled": True, "module": "none", "model": "sd3.5_large_controlnet_depth", "weight": 0.8,
            "image": base64.b64encode(picture.getvalue()).decode(), "resize_mode": "Just Resize"}
    listed = httpx.get(sd3_server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert any(name.startswith("sd3.5_large_controlnet_depth") for name in listed)
    plain = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", json=BODY, timeout=300)
    done = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", timeout=300,
                      json=dict(BODY, alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert done.status_code == 200, done.text
    assert 'ControlNet 0: "Module: none, Model: sd3.5_large_controlnet_depth [' in json.loads(
        done.json()["info"])["infotexts"][0]
    assert np.abs(_image(done.json()) - _image(plain.json())).max() > 0
    wrong = httpx.post(sd3_server.url + "/sdapi/v1/txt2img", timeout=300, json=dict(
        BODY, alwayson_scripts={"controlnet": {"args": [unit, dict(unit, model="control_sd15_depth")]}}))
    assert wrong.status_code == 422, wrong.text
    detail = wrong.json()["detail"][0]
    assert detail["loc"] == ["body", "alwayson_scripts", "controlnet", "args[1]", "model"]
    assert "not an SD 3 ControlNet" in detail["msg"]
