"""Models > Convert: single file <-> diffusers folder, pickle -> safetensors, fp16 pruning, VAE baking.

Everything runs on tiny random-weight models with the real key layouts, written to disk and
read back through the same code a real file goes through.
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from webui.core.request import GenerationRequest
from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.conversions import (
    ConversionFailed, bake_vae, checkpoint_to_folder, folder_to_checkpoint, output_path, pickle_to_safetensors,
    prune_checkpoint, sidecar_for, stream_safetensors)
from webui.model_manager.convert import VAE_PREFIX, vae_to_original
from webui.model_manager.loader import file_state_dict
from webui.model_manager.tiny import build_tiny_components, tiny_configs, write_single_file

from conftest import make_easel


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        assert b[key].dtype == value.dtype and torch.equal(b[key], value), key


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_to_diffusers_and_back_is_bit_identical(tmp_path, family):
    source = write_single_file(tmp_path / f"{family}.safetensors", Architecture(family), seed=7)
    texts = []
    folder = checkpoint_to_folder(source, tmp_path / f"{family}-diffusers",
                                  progress=lambda done, total, text: texts.append(text)).path
    assert (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    if family == "sdxl":
        assert (folder / "tokenizer_2" / "tokenizer_config.json").is_file()
        assert (folder / "text_encoder_2" / "model.safetensors").is_file()
    assert texts and not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left

    back = folder_to_checkpoint(folder, tmp_path / f"{family}-back.safetensors")
    assert_same_tensors(load_file(str(source)), load_file(str(back.path)))
    assert back.sha256 == sha256(back.path) and back.autov2 == back.sha256[:10]
    # the tiny configs are not the shipped ones, so the configs travel in a sidecar
    sidecar = json.loads((tmp_path / f"{family}-back.json").read_text())
    assert sidecar["architecture"] == family
    assert sidecar["components"]["unet"]["block_out_channels"] == tiny_configs(Architecture(family))["unet"][
        "block_out_channels"]
    with safe_open(str(back.path), "pt") as handle:
        assert handle.metadata()["easel_converted_from"] == folder.name


def test_diffusers_opens_the_converted_folder_with_the_same_weights(tmp_path):
    from diffusers import StableDiffusionPipeline

    source = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"), seed=7)
    folder = checkpoint_to_folder(source, tmp_path / "m-diffusers").path
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    tensors = load_file(str(source))
    assert torch.equal(pipe.unet.conv_in.weight, tensors["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight,
                       tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"])
    assert torch.equal(pipe.vae.decoder.conv_out.weight, tensors["first_stage_model.decoder.conv_out.weight"])
    assert pipe.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_converted_folder_generates_the_same_image_as_the_file(tmp_path):
    ckpts = tmp_path / "ckpts"
    source = write_single_file(ckpts / "tiny.safetensors", Architecture("sd1"), seed=7)
    checkpoint_to_folder(source, ckpts / "tiny-diffusers")
    easel = make_easel(tmp_path, ckpts)
    try:
        names = [c.name for c in easel.models.checkpoints()]
        assert names == ["tiny-diffusers", "tiny.safetensors"]
        request = dict(prompt="a lighthouse", steps=2, width=64, height=64, seed=5, sampler_name="Euler",
                       save_images=False)
        a = easel.generate(GenerationRequest(checkpoint="tiny.safetensors", **request)).images[0]
        b = easel.generate(GenerationRequest(checkpoint="tiny-diffusers", **request)).images[0]
        assert np.array_equal(np.asarray(a), np.asarray(b))
    finally:
        easel.close()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_shipped_configs_need_no_sidecar_even_written_out_by_diffusers(family):
    configs = configs_for(Architecture(family))
    assert sidecar_for(configs) is None if family != "sd2" else sidecar_for(configs) == {"prediction_type": "epsilon"}
    # a published diffusers folder's config.json lists every default; it is still the standard model
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    configs.components["unet"] = dict(unet.config)
    configs.components["vae"] = dict(vae.config)
    assert sidecar_for(configs) in (None, {"prediction_type": "epsilon"})
    assert sidecar_for(tiny_configs(Architecture(family)))["components"]


# ---- pickle ---------------------------------------------------------------------------------------------


class Payload:
    """What a malicious checkpoint does: run a command while it is being unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.ones(2)}, "payload": Payload(marker)}, source)
    texts = []
    with pytest.raises(ConversionFailed, match="restricted unpickler") as info:
        pickle_to_safetensors(source, progress=lambda d, t, text: texts.append(text))
    assert getattr(info.value, "user_facing", False)
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]  # no temp file left behind
    # the hash was shown before anything was unpickled
    assert any(sha256(source) in text for text in texts)


