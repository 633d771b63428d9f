"""Memory modes cover every kind of model that runs during a job, not only the checkpoint's components.

Real tiny models on the CPU (checkpoints, an IP-Adapter with its CLIP vision encoder, ESRGAN
upscalers, a second checkpoint as the refiner). The CPU is both the onload and the offload
device, so the offloaders' records of their moves, replayed at the moment each model runs
(torch forward pre-hooks of our own), show what would sit on the device then."""
import numpy as np
import pytest

from webui.bench_memory import psnr  # the bench's PSNR: the figures it prints are these
from webui.core.request import GenerationRequest
from webui.features.ip_adapter import write_test_adapter, write_test_encoder
from webui.model_manager.memory import (BLOCK_OFFLOAD, DENOISER, MODEL_OFFLOAD, OFFLOAD, ONLOAD, kind_group,
                                        runnable_module)

from conftest import make_easel
from test_ip_adapter import ip_unit
from upscale_helpers import tiny_models


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("kinds"), tiny_ckpt_dir)
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_test_adapter(app.paths.model_dir("ipadapter") / "ip-adapter_tiny_sd15.safetensors", sd1.unet,
                       embedding_width=24, seed=1)
    write_test_encoder(app.paths.model_dir("clip_vision") / "tiny_vit.safetensors", projection_dim=24)
    tiny_models(app.paths.models_dir)  # 4x-Tiny (ESRGAN) for hires fix
    yield app
    app.close()


@pytest.fixture(autouse=True)
def resident_again(app):
    yield
    app.settings.update({"memory_mode": "Automatic", "sd_checkpoints_limit": 1})


def generate(app, checkpoint="tiny-sd1", **kw):
    base = dict(prompt="a lighthouse", steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                checkpoint=checkpoint, save_images=False)
    return app.txt2img(GenerationRequest(**{**base, **kw}))


def replay(moves) -> set[str]:
    on = set()
    for name, where in moves:
        (on.add if where == ONLOAD else on.discard)(name)
    return on


def joined(app, prefix: str, file: str = ""):
    """The (name, module) of the one joined model whose name starts with `prefix` (and names `file`)."""
    found = [(name, module) for name, module in app.models.memory.joined.items()
             if name.startswith(prefix) and file in name]
    assert len(found) == 1, list(app.models.memory.joined)
    return found[0]


def first_leaf(module):
    return next(m for m in module.modules() if not list(m.children()) and list(m.parameters(recurse=False)))


def watch(layers: dict, offloaders: dict):
    """Forward pre-hooks on `layers` (name -> layer) recording, as each runs, what every offloader
    (label -> callable giving it) says is on the device: {label: components}."""
    seen = []

    def record(name):
        def hook(module, args):
            seen.append((name, {label: replay(get().moves) for label, get in offloaders.items() if get()}))
        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    return seen, handles


IP = {"controlnet": {"args": [ip_unit()]}}
HIRES = dict(enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.5, hr_upscaler="4x-Tiny")


def test_an_ip_adapter_image_encoder_is_on_the_device_only_while_it_runs(app):
    resident = generate(app, alwayson_scripts=IP)
    name, encoder = joined(app, "clip_vision:")
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    model = app.models.get("tiny-sd1.safetensors")
    seen, handles = watch({name: first_leaf(encoder), "unet": model.unet.conv_in}, {"base": lambda: model.offloader})
    start = len(model.offloader.moves)
    try:
        offloaded = generate(app, alwayson_scripts=IP)
    finally:
        for handle in handles:
            handle.remove()
    assert {who for who, _ in seen} == {name, "unet"}
    for who, on_device in seen:
        assert on_device["base"] == {who}, (who, on_device)  # the encoder alone, then the UNet alone
    moves = list(model.offloader.moves)[start:]
    assert moves.index((name, OFFLOAD)) < moves.index(("unet", ONLOAD))
    assert replay(model.offloader.moves) == set()  # nothing stays on the device after the job
    assert psnr(resident.images[0], offloaded.images[0]) >= 50
    # a checkpoint switch: the encoder follows the new active checkpoint's placement, the old one lets it go
    generate(app, "tiny-sdxl")
    assert name in app.models.get("tiny-sdxl.safetensors").offloader.extras


