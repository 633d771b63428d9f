"""Single-file (original) <-> diffusers key conversion, on real-size layouts and tiny weights."""
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.convert import (
    checkpoint_to_diffusers, diffusers_to_checkpoint, openclip_to_diffusers, openclip_to_original, unet_to_diffusers,
    unet_to_original, vae_to_diffusers, vae_to_original)
from webui.model_manager.loader import file_state_dict
from webui.model_manager.tiny import _state_dicts, build_tiny_components

# Parameter counts of the published models (UNet, VAE) - the shipped configs must build exactly these.
PUBLISHED_PARAMS = {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}
VAE_PARAMS = 83_653_863


def _meta_models(family):
    configs = configs_for(Architecture(family))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    return configs, unet, vae


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_real_size_layout_round_trips(family):
    configs, unet, vae = _meta_models(family)
    if family in PUBLISHED_PARAMS:
        assert sum(p.numel() for p in unet.parameters()) == PUBLISHED_PARAMS[family]
    assert sum(p.numel() for p in vae.parameters()) == VAE_PARAMS
    unet_keys = dict(unet.state_dict())
    original = unet_to_original(unet_keys, configs["unet"])
    back, leftover = unet_to_diffusers(original, configs["unet"])
    assert not leftover and set(back) == set(unet_keys)
    vae_keys = dict(vae.state_dict())
    back_vae, leftover_vae = vae_to_diffusers(vae_to_original(vae_keys, configs["vae"]), configs["vae"])
    assert not leftover_vae and set(back_vae) == set(vae_keys)


def test_sd1_original_key_names_match_the_published_layout():
    configs, unet, vae = _meta_models("sd1")
    original = unet_to_original(dict(unet.state_dict()), configs["unet"])
    # v1-5-pruned has 686 UNet tensors; these names exist in every SD 1.x file
    assert len(original) == 686
    for key in ("input_blocks.1.1.proj_in.weight", "input_blocks.3.0.op.weight", "middle_block.1.norm.weight",
                "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "out.2.weight",
                "input_blocks.4.0.skip_connection.weight", "time_embed.0.weight"):
        assert key in original, key
    vae_original = vae_to_original(dict(vae.state_dict()), configs["vae"])
    assert len(vae_original) == 248
    assert tuple(vae_original["encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert "decoder.up.3.upsample.conv.weight" in vae_original and "decoder.up.0.upsample.conv.weight" not in vae_original


def test_sdxl_original_key_names_match_the_published_layout():
    configs, unet, _ = _meta_models("sdxl")
    original = unet_to_original(dict(unet.state_dict()), configs["unet"])
    for key in ("label_emb.0.0.weight", "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight", "output_blocks.2.2.conv.weight"):
        assert key in original, key
    assert tuple(original["label_emb.0.0.weight"].shape) == (1280, 2816)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_tiny_checkpoint_round_trip_is_bit_identical(family):
    configs, modules = build_tiny_components(Architecture(family), seed=5)
    components = _state_dicts(modules)
    single = diffusers_to_checkpoint(components, configs)
    back, leftovers = checkpoint_to_diffusers(single, configs)
    assert not leftovers
    for name, tensors in components.items():
        assert set(back[name]) == set(tensors), name
        for key, value in tensors.items():
            assert torch.equal(back[name][key], value), (name, key)


def test_openclip_attention_is_split_and_joined_exactly():
    cfg = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
               max_position_embeddings=77, vocab_size=100, projection_dim=4, hidden_act="gelu")
    model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    tensors = file_state_dict(model)
    original = openclip_to_original(tensors, cfg)
    assert tuple(original["transformer.resblocks.1.attn.in_proj_weight"].shape) == (24, 8)
    assert tuple(original["text_projection"].shape) == (8, 4)  # used as x @ P in OpenCLIP
    back, leftover = openclip_to_diffusers(original, cfg)
    assert not leftover
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_plain_clip_file_keys_keep_the_text_model_level():
    model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                         num_hidden_layers=1, vocab_size=100))
    assert all(k.startswith("text_model.") for k in file_state_dict(model))
