"""Checkpoint merger: exact formulas, per-block weights, metadata, errors, and a merged model that generates."""
import hashlib
import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from webui.core.request import GenerationRequest
from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.conversions import ConversionFailed
from webui.model_manager.convert import UNET_PREFIX, VAE_PREFIX, unet_to_original
from webui.model_manager.merge import MergeSpec, block_index, merge_checkpoints, parse_block_weights, unet_depth
from webui.model_manager.tiny import write_single_file

from conftest import make_easel


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny SD 1.x checkpoints (A also carries a schedule buffer) and a tiny SDXL one."""
    folder = tmp_path_factory.mktemp("merge")
    for role, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_single_file(folder / f"{role}.safetensors", Architecture("sd1"), seed=seed)
    a = load_file(str(folder / "a.safetensors"))
    a["alphas_cumprod"] = torch.linspace(1, 0.1, 10)
    save_file(a, str(folder / "a.safetensors"))
    write_single_file(folder / "xl.safetensors", Architecture("sdxl"), seed=4)
    return folder


def load(path):
    return load_file(str(path))


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weighted_sum_is_exact(models, tmp_path):
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", multiplier=0.3)
    steps = []
    result = merge_checkpoints(spec, tmp_path / "ws.safetensors", progress=lambda d, t, text: steps.append((d, t)))
    a, b, out = load(models / "a.safetensors"), load(models / "b.safetensors"), load(result.path)
    assert set(out) == set(a)
    for key, value in a.items():
        if key == "alphas_cumprod" or not value.is_floating_point():
            assert torch.equal(out[key], value), key  # not a model weight: A's, as in AUTOMATIC1111
        else:
            assert torch.equal(out[key], value * (1 - 0.3) + b[key] * 0.3), key
    assert steps[-1] == (len(a), len(a))  # one progress report per tensor


def test_add_difference_is_exact(models, tmp_path):
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", models / "c.safetensors",
                     mode="add_difference", multiplier=0.75)
    out = load(merge_checkpoints(spec, tmp_path / "ad.safetensors").path)
    a, b, c = (load(models / f"{r}.safetensors") for r in "abc")
    for key, value in a.items():
        expected = value if key == "alphas_cumprod" else value + (b[key] - c[key]) * 0.75
        assert torch.equal(out[key], expected), key


def test_block_weights_hit_the_right_keys(models, tmp_path):
    # tiny UNet: 6 input blocks -> IN00..IN05, M00, OUT00..OUT05 (13 values), BASE first
    weights = "0.5," + ",".join(["0"] * 6) + ",1," + ",".join(["0.25"] * 6)
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", multiplier=0.9, block_weights=weights)
    out = load(merge_checkpoints(spec, tmp_path / "mbw.safetensors").path)
    a, b = load(models / "a.safetensors"), load(models / "b.safetensors")
    seen = {"in": 0, "mid": 0, "out": 0, "base": 0}
    for key in b:
        rest = key[len(UNET_PREFIX):] if key.startswith(UNET_PREFIX) else None
        if rest is not None and rest.startswith(("input_blocks.", "time_embed.")):
            assert torch.equal(out[key], a[key]), key  # weight 0: A bit for bit
            seen["in"] += 1
        elif rest is not None and rest.startswith("middle_block."):
            assert torch.equal(out[key], b[key]), key  # weight 1: B bit for bit
            seen["mid"] += 1
        elif rest is not None and rest.startswith(("output_blocks.", "out.")):
            assert torch.equal(out[key], a[key] * 0.75 + b[key] * 0.25), key
            seen["out"] += 1
        elif a[key].is_floating_point():
            assert torch.equal(out[key], a[key] * 0.5 + b[key] * 0.5), key  # BASE: text encoder and VAE
            seen["base"] += 1
    assert all(seen.values()), seen
    with safe_open(str(tmp_path / "mbw.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["sd_merge_recipe"])["block_weights"] == weights


def test_block_weight_string_is_checked_against_the_model(models, tmp_path):
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", block_weights="0.5,0.5")
    with pytest.raises(ConversionFailed, match="13 blocks .*give 13 values, or 14 with BASE"):
        merge_checkpoints(spec, tmp_path / "x.safetensors")
    with pytest.raises(ConversionFailed, match="'abc' is not a number"):
        parse_block_weights("0.1,abc", 6)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("family, depth, values", [("sd1", 12, 25), ("sd2", 12, 25), ("sdxl", 9, 19)])
def test_real_models_use_the_a1111_block_counts(family, depth, values):
    configs = configs_for(Architecture(family))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
    keys = [UNET_PREFIX + k for k in unet_to_original(dict(unet.state_dict()), configs["unet"])]
    assert unet_depth(keys) == depth
    indices = {block_index(k, depth) for k in keys}
    assert indices == set(range(values))  # every block IN00..OUTnn has tensors, nothing falls outside
    assert len(parse_block_weights(",".join(["1"] * values), depth).blocks) == values
    assert parse_block_weights(",".join(["1"] * (values + 1)), depth).base == 1


def test_metadata_names_sources_and_formula(models, tmp_path):
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", models / "c.safetensors",
                     mode="add_difference", multiplier=0.5, names={"A": "alpha.safetensors"})
    result = merge_checkpoints(spec, tmp_path / "m.safetensors")
    with safe_open(str(result.path), "pt") as handle:
        meta = handle.metadata()
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe["formula"] == "A+(B-C)*M" and recipe["method"] == "add_difference" and recipe["multiplier"] == 0.5
    hashes = {r: sha(models / f"{r}.safetensors") for r in "abc"}
    assert recipe["primary_model"] == f"alpha.safetensors [{hashes['a'][:10]}]"
    assert recipe["secondary_model"] == f"b.safetensors [{hashes['b'][:10]}]"
    assert recipe["tertiary_model_hash"] == hashes["c"]
    assert set(json.loads(meta["sd_merge_models"])) == set(hashes.values())
    assert "A+(B-C)*M" in meta["easel_merge"] and hashes["b"][:10] in meta["easel_merge"]
    assert result.sha256 == sha(result.path)


def test_vae_bake_and_half_in_one_merge(models, tmp_path):
    vae = {k[len(VAE_PREFIX):]: v * 2 for k, v in load(models / "c.safetensors").items() if k.startswith(VAE_PREFIX)}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", multiplier=0.5,
                     vae=tmp_path / "vae.safetensors", half=True)
    out = load(merge_checkpoints(spec, tmp_path / "v.safetensors").path)
    a, b = load(models / "a.safetensors"), load(models / "b.safetensors")
    for key in a:
        assert out[key].dtype == (torch.float16 if a[key].is_floating_point() else a[key].dtype)
        if key.startswith(VAE_PREFIX):
            assert torch.equal(out[key], vae[key[len(VAE_PREFIX):]].half()), key
        elif key != "alphas_cumprod":
            assert torch.equal(out[key], (a[key] * 0.5 + b[key] * 0.5).half()), key


def test_different_architectures_are_refused_naming_both(models, tmp_path):
    spec = MergeSpec(models / "a.safetensors", models / "xl.safetensors")
    with pytest.raises(ConversionFailed, match="a.safetensors is SD 1.x but xl.safetensors is SDXL"):
        merge_checkpoints(spec, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_inpainting_a_merges_the_first_four_input_channels(tmp_path):
    write_single_file(tmp_path / "inp.safetensors", Architecture("sd1", inpainting=True), seed=5)
    write_single_file(tmp_path / "b.safetensors", Architecture("sd1"), seed=6)
    spec = MergeSpec(tmp_path / "inp.safetensors", tmp_path / "b.safetensors", multiplier=0.4)
    result = merge_checkpoints(spec, tmp_path / "out.safetensors")
    a, b, out = load(tmp_path / "inp.safetensors"), load(tmp_path / "b.safetensors"), load(result.path)
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    assert out[key].shape[1] == 9
    assert torch.equal(out[key][:, :4], a[key][:, :4] * 0.6 + b[key] * 0.4)
    assert torch.equal(out[key][:, 4:], a[key][:, 4:])
    assert any("first 4 channels" in note for note in result.notes)
    reverse = MergeSpec(tmp_path / "b.safetensors", tmp_path / "inp.safetensors")
    with pytest.raises(ConversionFailed, match="A must be the inpainting model"):
        merge_checkpoints(reverse, tmp_path / "rev.safetensors")


def test_merged_checkpoint_loads_and_generates(models, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    spec = MergeSpec(models / "a.safetensors", models / "b.safetensors", multiplier=0.5)
    result = merge_checkpoints(spec, ckpts / "merged.safetensors")
    assert (ckpts / "merged.json").is_file()  # A's sidecar (tiny configs) came along
    easel = make_easel(tmp_path, ckpts)
    try:
        out = easel.generate(GenerationRequest(prompt="a boat", steps=2, width=64, height=64, seed=1,
                                               sampler_name="Euler", checkpoint="merged.safetensors",
                                               save_images=False))
        pixels = np.asarray(out.images[0]).astype(np.float32)
        assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all() and pixels.std() > 0
        assert f"Model hash: {result.autov2}" in out.infotexts[0]
    finally:
        easel.close()


def test_merge_tab_queues_a_job_and_shows_the_result(models, tmp_path):
    import shutil

    import gradio as gr

    from webui.ui.models_tools import build_convert, build_merge, follow, submit_merge

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("a.safetensors", "a.json", "b.safetensors", "b.json"):
        shutil.copy(models / name, ckpts / name)
    easel = make_easel(tmp_path, ckpts)
    try:
        with gr.Blocks():  # the sub-tabs build with real Gradio components
            build_convert(easel)
            build_merge(easel)
        jobs = []

        def submit():
            jobs.append(submit_merge(easel, "a.safetensors", "b.safetensors", multiplier=0.25, name="ui-merge"))
            return jobs[0]

        updates = list(follow(easel, submit))
        assert jobs[0].kind == "merge" and jobs[0].state.value == "done"
        target = easel.paths.model_dir("checkpoint") / "ui-merge.safetensors"
        assert target.is_file() and f"sha256 {sha(target)}" in updates[-1][1]
        assert "ui-merge.safetensors" in [c.name for c in easel.models.checkpoints()]
        # a name that is not an installed model is refused before anything is queued
        before = len(easel.queue.jobs())
        error = list(follow(easel, lambda: submit_merge(easel, "a.safetensors", "/etc/passwd")))[-1][1]
        assert "model B" in error and "not installed" in error and "easel-error" in error
        assert len(easel.queue.jobs()) == before
        error = list(follow(easel, lambda: submit_merge(easel, "a.safetensors", "b.safetensors",
                                                        name="ui-merge")))[-1][1]
        assert "already exists" in error
    finally:
        easel.close()
