"""Model families are adapters: the registry finds them, each answers for its own models, and the
engine's core never names a family."""
import ast
from pathlib import Path

import pytest
import torch

from webui import families
from webui.model_manager.architecture import Architecture
from webui.model_manager.detect import detect

CORE = Path(__file__).resolve().parent.parent / "webui" / "core"


def test_the_stable_diffusion_and_flux_families_are_registered():
    assert families.names() == ("flux-dev", "flux-schnell", "flux-kontext", "sd1", "sd2", "sd3", "sd35-medium",
                                "sd35-large", "sd35-large-turbo", "sdxl", "sdxl-refiner", "zimage-turbo", "zimage")
    assert [f.label for f in families.all_families()] == ["Flux.1 dev", "Flux.1 schnell", "Flux.1 Kontext dev",
                                                          "SD 1.x", "SD 2.x", "SD 3 Medium", "SD 3.5 Medium",
                                                          "SD 3.5 Large", "SD 3.5 Large Turbo", "SDXL", "SDXL refiner",
                                                          "Z-Image Turbo", "Z-Image"]


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="known: flux-dev, flux-schnell, flux-kontext, sd1, sd2, sd3, .*sdxl, sdxl-refiner, zimage-turbo, zimage"):
        Architecture("flux")


@pytest.mark.parametrize("name, encoders, size, v_size", [
    ("sd1", ("text_encoder",), 512, 512), ("sd2", ("text_encoder",), 512, 768),
    ("sdxl", ("text_encoder", "text_encoder_2"), 1024, 1024), ("sdxl-refiner", ("text_encoder_2",), 1024, 1024)])
def test_each_adapter_answers_for_its_models(name, encoders, size, v_size):
    family = families.get(name)
    assert family.text_encoders == encoders
    assert Architecture(name).default_size == size
    assert Architecture(name, "v_prediction").default_size == v_size
    assert family.latent.channels == 4 and len(family.latent.preview_rgb) == 4
    assert len(family.ays_sigmas) == 11 and family.ays_sigmas[0] > family.ays_sigmas[-1]


def test_sdxl_size_conditioning_and_refiner_aesthetic_score():
    positive, negative = families.get("sdxl").extra_conditioning(96, 64)
    assert positive.tolist() == [[64, 96, 0, 0, 64, 96]] and torch.equal(positive, negative)
    positive, negative = families.get("sdxl-refiner").extra_conditioning(96, 64)
    assert positive.tolist() == [[64, 96, 0, 0, 6.0]] and negative.tolist() == [[64, 96, 0, 0, 2.5]]
    assert families.get("sd1").extra_conditioning(64, 64) == (None, None)
    kwargs = families.get("sdxl").denoiser_kwargs(torch.zeros(1, 8), positive)
    assert set(kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    assert families.get("sd1").denoiser_kwargs(None, None) == {}


def test_clip_skip_layers_per_family():
    assert families.get("sd1").layer_choice(1) == families.LayerChoice(1, True)
    assert families.get("sd1").layer_choice(2) == families.LayerChoice(2, True)
    assert families.get("sd2").layer_choice(1) == families.LayerChoice(2, True)
    assert families.get("sdxl").layer_choice(1) == families.LayerChoice(2, False)


def test_detection_asks_the_adapters():
    unet = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 2048)}
    for family in families.all_families():
        if not family.marker_keys:  # detected from their own layout (detect_file), e.g. Flux
            continue
        shapes = dict(unet, **{family.marker_keys[0]: (8,)})
        assert detect(shapes).architecture.family == family.name
        assert detect(shapes).prediction_uncertain == family.prediction_uncertain
    assert detect(unet).architecture.family == "sdxl"  # UNet-only: its encoders and VAE are companion files
    sd2_unet = dict(unet)
    sd2_unet["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = (320, 1024)
    with pytest.raises(ValueError, match="SD 2.x UNet but no text encoder"):
        detect(sd2_unet)


def _string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)}


def test_core_never_names_a_family():
    """The engine asks the adapter; a family name in webui/core would be a branch on it."""
    names = set(families.names())
    offenders = {p.name: sorted(_string_literals(p) & names) for p in CORE.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_adapter_says_what_a_checkpoint_is_built_from():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from webui.model_manager.architecture import configs_for

    sdxl = families.get("sdxl")
    assert sdxl.components() == ("unet", "vae", "text_encoder", "text_encoder_2")
    assert families.get("sdxl-refiner").components() == ("unet", "vae", "text_encoder_2")
    configs = configs_for(Architecture("sdxl"))
    with torch.device("meta"):
        assert isinstance(sdxl.module_factory("unet", configs["unet"])(), UNet2DConditionModel)
        assert isinstance(sdxl.module_factory("vae", configs["vae"])(), AutoencoderKL)
        assert isinstance(sdxl.module_factory("text_encoder_2", configs["text_encoder_2"])(),
                          CLIPTextModelWithProjection)


def test_the_denoiser_is_called_the_family_way():
    calls = []

    def module(x, t, encoder_hidden_states=None, return_dict=True, **kwargs):
        calls.append((encoder_hidden_states, return_dict, kwargs))
        return (x * 2,)

    x = torch.ones(1, 4, 2, 2)
    out = families.get("sd1").call_denoiser(module, x, torch.tensor([1.0]), torch.zeros(1, 77, 8), {"k": 1})
    assert torch.equal(out, x * 2) and calls[0][1:] == (False, {"k": 1}) and calls[0][0].shape == (1, 77, 8)