def test_benign_ckpt_converts_to_identical_tensors(tmp_path):
    configs, modules = build_tiny_components(Architecture("sd1"), seed=3)
    from webui.model_manager.convert import diffusers_to_checkpoint
    from webui.model_manager.tiny import _state_dicts

    tensors = diffusers_to_checkpoint(_state_dicts(modules), configs)
    tensors["alphas_cumprod"] = torch.linspace(1, 0, 10, dtype=torch.float64)
    source = tmp_path / "old.ckpt"
    torch.save({"state_dict": tensors, "global_step": 470000, "epoch": 3}, source)
    result = pickle_to_safetensors(source)  # no --allow-pickle: this action is the opt-in
    assert result.path == tmp_path / "old.safetensors"
    assert result.source_sha256 == sha256(source)
    assert_same_tensors(tensors, load_file(str(result.path)))
    with safe_open(str(result.path), "pt") as handle:
        assert handle.metadata()["easel_source_sha256"] == sha256(source)
    with pytest.raises(ConversionFailed, match="already exists"):
        pickle_to_safetensors(source)


# ---- pruning and VAE ------------------------------------------------------------------------------------


def test_fp16_prune_halves_float_sizes_and_drops_ema(tmp_path):
    source = write_single_file(tmp_path / "full.safetensors", Architecture("sd1"), seed=2)
    tensors = load_file(str(source))
    unet_keys = [k for k in tensors if k.startswith("model.diffusion_model.")]
    for key in unet_keys:  # the EMA copy old training checkpoints carry
        tensors["model_ema." + key[len("model.diffusion_model."):].replace(".", "")] = tensors[key].clone()
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    tensors["some_int_buffer"] = torch.arange(5)
    save_file(tensors, str(source))
    result = prune_checkpoint(source, tmp_path / "pruned.safetensors")
    pruned = load_file(str(result.path))
    expected = {k: v for k, v in tensors.items() if not k.startswith("model_ema.")}
    assert set(pruned) == set(expected)
    float_before = float_after = 0
    for key, value in expected.items():
        if value.is_floating_point():
            assert pruned[key].dtype == torch.float16 and torch.equal(pruned[key], value.half()), key
            float_before += value.nbytes
            float_after += pruned[key].nbytes
        else:
            assert torch.equal(pruned[key], value) and pruned[key].dtype == value.dtype
    assert float_after * 2 == float_before
    assert result.size_before == source.stat().st_size and result.size_after == result.path.stat().st_size
    ema_bytes = sum(v.nbytes for k, v in tensors.items() if k.startswith("model_ema."))
    assert result.size_after < (result.size_before - ema_bytes) / 2 + 50_000  # EMA dropped, the rest halved
    assert (tmp_path / "pruned.json").is_file()  # the tiny model's sidecar came along


