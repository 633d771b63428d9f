"""Guidance add-ons (NGMS, FreeU v1/v2, PAG, SAG) and the refiner handoff, on tiny checkpoints.

For each: switched off leaves the pixels and the infotext as they were; switched on changes the image,
the same way twice; and a reference where the math gives one (model calls counted per call, diffusers'
own FreeU and PAG processor, A1111's "no negative" equals CFG scale 1).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.model_manager.architecture import Architecture
from webui.model_manager.tiny import write_single_file
from webui.pnginfo import infotext_to_fields

SD1, OTHER, SDXL, REFINER = "tiny-sd1.safetensors", "other-sd1.safetensors", "tiny-sdxl.safetensors", \
    "refiner.safetensors"
FREEU = "freeu integrated (sd 1.x, sd 2.x, sdxl)"
PAG = "PerturbedAttentionGuidance Integrated"
SAG = "self attention guidance"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    from conftest import make_easel

    root = tmp_path_factory.mktemp("guidance")
    folder = root / "checkpoints"
    folder.mkdir()
    for path in tiny_ckpt_dir.iterdir():  # the session's tiny SD 1.x and SDXL files (and sidecars)
        (folder / path.name).symlink_to(path)
    write_single_file(folder / OTHER, Architecture("sd1"), seed=3)
    write_single_file(folder / REFINER, Architecture("sdxl-refiner"), seed=3)
    easel = make_easel(root, folder)
    yield easel
    easel.close()


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a red fox", negative_prompt="blurry", steps=4, width=64, height=64, seed=42,
                sampler_name="Euler", checkpoint=SD1, save_images=False)
    base.update(changes)
    return GenerationRequest(**base)


def generate(app, **changes) -> tuple[np.ndarray, dict[str, str]]:
    result = app.generate(request(**changes))
    return np.asarray(result.images[0]).astype(np.int16), parse_infotext(result.infotexts[0]).params


class Calls:
    """Rows of every call of a UNet (a forward pre-hook), e.g. [2, 1]: negative + positive, then one row."""

    def __init__(self, unet):
        self.rows: list[int] = []
        self.handle = unet.register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def off(app):
    return generate(app)


def changed(app, off, **changes) -> tuple[np.ndarray, dict[str, str]]:
    """Generate twice: the image differs from `off` and is the same both times."""
    first, params = generate(app, **changes)
    second, _ = generate(app, **changes)
    assert np.abs(first - off[0]).max() > 0, changes
    assert np.array_equal(first, second), changes
    return first, params


def test_everything_switched_off_changes_nothing(app, off):
    image, params = generate(app, s_min_uncond=0.0, refiner_checkpoint="None", alwayson_scripts={
        FREEU: {"args": [False, 1.3, 1.4, 0.9, 0.2]}, PAG: {"args": [False, 3.0]}, SAG: {"args": [False]},
        "refiner": {"args": [False, OTHER, 0.5]}})
    assert np.array_equal(image, off[0]) and params == off[1]
    same, params = generate(app, refiner_checkpoint=OTHER, refiner_switch_at=1.0)  # 1.0: the switch never comes
    assert np.array_equal(same, off[0]) and "Refiner" not in params


# ---- NGMS ----------------------------------------------------------------------------------------------


def test_ngms_skips_the_negative_on_every_other_call_below_the_sigma(app, off):
    unet = app.models.get(SD1).unet
    with Calls(unet) as calls:
        image, params = changed(app, off, s_min_uncond=100.0)
    assert calls.rows == [2, 1, 2, 1] * 2  # AUTOMATIC1111 alternates on the model calls: odd ones skip
    assert params["NGMS"] == "100" and "NGMS all steps" not in params
    with Calls(unet) as calls:
        every, params = generate(app, s_min_uncond=100.0, override_settings={"s_min_uncond_all": True})
    assert calls.rows == [1, 1, 1, 1] and params["NGMS all steps"] == "True"
    # no negative at all, at scale 1: exactly the positive prompt's prediction, i.e. CFG scale 1
    assert np.array_equal(every, generate(app, cfg_scale=1.0)[0])
    below, params = generate(app, s_min_uncond=0.001)  # below every sigma of the schedule: nothing skipped
    assert np.array_equal(below, off[0]) and "NGMS" not in params
    from_setting, params = generate(app, override_settings={"s_min_uncond": 100.0})
    assert np.array_equal(from_setting, image) and params["NGMS"] == "100"
    with pytest.raises(ValidationError, match="s_min_uncond"):
        app.generate(request(s_min_uncond=-1.0))


# ---- FreeU ---------------------------------------------------------------------------------------------


def test_freeu_v1_is_diffusers_own_and_the_unet_is_restored(app, off):
    unet = app.models.get(SD1).unet
    factors = dict(b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    image, params = changed(app, off, alwayson_scripts={"FreeU": {"args": {"enabled": True, **factors,
                                                                           "version": 1}}})
    assert params["freeu_version"] == "1" and params["freeu_b1"] == "1.3" and params["freeu_enabled"] == "True"
    assert all(getattr(block, "b1", None) is None for block in unet.up_blocks)  # disabled again
    unet.enable_freeu(**factors)  # the reference: diffusers' FreeU on for the whole run
    try:
        reference, _ = generate(app)
    finally:
        unet.disable_freeu()
    assert np.array_equal(image, reference)


def test_freeu_v2_structure_scaling_and_its_hooks_go_away(app, off):
    from webui.features.guidance.freeu import FreeUPatch, FreeUSettings, backbone_v2, decoder_resnets

    unet = app.models.get(SD1).unet
    hooks = sum(len(r._forward_pre_hooks) for r, _ in decoder_resnets(unet))
    image, params = changed(app, off, alwayson_scripts={FREEU: {"args": [True, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0]}})
    assert "freeu_version" not in params and params["freeu_s2"] == "0.2"  # Forge's keys; v2 is Forge's
    assert sum(len(r._forward_pre_hooks) for r, _ in decoder_resnets(unet)) == hooks
    window, _ = generate(app, alwayson_scripts={FREEU: {"args": [True, 1.3, 1.4, 0.9, 0.2, 0.5, 1.0]}})
    assert not np.array_equal(window, image) and not np.array_equal(window, off[0])  # on for the later steps only
    with pytest.raises(RuntimeError):  # an error while sampling still removes the hooks
        with FreeUPatch(unet, FreeUSettings(1.3, 1.4, 0.9, 0.2)).installed():
            raise RuntimeError("boom")
    assert sum(len(r._forward_pre_hooks) for r, _ in decoder_resnets(unet)) == hooks
    h = torch.rand(1, 4, 3, 3)
    mean = h.mean(1, keepdim=True)
    m = (mean - mean.min()) / (mean.max() - mean.min())
    expected = torch.cat([h[:, :2] * (1 + 0.5 * m), h[:, 2:]], 1)
    assert torch.allclose(backbone_v2(h, 1.5), expected)


# ---- PAG and SAG ---------------------------------------------------------------------------------------


def test_pag_evaluates_the_positive_once_more_with_identity_attention(app, off):
    from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0

    from webui.features.guidance.attention import IdentitySelfAttention, self_attention

    unet = app.models.get(SD1).unet
    attn = self_attention(unet)
    processor = attn.processor
    with Calls(unet) as calls:
        image, params = changed(app, off, alwayson_scripts={PAG: {"args": [True, 3.0, 0.0, 0.0, 1.0]}})
    assert calls.rows == [2, 1] * 8 and attn.processor is processor
    assert params["pagi_scale"] == "3" and params["pagi_enabled"] == "True"
    zero, _ = generate(app, alwayson_scripts={PAG: {"args": [True, 0.0]}})
    assert np.array_equal(zero, off[0])
    attenuated, _ = generate(app, alwayson_scripts={PAG: {"args": [True, 3.0, 50.0]}})
    assert not np.array_equal(attenuated, image)
    # the perturbation is diffusers' PAG identity path, for a batch that is all perturbed
    tokens = torch.randn(2, 16, attn.to_q.in_features)
    with torch.no_grad():
        ours = IdentitySelfAttention()(attn, tokens)
        theirs = PAGIdentitySelfAttnProcessor2_0()(attn, torch.cat([tokens, tokens]))[2:]
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_sag_evaluates_the_negative_on_a_blurred_estimate(app, off):
    from diffusers.models.attention_processor import AttnProcessor

    from webui.features.guidance.attention import RecordingSelfAttention, self_attention

    unet = app.models.get(SD1).unet
    attn = self_attention(unet)
    processor = attn.processor
    with Calls(unet) as calls:
        image, params = changed(app, off, alwayson_scripts={SAG: {"args": [True, 0.75, 1.0]}})
    assert calls.rows == [2, 1] * 8 and attn.processor is processor  # (two runs)
    assert params["SAG Guidance Scale"] == "0.75" and params["SAG Mask Threshold"] == "1"
    # the mask matters: nothing above the threshold leaves only the re-evaluation's difference
    assert not np.array_equal(generate(app, alwayson_scripts={SAG: {"args": [True, 0.75, 2.0]}})[0], image)
    plain = generate(app, cfg_scale=1.0)[0]  # without the negative prompt SAG has nothing to look at
    assert np.array_equal(generate(app, cfg_scale=1.0, alwayson_scripts={SAG: {"args": [True, 0.75]}})[0], plain)
    recorder = RecordingSelfAttention()
    recorder.armed = True
    tokens = torch.randn(2, 16, attn.to_q.in_features)
    with torch.no_grad():
        ours, theirs = recorder(attn, tokens), AttnProcessor()(attn, tokens)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert recorder.probabilities.shape == (2 * attn.heads, 16, 16)
    assert torch.allclose(recorder.probabilities.sum(-1), torch.ones(2 * attn.heads, 16))


def test_bad_arguments_name_their_field(app):
    for scripts, field in (({FREEU: {"args": [True, 9.0]}}, "b1"), ({PAG: {"args": [True, "x"]}}, "scale"),
                           ({SAG: {"args": [True, 0.5, 1.0, 0.0]}}, "blur_sigma"),
                           ({SAG: {"args": [True, 1, 2, 3, 4, 5]}}, "args"),
                           ({"FreeU": {"args": {"enabled": True, "b1": 0.0, "version": 1}}}, "args")):
        with pytest.raises(ValidationError) as caught:
            app.engine.validate(request(alwayson_scripts=scripts))
        assert field in str(caught.value), caught.value


# ---- refiner -------------------------------------------------------------------------------------------


def test_refiner_takes_over_at_the_switch_with_its_own_model(app, off):
    loaded = []
    app.models.listeners.append(lambda model: loaded.append(model))
    try:
        base = app.models.get(SD1)
        with Calls(base.unet) as calls:
            image, params = changed(app, off, refiner_checkpoint=OTHER, refiner_switch_at=0.5)
    finally:
        app.models.listeners.pop()
    assert [m.info.name for m in loaded] == [OTHER, OTHER]  # loaded for each job, beside the base
    assert calls.rows == [2, 2] * 2  # per run: the base made the first 2 of 4 calls, the refiner the rest
    other = app.models.registry.find(OTHER)
    assert params["Refiner"] == f"other-sd1 [{app.models.registry.short_hash(other)}]"
    assert params["Refiner switch at"] == "0.5" and params["Model"] == "tiny-sd1"
    assert app.models.current.info.name == SD1  # the base is still the active checkpoint
    by_args = app.generate(request(alwayson_scripts={"Refiner": {"args": [True, OTHER, 0.5]}}))
    assert np.array_equal(np.asarray(by_args.images[0]).astype(np.int16), image)
    fields = infotext_to_fields(parse_infotext(by_args.infotexts[0]))
    assert fields["refiner_checkpoint"] == params["Refiner"] and fields["refiner_switch_at"] == 0.5
    with pytest.raises(ValidationError, match="refiner_checkpoint"):
        app.engine.validate(request(refiner_checkpoint="no-such-model"))


@pytest.fixture
def three_checkpoints(app):
    """Room for base, refiner and one more, so the refiner stays loaded between these jobs (faster)."""
    limit = app.settings.get("sd_checkpoints_limit")
    app.settings.update({"sd_checkpoints_limit": 3})
    yield
    app.settings.update({"sd_checkpoints_limit": limit})


def test_sdxl_refiner_in_txt2img_hires_and_img2img(app, three_checkpoints):
    xl = dict(checkpoint=SDXL, refiner_checkpoint=REFINER, refiner_switch_at=0.5)
    plain, _ = generate(app, checkpoint=SDXL)
    refined, params = generate(app, **xl)
    assert np.abs(refined - plain).max() > 0 and params["Refiner"].startswith("refiner [")
    hires = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    _, params = generate(app, **xl, **hires)  # AUTOMATIC1111's default: the refiner in the second pass
    assert params["Refiner"].startswith("refiner [") and "Hires refiner" not in params
    _, params = generate(app, **xl, **hires, override_settings={"hires_fix_refiner_pass": "first pass"})
    assert params["Hires refiner"] == "first pass"
    from test_golden import picture

    img2img = dict(mode="img2img", init_images=[picture()], denoising_strength=0.8)
    unrefined, _ = generate(app, checkpoint=SDXL, **img2img)
    refined, params = generate(app, **xl, **img2img)
    assert np.abs(refined - unrefined).max() > 0 and "Refiner" in params


def test_paste_restores_every_key(app):
    text = ("a fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
            "NGMS: 2.5, NGMS all steps: True, freeu_enabled: True, freeu_b1: 1.3, freeu_b2: 1.4, freeu_s1: 0.9, "
            "freeu_s2: 0.2, freeu_start: 0, freeu_end: 0.8, freeu_version: 1, pagi_enabled: True, pagi_scale: 2.5, "
            "pagi_attenuation: 10, pagi_start_step: 0, pagi_end_step: 1, SAG Guidance Scale: 0.6, "
            "SAG Mask Threshold: 0.9, Refiner: other-sd1 [abc], Refiner switch at: 0.7")
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["s_min_uncond"] == 2.5 and fields["override_settings"]["s_min_uncond_all"] is True
    assert fields["freeu_enabled"] is True and fields["freeu_end"] == 0.8 and fields["freeu_version"] == "1"
    assert fields["pag_enabled"] is True and fields["pag_scale"] == 2.5 and fields["pag_attenuation"] == 10
    assert fields["sag_enabled"] is True and fields["sag_scale"] == 0.6 and fields["sag_mask_threshold"] == 0.9
    assert fields["refiner_checkpoint"] == "other-sd1 [abc]" and fields["refiner_switch_at"] == 0.7
    sdnext = parse_infotext("x\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, PAG scale: 2")
    assert infotext_to_fields(sdnext)["pag_scale"] == 2.0  # SD.Next's key
    from webui.ui.generation_controls import common_request_fields
    from webui.ui.send_to import pasted_fields

    pasted = pasted_fields(app, text)
    assert pasted["refiner_checkpoint"] == app.models.registry.title(app.models.registry.find(OTHER))
    # the tabs turn those values into the request API clients send
    built = GenerationRequest(**common_request_fields({**pasted, "steps": 4, "checkpoint": SD1}), width=64,
                              height=64, save_images=False)
    assert built.s_min_uncond == 2.5 and built.refiner_switch_at == 0.7
    assert built.alwayson_scripts[FREEU]["args"]["version"] == "1"
    assert built.alwayson_scripts[SAG]["args"]["scale"] == 0.6
    params = parse_infotext(app.generate(built).infotexts[0]).params
    for key in ("NGMS", "freeu_enabled", "pagi_scale", "SAG Guidance Scale", "Refiner"):
        assert key in params, key


def test_xyz_plot_axes_for_the_refiner_and_ngms(app):
    import importlib

    axes = importlib.import_module("easel_extensions.xyz_plot.axes").AXES
    changed_request = axes["Refiner switch at"].apply(axes["Refiner checkpoint"].apply(request(), OTHER), 0.5)
    changed_request = axes["Negative Guidance minimum sigma"].apply(changed_request, 3.0)
    assert (changed_request.refiner_checkpoint, changed_request.refiner_switch_at, changed_request.s_min_uncond) == \
        (OTHER, 0.5, 3.0)
    assert axes["Refiner switch at"].parse("0.5, 0.8") == [0.5, 0.8]
