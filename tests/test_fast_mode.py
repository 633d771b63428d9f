"""Fast mode on every family (fused QKV, channels_last, torch.compile) and the attention setting.

Real tiny checkpoints on the CPU: images are compared with fast mode off (PSNR), LoRAs are
applied through the same patcher as in use, and the attention kernels run for real."""
import logging

import pytest
import torch

from webui.core.jobs import Job
from webui.bench_memory import psnr  # the bench's PSNR: the figures it prints are these
from webui.core.request import GenerationRequest
from webui.features.lora_writer import write_lora
from webui.model_manager import attention_backends as ab
from webui.model_manager.fast import BACKEND_ENV, COMPILING, attention_processors, compiled_shapes
from webui.model_manager.tiny_flux import write_flux_folder
from webui.model_manager.tiny_sd3 import write_sd3_folder
from webui.model_manager.tiny_zimage import write_zimage_folder

from conftest import make_easel


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("fast"), tiny_ckpt_dir)
    write_lora(app.paths.model_dir("lora") / "qkv.safetensors", app.models.get("tiny-sd1.safetensors"), seed=4,
               alpha=4.0, text_encoder=False, match=("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_k"))
    yield app
    app.close()


@pytest.fixture(autouse=True)
def plain_again(app):
    yield
    app.settings.update({"fast_mode": False, "fast_compile": "Automatic", "cross_attention_optimization": "Automatic"})


def generate(app, checkpoint="tiny-sd1.safetensors", **kw):
    base = dict(prompt="a lighthouse", steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                checkpoint=checkpoint, save_images=False)
    return app.txt2img(GenerationRequest(**{**base, **kw}))


# ---- fused QKV and LoRA ---------------------------------------------------------------------------


def test_a_lora_gives_the_same_image_with_fast_mode_on_and_off(app):
    plain = generate(app, prompt="a lighthouse <lora:qkv:1>")
    bare = generate(app)
    assert psnr(plain.images[0], bare.images[0]) < 30  # the LoRA changes the picture
    app.settings.update({"fast_mode": True})
    fast = generate(app, prompt="a lighthouse <lora:qkv:1>")
    model = app.models.get("tiny-sd1.safetensors")
    attn1 = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert attn1.fused_projections and set(attention_processors(model.unet)) == {"FusedAttnProcessor2_0"}
    assert psnr(plain.images[0], fast.images[0]) >= 40
    torch.testing.assert_close(attn1.to_qkv.weight, torch.cat([attn1.to_q.weight, attn1.to_k.weight,
                                                               attn1.to_v.weight]), rtol=0, atol=0)
    half = generate(app, prompt="a lighthouse <lora:qkv:0.5>")  # another strength: the fused copy follows
    assert psnr(half.images[0], fast.images[0]) < 40
    fast_bare = generate(app)  # no LoRA: the fused copy is the base weights again
    assert psnr(bare.images[0], fast_bare.images[0]) >= 40
    app.settings.update({"fast_mode": False})
    assert psnr(generate(app, prompt="a lighthouse <lora:qkv:0.5>").images[0], half.images[0]) >= 40


# ---- other families -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    write_flux_folder(folder / "tiny-flux-dev", "dev", seed=1)
    write_sd3_folder(folder / "tiny-sd35-medium", "sd35-medium", seed=1)
    write_sd3_folder(folder / "tiny-sd3", "sd3", seed=2, t5=False)
    write_zimage_folder(folder / "tiny-zimage-turbo", seed=1)
    app = make_easel(tmp_path_factory.mktemp("families-app"), folder)
    yield app
    app.close()


@pytest.mark.parametrize("checkpoint, fused, convolutions", [
    ("tiny-flux-dev", True, False), ("tiny-sd3", True, True), ("tiny-sd35-medium", False, True),
    ("tiny-zimage-turbo", False, False)])
