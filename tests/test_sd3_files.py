"""SD3 / SD 3.5 files as people download them: Stability's single files (with and without the text encoders
inside), separate clip_l / clip_g / t5xxl files, T5 left out, GGUF; detection from names and shapes; the
shipped configs against diffusers' own recognition of Stability's layout."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from webui import families
from webui.app import AppOptions, build
from webui.core.request import GenerationRequest
from webui.families.sd3_layout import from_diffusers
from webui.model_manager.architecture import Architecture, configs_for
from webui.model_manager.detect import detect
from webui.model_manager.sidecar import SidecarOverrides, file_configs
from webui.model_manager.tiny_sd3 import write_sd3_folder, write_sd3_gguf, write_sd3_single_files

# diffusers' model types for Stability's files (single_file_utils.infer_diffusers_model_type)
DIFFUSERS_TYPES = {"sd3": "sd3", "sd35-medium": "sd35_medium", "sd35-large": "sd35_large"}


def _stability_rows(family: str):
    configs, adapter = configs_for(Architecture(family)), families.get(family)
    with torch.device("meta"):
        state = adapter.module_factory("transformer", configs["transformer"])().state_dict()
    return configs, state, from_diffusers(state, configs["transformer"], "model.diffusion_model.")


@pytest.mark.parametrize("family", ["sd3", "sd35-medium", "sd35-large"])
def test_the_shipped_configs_are_what_diffusers_recognises_and_the_layout_round_trips(family):
    from diffusers.loaders.single_file_utils import (convert_sd3_transformer_checkpoint_to_diffusers,
                                                     infer_diffusers_model_type)

    configs, state, stability = _stability_rows(family)
    shapes = {k: tuple(v.shape) for k, v in stability.items()}
    assert infer_diffusers_model_type(stability) == DIFFUSERS_TYPES[family]
    assert detect(shapes).architecture == Architecture(family)
    assert detect({k.removeprefix("model.diffusion_model."): v for k, v in shapes.items()}).architecture.family == family
    # our inverse, read back by diffusers' conversion, gives every tensor of the model, values included
    # (one number per output row is enough to follow each fused qkv and shift/scale swap)
    generator = torch.Generator().manual_seed(0)
    rows = {k: torch.randn(v.shape[0], generator=generator) for k, v in state.items()}
    written = from_diffusers(rows, configs["transformer"], "model.diffusion_model.")
    assert set(written) == set(stability)
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(dict(written))
    assert set(theirs) == set(state) and all(torch.equal(theirs[k], rows[k]) for k in rows)


def test_large_turbo_is_large_by_tensors_and_turbo_by_name():
    _, _, stability = _stability_rows("sd35-large")
    shapes = {k: tuple(v.shape) for k, v in stability.items()}
    assert file_configs(shapes, SidecarOverrides(), "sd3.5_large.safetensors")[0].architecture.family == "sd35-large"
    turbo = file_configs(shapes, SidecarOverrides(), "sd3.5_large_turbo.safetensors")[0].architecture
    assert turbo.family == "sd35-large-turbo" and turbo.label == "SD 3.5 Large Turbo"
    from webui.model_manager.library import guess_architecture

    assert guess_architecture("checkpoint", shapes, {}, "sd3.5_large_turbo.safetensors")[0] == "SD 3.5 Large Turbo"
    assert guess_architecture("checkpoint", shapes, {}, "sd3.5_large.safetensors")[0] == "SD 3.5 Large"
    defaults = families.get("sd35-large-turbo").ui_defaults
    assert defaults["steps"] == 4 and defaults["cfg_scale"] == 1.0
    # a name hint never crosses families: an SD 3.5 Medium called "turbo" stays Medium
    _, _, medium = _stability_rows("sd35-medium")
    named = file_configs({k: tuple(v.shape) for k, v in medium.items()}, SidecarOverrides(), "sd3.5_medium_turbo")
    assert named[0].architecture.family == "sd35-medium"


@pytest.fixture(scope="module")
def sd3_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3-files")
    source = write_sd3_folder(root / "folders" / "tiny-sd35-large", "sd35-large", seed=4)
    models = root / "models"
    write_sd3_single_files(source, models, "sd3.5_large-tiny")
    write_sd3_single_files(source, models, "sd3.5_large-tiny-incl-clips-t5", with_text_encoders=True)
    write_sd3_gguf(source, models, "sd3.5_large-tiny-Q8_0")
    return root


def _app(root, models=None):
    return build(AppOptions(models_dir=models or root / "models", ckpt_dirs=[root / "folders"],
                            outputs_dir=root / "out", data_dir=root / "data", device="cpu"))


def _generate(app, name):
    result = app.txt2img(GenerationRequest(prompt="a red chair", negative_prompt="blur", steps=3, width=64, height=64,
                                           seed=3, sampler_name="Euler", cfg_scale=4, checkpoint=name))
    return np.asarray(result.images[0], dtype=np.float64), result.infotexts[0]


def test_single_files_separate_encoders_and_gguf_give_the_folders_image(sd3_models):
    app = _app(sd3_models)
    try:
        names = [c.name for c in app.models.checkpoints()]
        assert sorted(names) == ["sd3.5_large-tiny-Q8_0.gguf", "sd3.5_large-tiny-incl-clips-t5.safetensors",
                                 "sd3.5_large-tiny.safetensors", "tiny-sd35-large"]
        images = {name: _generate(app, name)[0] for name in names}
        notes = app.models.get("sd3.5_large-tiny.safetensors").notes
        for part in ("text encoder from text_encoder/clip_l.safetensors",
                     "text encoder 2 from text_encoder/clip_g.safetensors",
                     "text encoder 3 from text_encoder/t5xxl_fp16.safetensors"):
            assert part in notes
        for name in ("sd3.5_large-tiny.safetensors", "sd3.5_large-tiny-incl-clips-t5.safetensors"):
            assert np.abs(images[name] - images["tiny-sd35-large"]).max() <= 2, name
        mse = ((images["sd3.5_large-tiny-Q8_0.gguf"] - images["tiny-sd35-large"]) ** 2).mean()
        psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-12))
        print(f"SD 3.5 GGUF Q8_0 vs fp32 folder: PSNR {psnr:.1f} dB")
        assert 30 < psnr < 100
        gguf = app.models.get("sd3.5_large-tiny-Q8_0.gguf")
        assert any("Q8_0" in note for note in gguf.notes)
        # every Q8_0 tensor of the file (the rows that fit its 32-value blocks) stays quantized in memory
        assert "GGUF kept quantized in memory: 6 layers" in gguf.notes
        assert sum(type(m).__name__ == "GGUFLinear" for m in gguf.unet.modules()) == 6
        entries = {e.name: e for e in app.library.entries() if e.kind == "checkpoint"}
        assert entries["sd3.5_large-tiny.safetensors"].architecture == "SD 3.5 Large"
        assert entries["tiny-sd35-large"].architecture == "SD 3.5 Large"
    finally:
        app.close()


def test_without_a_t5_file_it_runs_on_the_clips_and_says_so(sd3_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(sd3_models / "models", models)
    (models / "text_encoder" / "t5xxl_fp16.safetensors").unlink()
    shutil.rmtree(models / "text_encoder" / "t5_tokenizer")
    (models / "Stable-diffusion" / "sd3.5_large-tiny-incl-clips-t5.safetensors").unlink()
    app = _app(sd3_models, models)
    try:
        image, text = _generate(app, "sd3.5_large-tiny.safetensors")
        model = app.models.get("sd3.5_large-tiny.safetensors")
        assert "text_encoder_3" not in model.text_encoders and "T5: none" in text
        assert any("no text encoder 3 found" in note and "t5xxl" in note for note in model.notes)
        assert image.std() > 1
        (models / "text_encoder" / "clip_g.safetensors").unlink()  # the CLIPs are not optional
        from webui.model_manager.errors import ModelLoadError

        with pytest.raises(ModelLoadError, match=r"no text encoder 2 .*clip_g\*\.safetensors"):
            app.models.get("sd3.5_large-tiny-Q8_0.gguf")
    finally:
        app.close()