@pytest.mark.parametrize("mode", [MODEL_OFFLOAD, BLOCK_OFFLOAD])
def test_a_hires_model_upscaler_follows_the_memory_mode(app, mode):
    resident = generate(app, **HIRES)
    name, upscaler = joined(app, "upscaler:", "4x-Tiny")
    app.settings.update({"memory_mode": mode})
    model = app.models.get("tiny-sd1.safetensors")
    seen, handles = watch({name: first_leaf(upscaler)}, {"base": lambda: model.offloader})
    try:
        offloaded = generate(app, **HIRES)
    finally:
        for handle in handles:
            handle.remove()
    assert seen, "the upscaler did not run"
    if mode == MODEL_OFFLOAD:
        assert all(on_device["base"] == {name} for _, on_device in seen), seen  # the UNet and the VAE are off
    else:  # leaf-level group offloading, as for the text encoders and the VAE
        assert upscaler._diffusers_hook is not None
        assert any(m._diffusers_hook.get_hook("group_offloading") for m in upscaler.modules()
                   if getattr(m, "_diffusers_hook", None) is not None)
    assert psnr(resident.images[0], offloaded.images[0]) >= 50


def test_an_extras_upscale_onloads_the_upscaler_and_parks_it_when_the_job_ends(app, tmp_path):
    from webui.core.jobs import JobState
    from webui.features.extras import ExtrasInput, ExtrasRequest

    from upscale_helpers import smooth_image

    smooth_image(64, 64).save(tmp_path / "in.png")
    upscale = ExtrasRequest(upscaling_resize=2, upscaler_1="2x-TinyCompact")

    def extras():
        job = app.extras.submit(app.queue, upscale, [ExtrasInput(tmp_path / "in.png")])
        job.wait(60)
        assert job.state == JobState.DONE, job.error
        return job.result.images[0]

    generate(app)  # tiny-sd1 active, its placement takes the upscaler when it loads
    resident = extras()
    name, _ = joined(app, "upscaler:", "2x-TinyCompact")
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    model = app.models.get("tiny-sd1.safetensors")
    start = len(model.offloader.moves)
    offloaded = extras()
    assert list(model.offloader.moves)[start:] == [(name, ONLOAD), (name, OFFLOAD)]  # off when the job ended
    assert np.array_equal(np.asarray(resident), np.asarray(offloaded))


def test_the_refiner_checkpoint_is_placed_like_the_active_one(app):
    """It used to load and stay on the device whatever the mode; now one group of either checkpoint at a time."""
    refined = dict(refiner_checkpoint="tiny-sdxl", refiner_switch_at=0.5)
    app.settings.update({"sd_checkpoints_limit": 2})  # the refiner stays loaded between the two jobs
    resident = generate(app, **refined)
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    base = app.models.get("tiny-sd1.safetensors")
    refiner = app.models.store.peek("checkpoint", "tiny-sdxl.safetensors")
    offloaders = {"base": lambda: base.offloader, "refiner": lambda: refiner.offloader}
    seen, handles = watch({"base unet": base.unet.conv_in, "refiner unet": refiner.unet.conv_in}, offloaders)
    try:
        offloaded = generate(app, **refined)
    finally:
        for handle in handles:
            handle.remove()
    assert {who for who, _ in seen} == {"base unet", "refiner unet"}
    for who, on_device in seen:
        mine, other = ("base", "refiner") if who == "base unet" else ("refiner", "base")
        assert on_device[mine] == {"unet"} and not on_device.get(other), (who, on_device)
    assert refiner.memory_mode == MODEL_OFFLOAD
    assert all(p.device.type == "cpu" for p in refiner.unet.parameters())
    assert app.models.memory.slot.holder is None  # parked after the job
    assert psnr(resident.images[0], offloaded.images[0]) >= 50


def test_which_kinds_follow_the_mode_and_what_runs_of_them():
    import torch

    class Descriptor:  # a spandrel descriptor's shape: the module under .model
        model = torch.nn.Conv2d(3, 3, 1)

    class Upscaler:
        descriptor = Descriptor()

    encoder = torch.nn.Linear(2, 2)
    assert kind_group("controlnet", "controlnet:x") == kind_group("identitynet", "identitynet:x") == DENOISER
    assert kind_group("clip_vision", "clip_vision:x") == "clip_vision:x"
    assert kind_group("photomaker", "photomaker:x") == "photomaker:x"
    assert kind_group("lora", "lora:x") is None and kind_group("tiny_vae", "tiny_vae:x") is None
    assert runnable_module((encoder, {"lora": 1})) is encoder  # PhotoMaker: (ID encoder, its LoRA)
    assert runnable_module(Upscaler()) is Descriptor.model
    assert runnable_module({"weights": 1}) is None