def test_fast_mode_applies_to_the_transformer_families(family_app, checkpoint, fused, convolutions, caplog):
    app = family_app
    request = dict(checkpoint=checkpoint, steps=2, cfg_scale=1.0 if "flux" in checkpoint else 4.0)
    app.settings.update({"fast_mode": False})
    plain = generate(app, **request)
    app.settings.update({"fast_mode": True})
    try:
        with caplog.at_level(logging.INFO, logger="webui.model_manager.fast"):
            fast = generate(app, **request)
        denoiser = app.models.get(checkpoint).unet
        assert any(getattr(m, "fused_projections", False) for m in denoiser.modules()) == fused
        assert (", fused QKV (" in caplog.text) == fused and ("channels_last" in caplog.text) == convolutions
        if "zimage" in checkpoint:
            assert "no fused QKV (ZImageTransformer2DModel has no fuse_qkv_projections)" in caplog.text
        if "sd35" in checkpoint:
            assert "no fused QKV (diffusers' fused processor skips its q/k RMS norms)" in caplog.text
        assert psnr(plain.images[0], fast.images[0]) >= 40
    finally:
        app.settings.update({"fast_mode": False})
    generate(app, **request)
    assert not any(getattr(m, "fused_projections", False) for m in app.models.get(checkpoint).unet.modules())


def test_a_flux_lora_on_the_fused_joint_projections_keeps_its_image(family_app):
    app = family_app
    model = app.models.get("tiny-flux-dev")
    write_lora(app.paths.model_dir("lora") / "flux_qkv.safetensors", model, seed=2, scale=0.6, layout="peft",
               text_encoder=False, match=("attn.to_q", "attn.to_v", "attn.add_k_proj"))
    request = dict(checkpoint="tiny-flux-dev", steps=2, cfg_scale=1.0, prompt="a lighthouse <lora:flux_qkv:1>")
    plain = generate(app, **request)
    assert psnr(plain.images[0], generate(app, checkpoint="tiny-flux-dev", steps=2, cfg_scale=1.0).images[0]) < 35
    app.settings.update({"fast_mode": True})
    try:
        fast = generate(app, **request)
    finally:
        app.settings.update({"fast_mode": False})
    assert psnr(plain.images[0], fast.images[0]) >= 40


# ---- attention --------------------------------------------------------------------------------------


def test_attention_choices_that_run_on_cpu_give_the_same_image(app):
    images = {}
    for choice in (ab.AUTOMATIC, ab.SDP, ab.SDP_NO_MEM, ab.NONE):
        app.settings.update({"cross_attention_optimization": choice})
        images[choice] = generate(app).images[0]
    assert all(psnr(images[ab.AUTOMATIC], images[c]) >= 40 for c in images), \
        {c: psnr(images[ab.AUTOMATIC], images[c]) for c in images}


@pytest.mark.parametrize("choice", [ab.XFORMERS, ab.SAGE])
def test_unavailable_attention_falls_back_to_sdp_with_a_warning(app, choice, caplog):
    reference = generate(app).images[0]
    app.settings.update({"cross_attention_optimization": choice})
    with caplog.at_level(logging.WARNING, logger="webui.model_manager.fast"):
        result = generate(app)
        generate(app)
    assert result.images and psnr(reference, result.images[0]) >= 40
    warnings = [r.getMessage() for r in caplog.records if "cross_attention_optimization" in r.getMessage()]
    assert len(warnings) == 1  # once per model and choice
    assert f"{choice} is not available for tiny-sd1.safetensors" in warnings[0]
    assert "using sdp - scaled dot product instead" in warnings[0]


def test_sdp_choices_restrict_the_kernels_only_while_a_pass_runs():
    kernels = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
               torch.backends.cuda.math_sdp_enabled)
    module, cpu = torch.nn.Linear(1, 1), torch.device("cpu")
    seen = {}
    for choice in (ab.SDP, ab.SDP_NO_MEM, ab.NONE):
        with ab.attention_for_run(ab.plan_attention(choice, module, cpu), module):
            seen[choice] = tuple(enabled() for enabled in kernels)
    assert seen == {ab.SDP: (True, True, True), ab.SDP_NO_MEM: (True, False, True), ab.NONE: (False, False, True)}
    assert all(enabled() for enabled in kernels)


