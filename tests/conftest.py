"""Shared fixtures: tiny real-structure checkpoints on disk, an assembled app, a live server.

Everything runs on the CPU with no network: HF_HUB_OFFLINE is set before any library
import, and the checkpoints are written by the test session itself.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The suite computes as an AVX2 machine does, whatever the CPU: torch's random fills and MKL/oneDNN kernels
# take other paths on AVX-512 (weights of the tiny models and pixels differ in the last bit, and a tiny
# random model can amplify that), so the stored golden images reproduce on any x86-64 CPU with AVX2.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_CBWR", "AVX2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from webui.gradio_import import skip_stub_rewriting

skip_stub_rewriting()  # as the server does: tests that build the page in-process import Gradio 2.3 s faster

from webui.app import AppOptions, Easel, build  # noqa: E402
from webui.model_manager.architecture import Architecture
from webui.model_manager.tiny import write_diffusers_folder, write_single_file

ROOT = Path(__file__).resolve().parent.parent

TINY_FILES = {
    "tiny-sd1.safetensors": Architecture("sd1"),
    "tiny-sdxl.safetensors": Architecture("sdxl"),
}


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory) -> Path:
    """A folder with tiny SD 1.x and SDXL single-file checkpoints (+ JSON sidecars)."""
    folder = tmp_path_factory.mktemp("ckpts")
    for name, arch in TINY_FILES.items():
        write_single_file(folder / name, arch, seed=7)
    return folder


@pytest.fixture(scope="session")
def tiny_variants_dir(tmp_path_factory) -> Path:
    """Every architecture Easel detects, as single files and diffusers folders."""
    folder = tmp_path_factory.mktemp("variants")
    variants = {
        "sd1": Architecture("sd1"), "sd2v": Architecture("sd2", "v_prediction"), "sdxl": Architecture("sdxl"),
        "refiner": Architecture("sdxl-refiner"), "sd1-inpaint": Architecture("sd1", inpainting=True),
        "sdxl-inpaint": Architecture("sdxl", inpainting=True),
    }
    for name, arch in variants.items():
        write_single_file(folder / f"{name}.safetensors", arch, seed=3)
        write_diffusers_folder(folder / f"{name}-diffusers", arch, seed=3)
    return folder


def make_easel(tmp_path: Path, ckpt_dir: Path, **kwargs) -> Easel:
    options = AppOptions(models_dir=tmp_path / "models", ckpt_dirs=[ckpt_dir], outputs_dir=tmp_path / "outputs",
                         data_dir=tmp_path / "data", device="cpu", **kwargs)
    return build(options)


@pytest.fixture
def easel(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, process: subprocess.Popen, url: str, root: Path, log: Path):
        self.process, self.url, self.root, self.log = process, url, root, log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(root: Path, ckpt_dir: Path | None, extra: list[str] = (), timeout: float = 120,
                 auth: tuple[str, str] | None = None) -> RunningServer:
    """Start Easel in its own process on a free port on 127.0.0.1 and wait until it answers HTTP.

    `auth`: the credentials to check health with, for a server started with --auth.
    """
    port = free_port()
    log = root / "server.log"
    args = [sys.executable, "-m", "webui.cli", "--port", str(port), "--device", "cpu",
            "--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"),
            "--data-dir", str(root / "data"), *extra]
    if ckpt_dir is not None:
        args += ["--ckpt-dir", str(ckpt_dir)]
    handle = open(log, "w")
    process = subprocess.Popen(args, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(url + "/easel/v1/health", timeout=2, auth=auth).status_code == 200:
                return RunningServer(process, url, root, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not answer within {timeout}s:\n{log.read_text()}")


# ---- one API server for the whole session ------------------------------------------------------------
# Each start builds the whole Gradio page (seconds on an idle box, tens on a loaded 2-core one), so the
# modules that need only an --api server over the tiny checkpoints share this one. Its folders hold what
# any of them needs; a module with other options (auth, limits in config.json, --nowebui ...) starts its own.
API_MAX_BODY_MB = 2  # test_api checks the 413 on this server


@pytest.fixture(scope="session")
def api_server(tmp_path_factory, tiny_ckpt_dir) -> Iterator[RunningServer]:
    """`--api --api-max-body-mb 2` on the tiny checkpoints, with: models/ESRGAN's tiny upscalers, one LoRA,
    two embeddings and a styles.csv (test_api's list routes), a tiny ControlNet (canny), a tiny GFPGAN and
    the wildcard file colors/warm.txt; data/config.json turns image URLs on and holds a hub token."""
    from api_helpers import write_library_items
    from upscale_helpers import tiny_models
    from webui.devices import device_config
    from webui.features.controlnet.models import write_controlnet
    from webui.features.faces.tiny import write_tiny_restoreformer
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder

    root = tmp_path_factory.mktemp("api-server")
    (root / "data" / "wildcards" / "colors").mkdir(parents=True)
    # image URLs on (a protected setting: only config.json can turn it on), to test the address policy
    (root / "data" / "config.json").write_text(json.dumps({"api_enable_requests": True, "hub_token": "hf_secret123"}))
    (root / "data" / "wildcards" / "colors" / "warm.txt").write_text("orange\nyellow\n", encoding="utf-8")
    tiny_models(root / "models")
    write_library_items(root, tiny_ckpt_dir, tmp_path_factory.mktemp("lora-source"))
    sd1 = next(i for i in scan_folder(tiny_ckpt_dir) if i.name == "tiny-sd1.safetensors")
    write_controlnet(root / "models" / "ControlNet" / "control_canny_tiny.safetensors",
                     load_checkpoint(sd1, device_config("cpu"), False).unet, "original", seed=1)
    write_tiny_restoreformer(root / "models" / "GFPGAN" / "GFPGANv1.4-tiny.safetensors")
    running = start_server(root, tiny_ckpt_dir, ["--api", "--api-max-body-mb", str(API_MAX_BODY_MB)])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory, tiny_ckpt_dir) -> Iterator[RunningServer]:
    """The UI alone (no --api) on the tiny checkpoints, for the browser modules that need nothing else: with
    the LoRA paper_cut (tiny SD1, seed 4, alpha 2), a tiny canny ControlNet and models/ESRGAN's tiny upscalers.
    Each module's outputs land in the same outputs/: tests look for their own files (seed, newest)."""
    from upscale_helpers import tiny_models
    from webui.devices import device_config
    from webui.features.controlnet.models import write_controlnet
    from webui.features.lora_writer import write_lora
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder

    root = tmp_path_factory.mktemp("ui-server")
    sd1 = next(i for i in scan_folder(tiny_ckpt_dir) if i.name == "tiny-sd1.safetensors")
    write_lora(root / "models" / "Lora" / "paper_cut.safetensors", load_checkpoint(sd1, device_config("cpu"), False),
               seed=4, alpha=2.0)
    write_controlnet(root / "models" / "ControlNet" / "control_canny_tiny.safetensors",
                     load_checkpoint(sd1, device_config("cpu"), False).unet, "original", seed=1)
    tiny_models(root / "models")
    running = start_server(root, tiny_ckpt_dir)
    yield running
    running.stop()
