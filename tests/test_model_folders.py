"""A model folder is one model: its component files are never listed as checkpoints (or LoRAs, or
ControlNets), and a folder Easel cannot load (Hunyuan-DiT's `transformer/`, a lone component, no vae/)
is shown once, with the reason, instead of as several checkpoints named `model`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from safetensors.torch import save_file
from starlette.testclient import TestClient

from webui.devices import device_config
from webui.features.controlnet.models import ControlNetLibrary
from webui.features.lora import LoraLibrary
from webui.model_manager.architecture import Architecture
from webui.model_manager.errors import ModelLoadError
from webui.model_manager.hashing import HashCache
from webui.model_manager.library import ModelLibrary
from webui.model_manager.registry import CheckpointInfo, ModelNotFoundError, scan
from webui.model_manager.tiny import write_diffusers_folder, write_single_file
from webui.model_manager.vae import VaeLibrary
from webui.paths import Paths, model_files

from conftest import make_easel


def _component(folder: Path, weights: str, cls: str, tensors: dict[str, torch.Tensor]) -> None:
    """One diffusers/transformers component: config.json beside its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    key = "architectures" if weights == "model.safetensors" else "_class_name"
    (folder / "config.json").write_text(json.dumps({key: [cls] if key == "architectures" else cls}))
    save_file(tensors, str(folder / weights))


