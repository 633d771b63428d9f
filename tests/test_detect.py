"""Architecture detection from tensor names/shapes, sidecar overrides, and loading every variant."""
import json

import pytest
import torch
from safetensors.torch import save_file

from webui.devices import device_config
from webui.model_manager.architecture import Architecture
from webui.model_manager.detect import DetectionError, detect
from webui.model_manager.loader import ModelLoadError, load_checkpoint, read_shapes
from webui.model_manager.registry import scan_folder
from webui.model_manager.tiny import build_tiny_components, write_single_file

EXPECTED = {
    "sd1": Architecture("sd1"), "sdxl": Architecture("sdxl"), "refiner": Architecture("sdxl-refiner"),
    "sd1-inpaint": Architecture("sd1", inpainting=True), "sdxl-inpaint": Architecture("sdxl", inpainting=True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detects_architecture_from_header(tiny_variants_dir, name):
    detection = detect(read_shapes(tiny_variants_dir / f"{name}.safetensors"))
    assert detection.architecture == EXPECTED[name]
    assert not detection.prediction_uncertain


def test_sd2_family_detected_but_prediction_type_uncertain(tiny_variants_dir):
    detection = detect(read_shapes(tiny_variants_dir / "sd2v.safetensors"))
    assert detection.architecture.family == "sd2"
    assert detection.prediction_uncertain


def test_lora_and_vae_files_are_named_as_such(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(DetectionError, match="LoRA"):
        detect(read_shapes(lora))
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(vae))
    with pytest.raises(DetectionError, match="VAE"):
        detect(read_shapes(vae))


@pytest.mark.parametrize("name", ["sd1", "sd2v", "sdxl", "refiner", "sd1-inpaint", "sdxl-inpaint"])
@pytest.mark.parametrize("form", ["single", "diffusers"])
def test_every_variant_loads_with_identical_weights(tiny_variants_dir, name, form):
    items = {i.name: i for i in scan_folder(tiny_variants_dir)}
    info = items[f"{name}.safetensors" if form == "single" else f"{name}-diffusers"]
    model = load_checkpoint(info, device_config("cpu"), allow_pickle=False)
    expected_arch = Architecture("sd2", "v_prediction") if name == "sd2v" else EXPECTED[name]
    assert model.architecture == expected_arch
    _, reference = build_tiny_components(expected_arch, seed=3)
    for component, module in [("unet", model.unet), ("vae", model.vae), *model.text_encoders.items()]:
        ref = reference[component].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(ref[key], value), (component, key)


def test_json_sidecar_overrides_prediction_type(tmp_path):
    path = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["prediction_type"] = "v_prediction"
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    info = scan_folder(tmp_path)[0]
    model = load_checkpoint(info, device_config("cpu"), allow_pickle=False)
    assert model.architecture.prediction_type == "v_prediction"
    assert model.scheduler_config["prediction_type"] == "v_prediction"


def test_yaml_sidecar_is_translated_from_the_ldm_config(tmp_path):
    """An original inference config (LDM yaml) describes the UNet/VAE sizes and parameterization."""
    path = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    # keep only the text encoder in JSON; the yaml must supply UNet and VAE exactly
    path.with_suffix(".json").write_text(json.dumps({"components": {"text_encoder": sidecar["components"]["text_encoder"]}}))
    path.with_suffix(".yaml").write_text("""
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [1]
        num_res_blocks: 2
        channel_mult: [1, 2]
        num_heads: 2
        context_dim: 32
        norm_num_groups: 8
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig: {z_channels: 4, resolution: 64, in_channels: 3, out_ch: 3, ch: 16, ch_mult: [1, 1, 2, 2],
                   num_res_blocks: 1, attn_resolutions: [], norm_num_groups: 8}
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
""")
    model = load_checkpoint(scan_folder(tmp_path)[0], device_config("cpu"), allow_pickle=False)
    assert model.architecture == Architecture("sd1", "v_prediction")
    assert list(model.unet.config.block_out_channels) == [32, 64]
    assert list(model.vae.config.block_out_channels) == [16, 16, 32, 32]


def test_wrong_sidecar_sizes_give_a_clear_error(tmp_path):
    path = write_single_file(tmp_path / "m.safetensors", Architecture("sd1"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["components"]["unet"]["block_out_channels"] = [64, 128]
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="shape"):
        load_checkpoint(scan_folder(tmp_path)[0], device_config("cpu"), allow_pickle=False)


def _constant_unet(value: float):
    """A tiny UNet whose output is exactly `value` everywhere (all weights zero, output bias = value)."""
    configs, modules = build_tiny_components(Architecture("sd2"), seed=0)
    unet = modules["unet"]
    with torch.no_grad():
        for p in unet.parameters():
            p.zero_()
        unet.conv_out.bias.fill_(value)
    return unet


def test_v_prediction_probe_reads_the_models_answer():
    from webui.model_manager.loader import probe_v_prediction

    # an epsilon model at t=999 returns about its (mid-grey) input; a v model returns far below it
    assert probe_v_prediction(_constant_unet(0.5)) is False
    assert probe_v_prediction(_constant_unet(-1.5)) is True
