"""Helpers the API tests share: small requests, decoding images, waiting for a busy worker."""
from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
from PIL import Image

TINY = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
        "seed": 42, "sampler_name": "Euler a", "cfg_scale": 7}
# a job that keeps the worker busy for minutes on the CPU, until interrupted
LONG = {"prompt": "a long job", "steps": 150, "width": 512, "height": 512, "seed": 1, "sampler_name": "Euler",
        "n_iter": 4}


def payload(**changes) -> dict:
    body = dict(TINY)
    body.update(changes)
    return body


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def start_long_job(client: httpx.Client, **changes) -> str:
    """Submit LONG through the jobs API and wait until it is sampling; returns its id."""
    body = dict(LONG)
    body.update(changes)
    response = client.post("/easel/v1/jobs", json={"type": "txt2img", "params": body})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def sampling():
        info = client.get(f"/easel/v1/jobs/{job_id}").json()
        return info["state"] == "running" and info["progress"]["step"] >= 1

    wait_until(sampling, timeout=120, what="the long job to start sampling")
    return job_id


def stop_job(client: httpx.Client, job_id: str) -> None:
    client.delete(f"/easel/v1/jobs/{job_id}")
    wait_until(lambda: client.get(f"/easel/v1/jobs/{job_id}").json()["state"] in ("interrupted", "cancelled", "done"),
               timeout=60, what="the job to stop")


def write_library_items(root, ckpt_dir, scratch) -> None:
    """Before a server starts at `root`: one kohya-layout LoRA for tiny SD1 (in a subfolder, with training
    metadata), an embedding that fits tiny SD1 (width 32), one that does not (768), and a styles.csv."""
    import torch
    from safetensors.torch import save_file

    from webui.features.lora_writer import random_lora_tensors

    from conftest import make_easel

    app = make_easel(scratch, ckpt_dir)
    try:
        tensors = random_lora_tensors(app.models.get("tiny-sd1.safetensors"), seed=1, alpha=2.0)
    finally:
        app.close()
    lora = root / "models" / "Lora" / "sub" / "tinystyle.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(lora), metadata={"ss_network_module": "networks.lora", "ss_output_name": "Tiny Style"})
    embeddings = root / "models" / "embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    save_file({"emb_params": torch.randn(3, 32, generator=generator)}, str(embeddings / "tinyemb.safetensors"))
    save_file({"emb_params": torch.randn(1, 768, generator=generator)}, str(embeddings / "wideemb.safetensors"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "styles.csv").write_text('name,prompt,negative_prompt\n'
                                              'painterly,oil painting of {prompt},photo\n'
                                              'plain,,"lowres, blurry"\n', encoding="utf-8")