def _vae_file(tmp_path, layout: str):
    _, modules = build_tiny_components(Architecture("sd1"), seed=99)
    diffusers_keys = file_state_dict(modules["vae"])
    original = vae_to_original(diffusers_keys, tiny_configs(Architecture("sd1"))["vae"])
    path = tmp_path / f"vae-{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in (original if layout == "original" else diffusers_keys).items()},
              str(path))
    return path, original


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_bake_vae_replaces_exactly_the_vae_tensors(tmp_path, layout):
    source = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"), seed=2)
    vae_path, vae_original = _vae_file(tmp_path, layout)
    result = bake_vae(source, vae_path, tmp_path / "baked.safetensors")
    before, after = load_file(str(source)), load_file(str(result.path))
    assert set(before) == set(after)
    vae_keys = [k for k in before if k.startswith(VAE_PREFIX)]
    assert len(vae_keys) == len(vae_original)
    for key in before:
        expected = vae_original[key[len(VAE_PREFIX):]] if key.startswith(VAE_PREFIX) else before[key]
        assert torch.equal(after[key], expected), key
    assert not all(torch.equal(before[k], after[k]) for k in vae_keys)
    with safe_open(str(result.path), "pt") as handle:
        assert handle.metadata()["easel_baked_vae"] == f"{vae_path.name} [{sha256(vae_path)[:10]}]"


def test_bake_vae_that_does_not_fit_names_both_files(tmp_path):
    source = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"), seed=2)
    vae_path, original = _vae_file(tmp_path, "original")
    original["decoder.conv_out.weight"] = torch.zeros(3, 8, 3, 3)
    save_file(original, str(vae_path))
    with pytest.raises(ConversionFailed, match="vae-original.safetensors does not fit m.safetensors"):
        bake_vae(source, vae_path, tmp_path / "baked.safetensors")
    assert not (tmp_path / "baked.safetensors").exists()


# ---- outputs ----------------------------------------------------------------------------------------------


def test_output_names_stay_in_their_folder_and_existing_files_are_kept(tmp_path):
    assert output_path(tmp_path, "new") == (tmp_path / "new.safetensors").resolve()
    for bad in ("../escape", "/etc/passwd", ""):
        with pytest.raises(ConversionFailed, match="output name"):
            output_path(tmp_path, bad)
    source = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"), seed=2)
    target = tmp_path / "p.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(ConversionFailed, match="already exists"):
        prune_checkpoint(source, target)
    assert target.read_bytes() == b"keep me"
    prune_checkpoint(source, target, overwrite=True)
    assert load_file(str(target))


def test_streamed_safetensors_round_trip_every_dtype(tmp_path):
    tensors = {"f32": torch.randn(3, 4), "bf16": torch.randn(5).bfloat16(), "f16": torch.randn(2, 2).half(),
               "i64": torch.arange(7), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3), "view": torch.randn(4, 4).t()}
    path = tmp_path / "t.safetensors"
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    stream_safetensors(path, layout, tensors.__getitem__, {"note": "x"})
    assert_same_tensors(tensors, load_file(str(path)))
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"note": "x"}
    with pytest.raises(ConversionFailed, match="expected"):
        stream_safetensors(tmp_path / "bad.safetensors", layout, lambda k: torch.zeros(1))
    assert not (tmp_path / "bad.safetensors").exists()


def test_convert_tab_queues_the_pickle_conversion_and_shows_its_hash(tmp_path):
    from webui.ui.models_tools import FROM_PICKLE, TO_DIFFUSERS, follow, sources_for, submit_convert

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    tensors = {"model.diffusion_model.w": torch.randn(3, 3)}
    torch.save({"state_dict": tensors}, ckpts / "old.ckpt")
    easel = make_easel(tmp_path, ckpts)
    try:
        assert [s.label for s in sources_for(easel, FROM_PICKLE)] == ["old.ckpt"]
        assert sources_for(easel, TO_DIFFUSERS) == []  # without --allow-pickle only this explicit action reads it
        jobs = []
        updates = list(follow(easel, lambda: jobs.append(submit_convert(easel, FROM_PICKLE, "old.ckpt")) or jobs[0]))
        assert jobs[0].kind == "convert"
        assert f"source sha256 {sha256(ckpts / 'old.ckpt')}" in updates[-1][1]
        assert_same_tensors(tensors, load_file(str(ckpts / "old.safetensors")))
        error = list(follow(easel, lambda: submit_convert(easel, FROM_PICKLE, "../old.ckpt")))[-1][1]
        assert "source" in error and "not installed" in error
    finally:
        easel.close()
