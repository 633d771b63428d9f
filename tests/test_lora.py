"""LoRA files on the tiny models: layouts, exact merge math, exact restore, composition modes."""
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest
from webui.features.lora import LoraModule, LoraPatcher, LoraSpec, read_lora, target_map
from webui.features.lora_writer import write_lora

from conftest import make_easel


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    lora_dir = app.paths.model_dir("lora")
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_lora(lora_dir / "style_a.safetensors", sd1, seed=1, alpha=2.0)
    write_lora(lora_dir / "style_b.safetensors", sd1, seed=2, alpha=4.0)
    write_lora(lora_dir / "sub" / "peft_a.safetensors", sd1, seed=1, alpha=2.0, layout="peft")
    sdxl = app.models.get("tiny-sdxl.safetensors")
    write_lora(lora_dir / "xl_style.safetensors", sdxl, seed=3, alpha=4.0)
    yield app
    app.close()


def generate(app, prompt, **kw):
    base = dict(prompt=prompt, negative_prompt="", steps=3, width=64, height=64, seed=5, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", save_images=False)
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def px(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def unet_state(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_weight_zero_equals_no_lora_and_weight_one_differs(app):
    plain = generate(app, "a cat")
    zero = generate(app, "a cat <lora:style_a:0>")
    one = generate(app, "a cat <lora:style_a:1>")
    assert np.array_equal(px(plain), px(zero))
    assert np.abs(px(plain) - px(one)).mean() > 1


def test_base_weights_restored_bit_identical(app):
    model = app.models.get("tiny-sd1.safetensors")
    before = unet_state(model)
    te_before = {k: v.clone() for k, v in model.text_encoders["text_encoder"].state_dict().items()}
    generate(app, "a cat <lora:style_a:0.8> <lora:style_b:0.5>")
    assert any(not torch.equal(before[k], v) for k, v in model.unet.state_dict().items())  # applied
    generate(app, "a cat")
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert all(torch.equal(te_before[k], v) for k, v in model.text_encoders["text_encoder"].state_dict().items())


def test_merge_math_is_exact(app):
    model = app.models.get("tiny-sd1.safetensors")
    lora = read_lora(app.paths.model_dir("lora") / "style_a.safetensors")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    module = target_map(model)[key][1]
    base = module.weight.detach().clone()
    LoraPatcher.of(model).set([LoraSpec(lora, te=1.0, unet=0.7)])
    parts = lora.modules[key].tensors
    expected = base + 0.7 * (2.0 / 4) * (parts["up"] @ parts["down"])  # alpha / rank
    torch.testing.assert_close(module.weight.detach(), expected, rtol=0, atol=1e-6)
    LoraPatcher.of(model).set([])
    assert torch.equal(module.weight.detach(), base)


def test_same_set_again_is_cached(app):
    model = app.models.get("tiny-sd1.safetensors")
    lora = read_lora(app.paths.model_dir("lora") / "style_a.safetensors")
    patcher = LoraPatcher.of(model)
    first = patcher.set([LoraSpec(lora)])
    again = patcher.set([LoraSpec(lora)])
    assert not first.cached and again.cached and first.matched > 0 and not first.unmatched


def test_kohya_and_peft_layouts_give_the_same_image(app):
    kohya = generate(app, "a cat <lora:style_a:1>")
    peft = generate(app, "a cat <lora:sub/peft_a:1>")
    assert np.abs(px(kohya) - px(peft)).max() <= 1


def test_te_and_unet_weights_follow_automatic1111_order(app):
    model = app.models.get("tiny-sd1.safetensors")
    generate(app, "a cat <lora:style_a:0:1>")  # te=0, unet=1
    q_proj = target_map(model)["lora_te_text_model_encoder_layers_0_self_attn_q_proj"][1]
    to_q = target_map(model)["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"][1]
    patcher = LoraPatcher.of(model)
    assert id(q_proj) not in patcher._backups and id(to_q) in patcher._backups


def test_sdxl_kohya_lora_with_original_module_names_matches_every_layer(app):
    result = generate(app, "a cat <lora:xl_style:1>", checkpoint="tiny-sdxl.safetensors")
    assert not [w for w in result.warnings if "do not exist" in w]
    plain = generate(app, "a cat", checkpoint="tiny-sdxl.safetensors")
    assert np.abs(px(plain) - px(result)).mean() > 1


def test_lora_for_another_architecture_warns(app):
    result = generate(app, "a cat <lora:xl_style:1>")  # SDXL LoRA on SD 1.x
    assert any("do not exist" in w for w in result.warnings)


def test_missing_lora_is_a_warning_not_a_crash(app):
    result = generate(app, "a cat <lora:does_not_exist:1>")
    assert len(result.images) == 1
    assert any("does_not_exist" in w and "not found" in w for w in result.warnings)


@pytest.mark.parametrize("mode", ["Merge", "Switch", "Composite"])
def test_two_loras_in_each_mode(app, mode):
    result = generate(app, "a cat <lora:style_a:1> <lora:style_b:1>", lora_composition=mode,
                      lora_switch_steps=1, steps=4)
    image = px(result)
    assert np.isfinite(image).all() and image.std() > 1
    info = parse_infotext(result.infotexts[0])
    assert info.params["Lora hashes"].startswith("style_a: ") and ", style_b: " in info.params["Lora hashes"]
    assert info.params["Lora composition"] == mode
    assert len(info.params["Lora hashes"].split(", ")[0].split(": ")[1]) == 12


def test_composition_modes_differ(app):
    images = {mode: px(generate(app, "a cat <lora:style_a:1> <lora:style_b:1>", lora_composition=mode, steps=4))
              for mode in ("Merge", "Switch", "Composite")}
    assert np.abs(images["Merge"] - images["Switch"]).mean() > 0.5
    assert np.abs(images["Merge"] - images["Composite"]).mean() > 0.5
    assert np.abs(images["Switch"] - images["Composite"]).mean() > 0.5


def test_switch_rotates_which_lora_is_applied(app):

    model = app.models.get("tiny-sd1.safetensors")
    request = GenerationRequest(prompt="a <lora:style_a:1> <lora:style_b:1>", steps=6, lora_composition="Switch",
                                lora_switch_steps=2)
    plan = app.engine.plan_prompts(request, model, app.engine.options(request))
    denoiser = plan.make_denoiser(1, None, None)
    assert [denoiser.active(step) for step in range(6)] == [0, 0, 1, 1, 0, 0]


def test_loha_and_lokr_deltas():
    w1a, w1b, w2a, w2b = (torch.randn(6, 2), torch.randn(2, 5), torch.randn(6, 2), torch.randn(2, 5))
    loha = LoraModule({"w1a": w1a, "w1b": w1b, "w2a": w2a, "w2b": w2b, "alpha": torch.tensor(1.0)})
    torch.testing.assert_close(loha.delta(torch.Size([6, 5])), (w1a @ w1b) * (w2a @ w2b) * 0.5)
    k1, k2 = torch.randn(2, 1), torch.randn(3, 5)
    lokr = LoraModule({"k1": k1, "k2": k2})
    torch.testing.assert_close(lokr.delta(torch.Size([6, 5])), torch.kron(k1, k2))


def test_lora_infotext_hash_is_autov3(app):
    import hashlib

    result = generate(app, "a cat <lora:style_a:0.5>")
    path = app.paths.model_dir("lora") / "style_a.safetensors"
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert parse_infotext(result.infotexts[0]).params["Lora hashes"] == f"style_a: {expected}"
    assert "<lora:style_a:0.5>" in result.infotexts[0].split("\n")[0]


def test_unreadable_lora_is_reported(app):
    bad = app.paths.model_dir("lora") / "broken.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(bad))
    result = generate(app, "a cat <lora:broken:1>")
    assert len(result.images) == 1 and any("broken" in w for w in result.warnings)


class FirstPassRecorder:
    """A real `Hooks` implementation that keeps the latents after each sampler step."""

    def __init__(self):
        self.latents = []

    def has(self, hook):
        return hook == "step_end"

    def call_replacing(self, hook, **kwargs):
        return kwargs.get("request" if hook == "before_process" else "result")

    def call(self, hook, **kwargs):
        if hook == "step_end":
            self.latents.append(kwargs["step"].latents.clone())
        return []


def test_hires_prompt_with_other_loras_leaves_the_first_pass_alone(app):
    """LoRAs are patched per pass: the hires prompt's LoRA set must not sample the first pass."""
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    plain = FirstPassRecorder()
    app.engine.hooks = plain
    generate(app, "a cat <lora:style_a:1>")
    mixed = FirstPassRecorder()
    app.engine.hooks = mixed
    with_b = generate(app, "a cat <lora:style_a:1>", hr_prompt="a cat <lora:style_b:1>", **hires)
    first_pass = mixed.latents[:3]
    assert all(torch.equal(a, b) for a, b in zip(plain.latents, first_pass)), "first pass sampled other LoRAs"
    # and the hires pass did use style_b: the same request with the first prompt's LoRA differs
    same = FirstPassRecorder()
    app.engine.hooks = same
    with_a = generate(app, "a cat <lora:style_a:1>", hr_prompt="a cat <lora:style_a:1> ", **hires)
    assert all(torch.equal(a, b) for a, b in zip(same.latents[:3], first_pass))
    assert not np.array_equal(px(with_a), px(with_b))
    assert 'Hires prompt: "a cat <lora:style_b:1>"' in with_b.info
    assert "style_a: " in with_b.info and "style_b: " in with_b.info.split("Lora hashes:")[1]


def test_weights_follow_the_pass_after_a_request_with_loras(app):
    """A request without LoRAs after one with them samples the base weights."""
    fresh = generate(app, "a dog")
    generate(app, "a dog <lora:style_b:1>", enable_hr=True, hr_scale=1.5, hr_prompt="a dog <lora:style_a:1>")
    assert np.array_equal(px(generate(app, "a dog")), px(fresh))


def test_parsed_loras_are_model_store_entries_with_a_count_limit_and_a_new_key_when_the_file_changes(app):
    store = app.models.store
    generate(app, "a ball <lora:style_a:1> <lora:style_b:0.5>")
    keys = [key for key in store.keys("lora")]
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in keys) == ["style_a.safetensors", "style_b.safetensors"]
    assert all(e.ram_bytes > 0 for e in store.entries() if e.kind == "lora")
    first = app.loras.load("style_a")
    assert app.loras.load("style_a") is first  # parsed once
    path = app.paths.model_dir("lora") / "style_a.safetensors"
    write_lora(path, app.models.get("tiny-sd1.safetensors"), seed=7, alpha=2.0)
    os.utime(path, (time.time() + 5, time.time() + 5))
    changed = app.loras.load("style_a")
    assert changed is not first
    assert [k for k in store.keys("lora") if k[0] == str(path)] == [(str(path), path.stat().st_mtime)]
    store.set_limit("lora", 1)
    store.trim()
    assert len(store.keys("lora")) == 1
