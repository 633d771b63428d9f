"""Memory modes (resident, model offload, block offload), fast mode, and how they are chosen.

Real tiny checkpoints on the CPU. The CPU is both the onload and the offload device, so a move
costs nothing; the offloader's record of its moves (and torch forward pre-hooks of our own) show
which components would sit on the device when each one runs."""
import json
import logging

import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.bench_memory import psnr  # the bench's PSNR: the figures it prints are these
from webui.core.request import GenerationRequest
from webui.model_manager.fast import attention_processors
from webui.model_manager.memory import (BLOCK_OFFLOAD, GB, MODEL_OFFLOAD, OFFLOAD, ONLOAD, RESIDENT, MemoryFlags,
                                        choose_mode)

from conftest import make_easel

MODES = (RESIDENT, MODEL_OFFLOAD, BLOCK_OFFLOAD)


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("memory"), tiny_ckpt_dir)
    yield app
    app.close()


@pytest.fixture(autouse=True)
def resident_again(app):
    yield
    app.settings.update({"memory_mode": "Automatic", "fast_mode": False, "weight_storage": "Automatic",
                         "gpu_weights_mb": 0})


def generate(app, checkpoint="tiny-sd1", **kw):
    base = dict(prompt="a lighthouse", steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                checkpoint=checkpoint, save_images=False)
    return app.txt2img(GenerationRequest(**{**base, **kw}))


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sdxl"])
def test_every_mode_gives_the_same_image_and_says_which(app, checkpoint, caplog):
    images = {}
    for mode in (*MODES, RESIDENT):
        app.settings.update({"memory_mode": mode})
        with caplog.at_level(logging.INFO, logger="webui.model_manager.memory"):
            result = generate(app, checkpoint)
        params = parse_infotext(result.infotexts[0]).params
        assert params.get("Memory mode") == (None if mode == RESIDENT else mode)
        images.setdefault(mode, result.images[0])
        assert psnr(images[RESIDENT], result.images[0]) >= 50, mode
    assert f"memory mode for {checkpoint}.safetensors: Block offload (setting memory_mode)" in caplog.text


def test_fp8_weights_keep_their_image_in_every_mode(app):
    app.settings.update({"weight_storage": "fp8_e4m3fn"})
    images = []
    for mode in MODES:
        app.settings.update({"memory_mode": mode})
        images.append(generate(app).images[0])
        assert app.models.get("tiny-sd1.safetensors").unet.conv_in.weight.dtype == torch.float8_e4m3fn
    assert all(psnr(images[0], image) >= 50 for image in images[1:])


def _replay(moves):
    """Which components the record says are on the device."""
    on = set()
    for name, where in moves:
        (on.add if where == ONLOAD else on.discard)(name)
    return on


def test_model_offload_puts_each_component_on_the_device_only_while_it_runs(app):
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    model = app.models.get("tiny-sdxl.safetensors")
    offloader = model.offloader
    seen = []
    # a layer inside each component: its hooks have run by then (vae.decode runs no forward of the VAE itself)
    watched = {"text_encoder": model.text_encoders["text_encoder"].get_input_embeddings(),
               "text_encoder_2": model.text_encoders["text_encoder_2"].get_input_embeddings(),
               "unet": model.unet.conv_in, "vae": model.vae.decoder.conv_in}
    handles = [module.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, _replay(offloader.moves))))
               for name, module in watched.items()]
    start = len(offloader.moves)
    try:
        generate(app, "tiny-sdxl")
    finally:
        for handle in handles:
            handle.remove()
    encoders = {"text_encoder", "text_encoder_2"}  # SDXL's encoders take turns on each prompt: one group
    assert [name for name, _ in seen if name != "unet"] == ["text_encoder", "text_encoder_2"] * 2 + ["vae"]
    for name, on_device in seen:
        assert on_device == (encoders if name in encoders else {name}), (name, on_device)  # nothing else on it
    assert list(offloader.moves)[start:] == [
        ("text_encoder", ONLOAD), ("text_encoder_2", ONLOAD), ("text_encoder", OFFLOAD), ("text_encoder_2", OFFLOAD),
        ("unet", ONLOAD), ("unet", OFFLOAD), ("vae", ONLOAD), ("vae", OFFLOAD)]  # the last one when the job ended
    assert all(p.device.type == "cpu" for p in model.unet.parameters())


def test_block_offload_uses_diffusers_group_offloading_and_resident_removes_it(app):
    app.settings.update({"memory_mode": BLOCK_OFFLOAD})
    generate(app)
    model = app.models.get("tiny-sd1.safetensors")

    def group_hooks(module):
        return [name for name, m in module.named_modules()
                if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("group_offloading")]

    block = model.unet.down_blocks[0]._diffusers_hook.get_hook("group_offloading")
    assert block.group.onload_device == torch.device("cpu") and block.group.offload_device == torch.device("cpu")
    assert "down_blocks.0" in group_hooks(model.unet)  # block level: one group per block
    assert "decoder.conv_in" in group_hooks(model.vae)  # leaf level: vae.decode runs no forward of the VAE
    app.settings.update({"memory_mode": RESIDENT})
    generate(app)
    assert group_hooks(model.unet) == [] and group_hooks(model.vae) == []
    assert model.offloader.moves[-1] == ("vae", ONLOAD)


