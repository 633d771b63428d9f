"""NF4 weight storage through bitsandbytes (4-bit Linear layers), on the CPU as bitsandbytes 0.50 runs it.

Real tiny checkpoints: the denoiser's Linear layers become `Linear4bit`, its bytes shrink, the
image stays close to full precision, the infotext says `Weights: nf4`, every memory mode gives
the same image, LoRAs are refused by name, and without bitsandbytes choosing nf4 is a clear
error (the package hidden from the import system, as when it is not installed)."""
import sys

import numpy as np
import pytest

from webui.core.infotext import parse_infotext
from webui.core.jobs import JobState
from webui.bench_memory import psnr  # the bench's PSNR: the figures it prints are these
from webui.core.request import GenerationRequest
from webui.model_manager.memory import BLOCK_OFFLOAD, MODEL_OFFLOAD, OFFLOAD, RESIDENT
from webui.model_manager.nf4 import nf4_bytes

from conftest import make_easel

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("nf4"), tiny_ckpt_dir)
    yield app
    app.close()


@pytest.fixture(autouse=True)
def full_precision_again(app):
    yield
    app.settings.update({"weight_storage": "Automatic", "memory_mode": "Automatic"})


def request(checkpoint="tiny-sd1", prompt="a lighthouse"):
    return GenerationRequest(prompt=prompt, steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                             checkpoint=checkpoint, save_images=False)


@pytest.mark.parametrize("checkpoint, most", [("tiny-sd1", 0.85), ("tiny-sdxl", 0.6)])
def test_nf4_shrinks_the_denoiser_keeps_the_picture_and_says_so(app, checkpoint, most):
    """Measured: tiny-sd1's UNet to 0.80x (a quarter of its bytes are Linear), tiny-sdxl's to 0.51x;
    PSNR against full precision 36 dB and 32 dB (random weights)."""
    full = app.txt2img(request(checkpoint))
    full_bytes = nf4_bytes(app.models.get(f"{checkpoint}.safetensors").unet)
    app.settings.update({"weight_storage": "nf4"})
    stored = app.txt2img(request(checkpoint))
    model = app.models.get(f"{checkpoint}.safetensors")
    layers = {type(m).__name__ for m in model.unet.modules()}
    assert "Linear4bit" in layers and "Linear" not in layers
    assert nf4_bytes(model.unet) < most * full_bytes
    assert psnr(full.images[0], stored.images[0]) >= 25
    assert parse_infotext(stored.infotexts[0]).params["Weights"] == "nf4"
    assert "Weights" not in parse_infotext(full.infotexts[0]).params


def test_nf4_gives_the_same_image_in_every_memory_mode(app):
    app.settings.update({"weight_storage": "nf4"})
    images = {}
    for mode in (RESIDENT, MODEL_OFFLOAD, BLOCK_OFFLOAD):
        app.settings.update({"memory_mode": mode})
        images[mode] = app.txt2img(request()).images[0]
    model = app.models.get("tiny-sd1.safetensors")
    # block offload moves the 4-bit denoiser whole (group offloading would leave the scales behind)
    hooks = model.unet._diffusers_hook
    assert hooks.get_hook("easel_model_offload") is not None and hooks.get_hook("group_offloading") is None
    assert model.offloader.moves[-1] == ("unet", OFFLOAD)  # parked after the job
    assert all(psnr(images[RESIDENT], image) >= 50 for image in images.values())


def test_a_lora_on_nf4_weights_is_refused_naming_the_setting(app):
    from webui.features.lora_writer import write_lora

    write_lora(app.paths.model_dir("lora") / "style.safetensors", app.models.get("tiny-sd1.safetensors"), seed=1)
    app.settings.update({"weight_storage": "nf4"})
    plain = app.txt2img(request())
    job = app.submit(request(prompt="a lighthouse <lora:style:1>"))
    job.wait(60)
    assert job.state == JobState.FAILED and type(job.error).__name__ == "ValidationError"
    assert "<lora:style>" in str(job.error) and "weight_storage" in str(job.error) and "NF4" in str(job.error)
    again = app.txt2img(request())
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))


def test_without_bitsandbytes_nf4_is_a_clear_error_not_a_500(app, monkeypatch):
    from webui.api.errors import job_error

    app.models.unload()  # an nf4 model loaded by an earlier test would simply be used
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now fails as if not installed
    app.settings.update({"weight_storage": "nf4"})
    job = app.submit(request())
    job.wait(60)
    assert job.state == JobState.FAILED and type(job.error).__name__ == "NF4Unavailable"
    assert "bitsandbytes" in str(job.error) and "weight_storage" in str(job.error)
    answer = job_error(job.error)
    assert answer.status == 503 and "pip install bitsandbytes" in str(answer.detail)
    app.settings.update({"weight_storage": "Automatic"})
    assert app.txt2img(request()).images


def test_weights_nf4_flag_and_its_refusal_without_bitsandbytes(tmp_path, tiny_ckpt_dir):
    """The flag's value reaches the app (in process: a second generate subprocess costs a minute on a busy
    machine); the refusal runs the real command line with bitsandbytes hidden."""
    from test_cli import run_cli
    from webui.cli import _options, generate_parser

    args = ("--model", "tiny-sd1", "--prompt", "a lighthouse", "--weights", "nf4")
    assert _options(generate_parser().parse_args(list(args))).weights == "nf4"
    flagged = make_easel(tmp_path / "flag", tiny_ckpt_dir, weights="nf4")
    try:
        assert parse_infotext(flagged.txt2img(request()).infotexts[0]).params["Weights"] == "nf4"
    finally:
        flagged.close()
    hidden = ("-c", "import runpy, sys; sys.modules['bitsandbytes'] = None; "
                    "runpy.run_module('webui.cli', run_name='__main__')")
    refused = run_cli(tmp_path, tiny_ckpt_dir, *args, entry=hidden)
    assert refused.returncode == 2 and "--weights" in refused.stderr and "pip install bitsandbytes" in refused.stderr