def test_a1111_flags_pick_what_automatic_runs():
    from webui.cli import _options, server_parser

    assert _options(server_parser().parse_args(["--xformers"])).attention == ab.XFORMERS
    assert _options(server_parser().parse_args(["--opt-sdp-no-mem-attention"])).attention == ab.SDP_NO_MEM
    assert _options(server_parser().parse_args(["--opt-split-attention"])).attention == ab.SDP
    assert _options(server_parser().parse_args([])).attention == ab.AUTOMATIC
    for flag in ("--opt-split-attention-invokeai", "--opt-split-attention-v1", "--opt-sub-quad-attention"):
        assert _options(server_parser().parse_args([flag])).attention == ab.SDP, flag
    plan = ab.plan_attention(ab.AUTOMATIC, torch.nn.Linear(1, 1), torch.device("cpu"), flag=ab.SDP_NO_MEM)
    assert plan == ab.AttentionPlan(ab.SDP_NO_MEM, ab.SDP_NO_MEM)
    assert ab.plan_attention(ab.NONE, torch.nn.Linear(1, 1), torch.device("cpu"), flag=ab.SDP_NO_MEM).used == ab.NONE


def test_a1111_older_attention_names_are_taken_as_what_runs_them(tmp_path):
    """A client (or a config.json) from AUTOMATIC1111 may name Doggettx, InvokeAI, sub-quadratic or V1:
    the memory-saving attentions SDP's memory-efficient kernel stands for, so they are stored as sdp; the
    short sdp names too. A name nobody uses is still refused, naming the setting."""
    from webui.settings import Settings, SettingsStore

    for name in ("Doggettx", "InvokeAI", "sub-quadratic", "V1 - original v1", "sdp"):
        assert Settings.coerce("cross_attention_optimization", name) == ab.SDP, name
    assert Settings.coerce("cross_attention_optimization", "sdp-no-mem") == ab.SDP_NO_MEM
    (tmp_path / "config.json").write_text('{"cross_attention_optimization": "Doggettx"}')
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    assert store.get("cross_attention_optimization") == ab.SDP and not store.load_warnings
    store.update({"cross_attention_optimization": "InvokeAI"})
    assert store.get("cross_attention_optimization") == ab.SDP
    with pytest.raises(ValueError, match="cross_attention_optimization: must be one of"):
        Settings.coerce("cross_attention_optimization", "Split attention 2000")


# ---- torch.compile --------------------------------------------------------------------------------


def _run_recording(app, request: GenerationRequest) -> list[str]:
    job, texts = Job(run=lambda job: None), []
    report = job.report

    def recording(step=None, total=None, text=None, preview=None):
        if text is not None:
            texts.append(text)
        report(step=step, total=total, text=text, preview=preview)

    job.report = recording
    with app.models.store.in_use():
        app.engine.generate(request, job)
    return texts


