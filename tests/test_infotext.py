"""Infotext in AUTOMATIC1111's exact layout: writing, parsing, and the round trip."""
import pytest

from webui.core.infotext import Infotext, format_infotext, format_parsed, parse_infotext
from webui.core.processing import Plan
from webui.core.request import GenerationRequest


def test_exact_text_for_a_known_request(easel):
    model = easel.models.get("tiny-sd1.safetensors")
    from webui.core import samplers

    sampler, schedule = samplers.resolve("DPM++ 2M", "Automatic")
    request = GenerationRequest(prompt="a castle, at dusk", negative_prompt="lowres", steps=20, cfg_scale=7,
                                width=512, height=512, seed=1, sampler_name="DPM++ 2M")
    from webui.core.prompt_plan import PromptPlan

    plan = Plan(model, sampler, schedule, 1, PromptPlan(request.prompt, request.negative_prompt, clip_skip=1),
                options=easel.engine.options(request))
    text = easel.engine.infotext(request, plan, seed=1)
    assert text == (
        "a castle, at dusk\n"
        "Negative prompt: lowres\n"
        f"Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        f"Model hash: {model.sha256[:10]}, Model: tiny-sd1, RNG: CPU, Version: Easel 0.1.0")


def test_values_with_commas_colons_or_newlines_are_quoted():
    text = format_infotext("p", "", {"Steps": 4, "Model": "my, model", "Note": "a: b", "Lines": "x\ny",
                                     "Seed": 3, "Size": "64x64"})
    assert 'Model: "my, model"' in text and 'Note: "a: b"' in text and 'Lines: "x\\ny"' in text
    assert text.startswith("p\nSteps: 4, Seed: 3, Size: 64x64, Model:")


ROUND_TRIP = [
    Infotext("simple", "", {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1", "Size": "512x512"}),
    Infotext("multi\nline (prompt:1.2), [x|y]", "neg, with: colon\nand newline",
             {"Steps": "4", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "99",
              "Model": "a, b", "Lora hashes": 'x: 123, y: 456', "Version": "Easel 0.1.0"}),
    Infotext("", "only negative", {"Steps": "1", "Seed": "0", "Size": "64x64", "Quoted": '"start"'}),
    Infotext("unicode ✓ 猫", "", {"Steps": "2", "Seed": "5", "Size": "8x8", "Model": "ümlaut:name"}),
]


@pytest.mark.parametrize("info", ROUND_TRIP)
def test_parse_of_write_is_identity(info):
    parsed = parse_infotext(format_parsed(info))
    assert parsed == info


def test_parses_automatic1111_output():
    text = ("masterpiece, best quality, 1girl\nNegative prompt: (worst quality:1.4), lowres\n"
            "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3839, Size: 512x768, "
            'Model hash: 7f96a1a9ca, Model: anything-v5, Denoising strength: 0.5, Clip skip: 2, '
            'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1')
    info = parse_infotext(text)
    assert info.prompt == "masterpiece, best quality, 1girl"
    assert info.negative_prompt == "(worst quality:1.4), lowres"
    assert info.params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert info.params["Size"] == "512x768" and info.params["Clip skip"] == "2"
    assert info.params["Version"] == "v1.10.1"


def test_prompt_only_text_has_no_params():
    info = parse_infotext("just a prompt: with a colon")
    assert info.prompt == "just a prompt: with a colon" and info.params == {}