def test_a_controlnet_joins_the_denoiser_in_model_offload(app):
    from webui.features.controlnet.models import write_controlnet
    from test_controlnet import unit

    write_controlnet(app.paths.model_dir("controlnet") / "control_canny_tiny.safetensors",
                     app.models.get("tiny-sd1.safetensors").unet, "original", seed=1)
    scripts = {"controlnet": {"args": [unit()]}}
    resident = generate(app, alwayson_scripts=scripts)
    app.settings.update({"memory_mode": MODEL_OFFLOAD})
    model = app.models.get("tiny-sd1.safetensors")
    start = len(model.offloader.moves)
    offloaded = generate(app, alwayson_scripts=scripts)
    moves = list(model.offloader.moves)[start:]
    names = [name for name, _ in moves]
    control = next(name for name in names if name.startswith("controlnet:"))
    assert moves.index((control, ONLOAD)) == moves.index(("unet", ONLOAD)) + 1  # onloaded with the UNet
    assert moves.index((control, OFFLOAD)) < moves.index(("vae", ONLOAD))     # and off before the VAE runs
    assert psnr(resident.images[0], offloaded.images[0]) >= 50


def test_automatic_choice_from_a_budget_the_flags_and_the_setting():
    weights, largest = int(6 * GB), int(3.4 * GB)
    auto = MemoryFlags()
    assert choose_mode("Automatic", auto, "sd1", weights, largest, int(12 * GB)).mode == RESIDENT
    assert choose_mode("Automatic", auto, "sd1", weights, largest, int(5 * GB)).mode == MODEL_OFFLOAD
    assert choose_mode("Automatic", auto, "sd1", weights, largest, int(2 * GB)).mode == BLOCK_OFFLOAD
    assert choose_mode("Automatic", auto, "sd1", weights, largest, None).mode == RESIDENT  # CPU: nothing to save
    medvram_sdxl = MemoryFlags.from_flags(medvram_sdxl=True)
    assert choose_mode("Automatic", medvram_sdxl, "sdxl", weights, largest, int(12 * GB)).mode == MODEL_OFFLOAD
    assert choose_mode("Automatic", medvram_sdxl, "sd1", weights, largest, int(12 * GB)).mode == RESIDENT
    assert MemoryFlags.from_flags(lowvram=True, medvram=True).mode == BLOCK_OFFLOAD
    assert choose_mode("Automatic", MemoryFlags.from_flags(medvram=True), "sd1", 1, 1, None).mode == MODEL_OFFLOAD
    assert choose_mode("Resident", MemoryFlags.from_flags(lowvram=True), "sd1", weights, largest, 1).mode == RESIDENT


def test_a_small_gpu_weights_budget_makes_the_automatic_choice_offload(app, caplog):
    """Components of tiny-sd1: text encoder 6.1 MB, UNet 4.2 MB, VAE 1.0 MB; weights may take 75% of the budget."""
    chosen = {}
    with caplog.at_level(logging.INFO, logger="webui.model_manager.memory"):
        for budget in (20, 10, 5):
            app.settings.update({"gpu_weights_mb": budget})
            chosen[budget] = parse_infotext(generate(app).infotexts[0]).params.get("Memory mode")
    assert chosen == {20: None, 10: MODEL_OFFLOAD, 5: BLOCK_OFFLOAD}
    assert "Model offload (automatic: 11 MB of weights, 10 MB budget)" in caplog.text


def test_a_gpu_weights_budget_keeps_the_blocks_that_fit_resident_and_streams_the_rest(app, caplog):
    """Forge's GPU weights in block offload: tiny-sd1's UNet keeps its parts outside the block lists (1.1 MB)
    and its first blocks (down 0.4 + 0.6 MB) within 5 MB x 75%, less room for two of its largest layers (0.3 MB
    each), where up_blocks.0 (1.6 MB) no longer fits; only the up blocks stream (diffusers' group offloading on
    them alone, layer by layer). The image is the resident one; 2 MB streams every block, as before."""
    resident = generate(app)
    model = app.models.get("tiny-sd1.safetensors")

    def streamed(module):
        return sorted({name.split(".")[0] + "." + name.split(".")[1] for name, m in module.named_modules()
                       if name.count(".") >= 1 and getattr(m, "_diffusers_hook", None) is not None
                       and m._diffusers_hook.get_hook("group_offloading")})

    with caplog.at_level(logging.INFO, logger="webui.model_manager.memory"):
        app.settings.update({"gpu_weights_mb": 5})
        start = len(model.offloader.moves)
        partly = generate(app)
    assert parse_infotext(partly.infotexts[0]).params.get("Memory mode") == BLOCK_OFFLOAD
    assert model.offloader.resident_blocks == ["down_blocks.0", "down_blocks.1"]
    assert model.offloader.streamed_blocks == ["up_blocks.0", "up_blocks.1"]
    assert streamed(model.unet) == ["up_blocks.0", "up_blocks.1"]
    moves = list(model.offloader.moves)[start:]
    assert ("unet.down_blocks.1", ONLOAD) in moves and ("unet.mid_block", ONLOAD) in moves
    assert ("unet.up_blocks.0", ONLOAD) not in moves
    assert "block offload of unet: 2 of 4 blocks resident within 4 MB of GPU weights" in caplog.text
    assert psnr(resident.images[0], partly.images[0]) >= 50
    app.settings.update({"gpu_weights_mb": 2})  # 1.5 MB: the fixed parts, the streaming room and no block
    all_streamed = generate(app)
    assert model.offloader.resident_blocks == [] and "down_blocks.0" in streamed(model.unet)
    assert psnr(resident.images[0], all_streamed.images[0]) >= 50


