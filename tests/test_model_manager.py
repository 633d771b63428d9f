"""The shared model manager: scanning, names, switching, cache limit, refresh, --ckpt-dir."""

import pytest

from webui.core.request import GenerationRequest
from webui.model_manager.architecture import Architecture
from webui.model_manager.manager import NoCheckpointError
from webui.model_manager.registry import ModelNotFoundError
from webui.model_manager.tiny import write_single_file

from conftest import make_easel


def test_checkpoints_found_in_ckpt_dir_with_a1111_names(easel):
    names = [c.name for c in easel.models.checkpoints()]
    assert names == ["tiny-sd1.safetensors", "tiny-sdxl.safetensors"]
    model = easel.models.get("tiny-sd1")  # by stem, as infotext's "Model:" writes it
    title = easel.models.registry.title(model.info)
    assert title == f"tiny-sd1.safetensors [{model.sha256[:10]}]"
    assert easel.models.find(title).name == "tiny-sd1.safetensors"
    assert easel.models.find(model.sha256[:10]).name == "tiny-sd1.safetensors"  # by AutoV2 hash


def test_switching_keeps_only_the_limit_loaded(easel):
    easel.models.get("tiny-sd1.safetensors")
    easel.models.get("tiny-sdxl.safetensors")
    assert easel.models.loaded_names() == ["tiny-sdxl.safetensors"]
    easel.settings.update({"sd_checkpoints_limit": 2})
    easel.models.get("tiny-sd1.safetensors")
    assert sorted(easel.models.loaded_names()) == ["tiny-sd1.safetensors", "tiny-sdxl.safetensors"]
    cached = easel.models.get("tiny-sdxl.safetensors")
    assert easel.models.get("tiny-sdxl.safetensors") is cached  # cached switch: no reload
    assert easel.models.current is cached


def test_unloaded_models_release_their_tensors(easel):
    first = easel.models.get("tiny-sd1.safetensors")
    easel.models.get("tiny-sdxl.safetensors")
    assert next(first.unet.parameters()).is_meta  # weights dropped, not leaked


def test_refresh_sees_new_files_without_restart(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        write_single_file(app.paths.model_dir("checkpoint") / "sub" / "later.safetensors", Architecture("sd1"))
        assert "sub/later.safetensors" not in [c.name for c in app.models.checkpoints()]
        app.models.refresh()
        assert "sub/later.safetensors" in [c.name for c in app.models.checkpoints()]
        result = app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="later"))
        assert "Model: later" in result.infotexts[0]
    finally:
        app.close()


def test_no_checkpoint_message_says_where_to_put_one(tmp_path):
    from webui.app import AppOptions, build

    app = build(AppOptions(models_dir=tmp_path / "models", outputs_dir=tmp_path / "o", data_dir=tmp_path / "d",
                           device="cpu"))
    try:
        job = app.submit_txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64))
        job.wait(10)
        assert isinstance(job.error, NoCheckpointError)
        assert "Stable-diffusion" in str(job.error) and "--demo-model" in str(job.error)
    finally:
        app.close()


def test_changed_file_is_reloaded_and_rehashed(tmp_path):
    folder = tmp_path / "ck"
    write_single_file(folder / "m.safetensors", Architecture("sd1"), seed=1)
    app = make_easel(tmp_path, folder)
    try:
        first = app.models.get("m")
        write_single_file(folder / "m.safetensors", Architecture("sd1"), seed=2)
        app.models.refresh()
        second = app.models.get("m")
        assert second is not first and second.sha256 != first.sha256
    finally:
        app.close()


def test_unknown_name_lists_what_exists(easel):
    with pytest.raises(ModelNotFoundError, match="tiny-sd1.safetensors"):
        easel.models.find("does-not-exist")