def test_compile_always_on_cpu_compiles_once_per_size_and_says_so(app, monkeypatch):
    """Dynamo traces the real denoiser; the eager backend skips inductor's code generation, which takes
    minutes for the tiny UNet on this CPU (the benchmark measures inductor)."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported here")
    monkeypatch.setenv(BACKEND_ENV, "eager")
    plain = generate(app, steps=2)
    app.settings.update({"fast_mode": True, "fast_compile": "Always"})
    request = GenerationRequest(prompt="a lighthouse", steps=2, width=64, height=64, seed=9, sampler_name="Euler",
                                checkpoint="tiny-sd1.safetensors", save_images=False)
    first = _run_recording(app, request)
    second = _run_recording(app, request)
    model = app.models.get("tiny-sd1.safetensors")
    assert COMPILING in first and COMPILING not in second
    assert compiled_shapes(model) == {("default", ab.SDP, 64, 64, 1)}
    assert model.unet._compiled_call_impl is not None
    assert psnr(plain.images[0], generate(app, steps=2).images[0]) >= 40
    app.settings.update({"fast_mode": False})
    generate(app, steps=2)
    assert model.unet._compiled_call_impl is None and not compiled_shapes(model)


def test_fp8_storage_stays_unfused_and_says_why(app, caplog):
    app.settings.update({"weight_storage": "fp8_e4m3fn", "fast_mode": True})
    try:
        with caplog.at_level(logging.INFO, logger="webui.model_manager.fast"):
            result = generate(app, prompt="a lighthouse <lora:qkv:1>")
        denoiser = app.models.get("tiny-sd1.safetensors").unet
        assert result.images and not any(getattr(m, "fused_projections", False) for m in denoiser.modules())
        assert "no fused QKV (weights are stored quantized: fp8, NF4 or GGUF" in caplog.text
    finally:
        app.settings.update({"weight_storage": "Automatic", "fast_mode": False})


def test_cuda_graphs_are_chosen_where_nothing_moves_or_casts_weights(app):
    """compile_mode's choice as a CUDA device would see it (only the device's type is read, nothing runs on
    it): Resident models have an offloader too, and --weights fp16 on an fp16 GPU casts nothing, so both
    get CUDA graphs; an offload mode, fp8 storage, or bf16 weights computed in fp16 do not."""
    from dataclasses import replace

    from webui.model_manager.fast import COMPILE_MODE_CUDA, COMPILE_MODE_GRAPHS, compile_mode

    model = app.models.get("tiny-sd1.safetensors")
    before = (model.device, model.memory_mode, model.weight_storage)
    try:
        model.device = replace(model.device, device=torch.device("cuda"), dtype=torch.float16)
        model.memory_mode, model.weight_storage = "Resident", "Automatic"
        assert model.offloader is not None and compile_mode(model, cuda_graphs=True) == COMPILE_MODE_GRAPHS
        assert compile_mode(model, cuda_graphs=False) == COMPILE_MODE_CUDA
        model.weight_storage = "fp16"
        assert compile_mode(model, cuda_graphs=True) == COMPILE_MODE_GRAPHS
        for storage, mode in (("bf16", "Resident"), ("fp8_e4m3fn", "Resident"), ("Automatic", "Model offload"),
                              ("Automatic", "Block offload")):
            model.weight_storage, model.memory_mode = storage, mode
            assert compile_mode(model, cuda_graphs=True) == COMPILE_MODE_CUDA, (storage, mode)
    finally:
        model.device, model.memory_mode, model.weight_storage = before


def test_the_fast_flag_is_the_setting_for_one_run_and_settings_can_switch_it_off(tmp_path, tiny_ckpt_dir):
    """--fast turns fast_mode on for this run: Settings shows it on, switching it off there unfuses the UNet and
    is saved; saving any other setting meanwhile never writes the flag's value; the next run without the flag
    starts from what was saved."""
    import json

    from webui.model_manager.fused_qkv import fused_layers

    app = make_easel(tmp_path, tiny_ckpt_dir, fast=True)
    try:
        assert app.settings.get("fast_mode") is True
        generate(app)
        model = app.models.get("tiny-sd1.safetensors")
        assert model.fast and fused_layers(model.unet)
        app.settings.update({"jpeg_quality": 77})
        saved = json.loads(app.settings.path.read_text())
        assert saved["jpeg_quality"] == 77 and saved["fast_mode"] is False  # the flag lasts one run
        app.settings.update({"fast_mode": False})
        generate(app)
        assert not model.fast and not fused_layers(model.unet)
        assert json.loads(app.settings.path.read_text())["fast_mode"] is False
    finally:
        app.close()
    again = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        assert again.settings.get("fast_mode") is False
    finally:
        again.close()
    flagged = make_easel(tmp_path, tiny_ckpt_dir, fast=True)
    try:  # the Settings tab's Apply sends every value, the flag's too: that is not the user choosing it
        flagged.settings.update({**flagged.settings.as_dict(), "jpeg_quality": 80})
        saved = json.loads(flagged.settings.path.read_text())
        assert saved["jpeg_quality"] == 80 and saved["fast_mode"] is False and flagged.settings.get("fast_mode")
    finally:
        flagged.close()