def write_unknown_family(folder: Path) -> Path:
    """A pipeline folder with a transformer of a family Easel does not load (Hunyuan-DiT)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanDiTPipeline", "_diffusers_version": "0.32.0",
        "transformer": ["diffusers", "HunyuanDiT2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    _component(folder / "transformer", "diffusion_pytorch_model.safetensors", "HunyuanDiT2DModel",
               {"x_embedder.weight": torch.zeros(8, 16), "proj_out.weight": torch.zeros(16, 8)})
    _component(folder / "vae", "diffusion_pytorch_model.safetensors", "AutoencoderKL",
               {"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3)})
    _component(folder / "text_encoder", "model.safetensors", "CLIPTextModel",
               {"text_model.final_layer_norm.weight": torch.zeros(8)})
    _component(folder / "text_encoder_2", "model.safetensors", "T5EncoderModel",
               {"encoder.final_layer_norm.weight": torch.zeros(8)})
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    """A checkpoint folder with everything a user may drop into it."""
    root = tmp_path_factory.mktemp("folders") / "Stable-diffusion"
    write_single_file(root / "tiny-sd1.safetensors", Architecture("sd1"), seed=1)
    write_single_file(root / "more" / "tiny-sd1-b.safetensors", Architecture("sd1"), seed=2)  # a plain subfolder
    write_diffusers_folder(root / "sd1-diffusers", Architecture("sd1"), seed=1)
    write_unknown_family(root / "hunyuan")
    _component(root / "transformer-only", "diffusion_pytorch_model.safetensors", "FluxTransformer2DModel",
               {"x_embedder.weight": torch.zeros(8, 16)})
    no_vae = write_diffusers_folder(root / "no-vae", Architecture("sd1"), seed=1)
    for file in (no_vae / "vae").iterdir():
        file.unlink()
    (no_vae / "vae").rmdir()
    return root


def test_registry_lists_checkpoints_and_sets_unloadable_folders_aside(ckpts):
    found, unloadable = scan(ckpts)
    assert [c.name for c in found] == ["more/tiny-sd1-b.safetensors", "sd1-diffusers", "tiny-sd1.safetensors"]
    assert not any("model" == c.model_name or "diffusion_pytorch_model" in c.name for c in found)
    reasons = {u.name: u.reason for u in unloadable}
    assert set(reasons) == {"hunyuan", "no-vae", "transformer-only"}
    assert "HunyuanDiTPipeline" in reasons["hunyuan"] and "family Easel does not know" in reasons["hunyuan"]
    assert "SD 1.x" in reasons["hunyuan"] and "Flux.1 dev" in reasons["hunyuan"] and "SD 3.5" in reasons["hunyuan"]  # says what Easel does load
    assert "FluxTransformer2DModel component" in reasons["transformer-only"] and "not a whole model" in \
        reasons["transformer-only"]
    assert "vae/config.json" in reasons["no-vae"]


def test_the_loader_agrees_with_the_listing(ckpts):
    """What the registry calls loadable loads; what it sets aside with a reason is refused by the loader too."""
    from webui.model_manager.loader import load_checkpoint

    found, unloadable = scan(ckpts)
    diffusers = next(c for c in found if c.format == "diffusers")
    model = load_checkpoint(diffusers, device_config("cpu"), allow_pickle=False)
    assert model.configs.architecture.family == "sd1"
    for folder in unloadable:
        if (folder.path / "model_index.json").is_file():
            info = CheckpointInfo(folder.name, folder.path, "diffusers", 0, 0.0)
            with pytest.raises(ModelLoadError):
                load_checkpoint(info, device_config("cpu"), allow_pickle=False)


def test_asking_for_an_unloadable_folder_says_why(tmp_path, ckpts):
    easel = make_easel(tmp_path, ckpts)
    try:
        with pytest.raises(ModelNotFoundError, match="'hunyuan' is on disk but cannot be loaded: a HunyuanDiTPipeline"):
            easel.models.find("hunyuan")
        assert easel.models.find("sd1-diffusers").format == "diffusers"
        app = FastAPI()
        from webui.api import install

        install(app, easel)
        with TestClient(app) as client:
            listed = [m["filename"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert listed == ["more/tiny-sd1-b.safetensors", "sd1-diffusers", "tiny-sd1.safetensors"]
    finally:
        easel.close()


def test_models_library_shows_an_unloadable_folder_once_with_its_reason(tmp_path, ckpts):
    paths = Paths(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", data_dir=tmp_path / "data",
                  ckpt_dirs=[ckpts])
    paths.ensure()
    library = ModelLibrary.for_paths(paths, HashCache(paths.cache_dir / "hashes.json"))
    entries = {e.name: e for e in library.entries() if e.kind == "checkpoint"}
    assert set(entries) == {"tiny-sd1.safetensors", "more/tiny-sd1-b.safetensors", "sd1-diffusers", "hunyuan",
                            "transformer-only", "no-vae"}
    assert entries["hunyuan"].format == "diffusers" and entries["hunyuan"].architecture == "Hunyuan-DiT"
    assert entries["hunyuan"].unloadable.startswith("a HunyuanDiTPipeline folder of a model family")
    assert entries["sd1-diffusers"].architecture == "SD 1.x"
    assert entries["sd1-diffusers"].unloadable == "" and entries["tiny-sd1.safetensors"].unloadable == ""
    assert "not a whole model" in entries["transformer-only"].unloadable

    from webui.ui.models_library import _architecture

    assert _architecture(entries["hunyuan"]).startswith("Hunyuan-DiT · not loadable: a HunyuanDiTPipeline folder")
    assert "not loadable" not in _architecture(entries["sd1-diffusers"])


def test_component_files_are_not_models_of_other_kinds(tmp_path):
    """model_files does not walk into model folders: a diffusers ControlNet folder is one ControlNet, and a
    component folder dropped into models/Lora is no LoRA; a diffusers VAE folder's weights stay a VAE."""
    controlnets = tmp_path / "ControlNet"
    _component(controlnets / "control_canny_diffusers", "diffusion_pytorch_model.safetensors", "ControlNetModel",
               {"controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3)})
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)},
              str(controlnets / "control_depth.safetensors"))
    assert [i.name for i in ControlNetLibrary([controlnets]).all()] == ["control_canny_diffusers", "control_depth"]
    assert ControlNetLibrary([controlnets]).find("control_canny_diffusers").path.is_dir()

    loras = tmp_path / "Lora"
    _component(loras / "stray-text-encoder", "model.safetensors", "CLIPTextModel", {"x": torch.zeros(1)})
    (loras / "sub").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(loras / "sub" / "real.safetensors"))
    assert LoraLibrary([loras], HashCache(tmp_path / "h.json")).names() == ["real"]
    assert model_files([loras], (".safetensors",), inside_model_folders=True)[0].name == "model.safetensors"

    vaes = tmp_path / "VAE"
    _component(vaes / "sdxl-vae-fp16-fix", "diffusion_pytorch_model.safetensors", "AutoencoderKL",
               {"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)})
    library = VaeLibrary([vaes], [], HashCache(tmp_path / "h.json"), tmp_path / "prefs.json")
    assert library.find("sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors").parent.name == "sdxl-vae-fp16-fix"