def test_fast_mode_keeps_the_image_fuses_qkv_and_uses_channels_last(app, caplog):
    plain = generate(app)
    app.settings.update({"fast_mode": True})
    with caplog.at_level(logging.INFO, logger="webui.model_manager.fast"):
        fast = generate(app)
    model = app.models.get("tiny-sd1.safetensors")
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(attention_processors(model.unet)) == {"FusedAttnProcessor2_0"}  # SDPA over the fused projections
    assert "fused QKV (12 projections)" in caplog.text and "no torch.compile (cpu" in caplog.text
    assert psnr(plain.images[0], fast.images[0]) >= 45
    app.settings.update({"fast_mode": False})
    again = generate(app)
    assert model.unet.conv_in.weight.is_contiguous()
    assert set(attention_processors(model.unet)) == {"AttnProcessor2_0"}
    assert not any(name.endswith(("to_qkv", "to_kv")) for name, _ in model.unet.named_modules())  # memory back
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))


# ---- the command line and the server ------------------------------------------------------------


def test_cli_flags_choose_weights_and_memory_mode_and_the_infotext_says_so(tmp_path, tiny_ckpt_dir):
    from PIL import Image

    from test_cli import run_cli
    from webui.core.images import read_infotext

    done = run_cli(tmp_path, tiny_ckpt_dir, "--model", "tiny-sd1", "--prompt", "a lighthouse", "--steps", "2",
                   "--width", "64", "--height", "64", "--seed", "3", "--weights", "fp8", "--medvram", "--fast",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    params = parse_infotext(read_infotext(Image.open(done.stdout.split()[0]))).params
    assert params["Weights"] == "fp8_e4m3fn" and params["Memory mode"] == "Model offload"
    clash = run_cli(tmp_path, tiny_ckpt_dir, "--weights", "fp16", "--precision", "bf16", "--prompt", "x")
    assert clash.returncode == 2 and "--weights fp16 and --precision bf16 disagree" in clash.stderr


def test_server_flags_weights_bf16_and_medvram_sdxl(tmp_path, tiny_ckpt_dir):
    import httpx

    from conftest import start_server

    running = start_server(tmp_path, tiny_ckpt_dir, ["--api", "--nowebui", "--weights", "bf16", "--medvram-sdxl"])
    try:
        infos = {}
        for checkpoint in ("tiny-sdxl", "tiny-sd1"):
            body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler",
                    "override_settings": {"sd_model_checkpoint": checkpoint}}
            answer = httpx.post(running.url + "/sdapi/v1/txt2img", json=body, timeout=120)
            assert answer.status_code == 200, answer.text
            infos[checkpoint] = parse_infotext(json.loads(answer.json()["info"])["infotexts"][0]).params
        assert infos["tiny-sdxl"]["Weights"] == "bf16" and infos["tiny-sdxl"]["Memory mode"] == "Model offload"
        assert infos["tiny-sd1"]["Weights"] == "bf16" and "Memory mode" not in infos["tiny-sd1"]  # SDXL only
        flags = httpx.get(running.url + "/sdapi/v1/cmd-flags", timeout=10).json()
        assert flags["weights"] == "bf16" and flags["medvram_sdxl"] is True
    finally:
        running.stop()


def test_unloading_a_block_offloaded_checkpoint_removes_its_hooks_first(app, caplog):
    """Eviction takes the group-offload hooks off before freeing the weights: diffusers refuses (and logs) .to()
    on a group-offloaded module, and its hooks would keep their own copies of the weights alive."""
    app.settings.update({"memory_mode": BLOCK_OFFLOAD})
    generate(app)
    model = app.models.get("tiny-sd1.safetensors")
    assert model.unet.down_blocks[0]._diffusers_hook.get_hook("group_offloading") is not None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        app.models.unload("tiny-sd1.safetensors")
    assert "group offloaded" not in caplog.text, caplog.text
    assert all(m._diffusers_hook.get_hook("group_offloading") is None for m in model.unet.modules()
               if getattr(m, "_diffusers_hook", None) is not None)
    assert {p.device.type for p in model.unet.parameters()} == {"meta"}
