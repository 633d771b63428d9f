"""The model library: thousands of files index quickly, a second start reuses the index, a changed file
is re-read and re-hashed, removed ones drop out, and header metadata (kohya, modelspec) is shown."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.model_manager.hashing import HashCache
from webui.model_manager.library import ModelLibrary
from webui.paths import Paths

N_FILES = 2000


def _paths(root: Path) -> Paths:
    paths = Paths(models_dir=root / "models", outputs_dir=root / "outputs", data_dir=root / "data",
                  extensions_dir=root / "ext")
    paths.ensure()
    return paths


def _library(paths: Paths) -> ModelLibrary:
    """A new library object, as a fresh start of the app makes."""
    return ModelLibrary.for_paths(paths, HashCache(paths.cache_dir / "hashes.json"))


def _lora(path: Path, value: float = 0.0, metadata: dict[str, str] | None = None, width: int = 768) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.full((4, width), value),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)}
    save_file(tensors, str(path), metadata=metadata or {})
    return path


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """~2000 small model files across kinds and subfolders."""
    root = tmp_path_factory.mktemp("library")
    paths = _paths(root)
    models = paths.models_dir
    small = {"emb_params": torch.zeros(1, 768)}
    for i in range(N_FILES):
        if i % 4 == 0:
            target = models / "embeddings" / f"set{i % 7}" / f"emb{i:04d}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_file(small, str(target))
        else:
            _lora(models / "Lora" / f"group{i % 13}" / f"lora{i:04d}.safetensors", float(i))
    return root, paths


def test_two_thousand_files_index_once_and_reuse(many):
    root, paths = many
    cold_library = _library(paths)
    t0 = time.perf_counter()
    cold = cold_library.refresh()
    cold_s = time.perf_counter() - t0
    assert cold["entries"] == N_FILES and cold["read"] == N_FILES
    assert (paths.cache_dir / "library.json").is_file()

    warm_library = _library(paths)  # a second start: reads the index, stats the files, reads no header
    t0 = time.perf_counter()
    warm = warm_library.refresh()
    warm_s = time.perf_counter() - t0
    assert warm["entries"] == N_FILES and warm["read"] == 0 and warm["removed"] == 0
    print(f"\nlibrary index {N_FILES} files: cold {cold_s:.2f} s, warm {warm_s:.2f} s")
    assert cold_s < 60 and warm_s < cold_s
    kinds = {e.kind for e in warm_library.entries()}
    assert kinds == {"lora", "embedding"}
    emb = next(e for e in warm_library.entries() if e.kind == "embedding")
    assert emb.architecture == "SD 1.x" and "/" in emb.name
    assert len(warm_library.search("lora0001")) == 1
    assert len(warm_library.search("", kind="embedding")) == N_FILES // 4
    # nothing was hashed by indexing
    assert not (paths.cache_dir / "hashes.json").exists()


def test_changed_file_is_reread_and_rehashed_removed_file_drops(tmp_path):
    paths = _paths(tmp_path)
    first = _lora(paths.models_dir / "Lora" / "a.safetensors", 1.0)
    gone = _lora(paths.models_dir / "Lora" / "b.safetensors", 2.0)
    library = _library(paths)
    entry = next(e for e in library.entries() if e.name == "a.safetensors")
    old = library.hash_now(entry)
    assert old == hashlib.sha256(first.read_bytes()).hexdigest()[:10]
    assert library.short_hash(entry) == old

    _lora(first, 3.0, metadata={"ss_output_name": "changed"})
    stat = first.stat()
    os.utime(first, (stat.st_atime, stat.st_mtime + 5))
    gone.unlink()
    again = _library(paths)
    scan = again.refresh()
    assert scan == {**scan, "entries": 1, "read": 1, "removed": 1}
    entry = again.entries()[0]
    assert entry.training["output name"] == "changed"
    assert again.short_hash(entry) is None  # the cached hash no longer matches the file
    new = again.hash_now(entry)
    assert new == hashlib.sha256(first.read_bytes()).hexdigest()[:10] and new != old


def test_metadata_architecture_and_folders(tmp_path, tiny_ckpt_dir):
    paths = _paths(tmp_path)
    models = paths.models_dir
    frequency = {"10_cat": {"cat": 10, "blue eyes": 4}, "5_dog": {"cat": 1, "dog": 5}}
    _lora(models / "Lora" / "styles" / "kohya.safetensors", metadata={
        "ss_base_model_version": "sdxl_base_v1-0", "ss_num_epochs": "8", "ss_resolution": "(1024, 1024)",
        "ss_tag_frequency": json.dumps(frequency), "modelspec.title": "Blue Cat",
        "modelspec.trigger_phrase": "bluecat style", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    _lora(models / "Lora" / "plain.safetensors", width=1024)
    shutil.copy(tiny_ckpt_dir / "tiny-sd1.safetensors", models / "Stable-diffusion" / "tiny-sd1.safetensors")
    shutil.copy(tiny_ckpt_dir / "tiny-sdxl.safetensors", models / "Stable-diffusion" / "tiny-sdxl.safetensors")
    (models / "Stable-diffusion" / "tiny-sd1.png").write_bytes(b"\x89PNG not really")
    pipe = models / "Stable-diffusion" / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    save_file({"w": torch.ones(2)}, str(pipe / "unet" / "diffusion_pytorch_model.safetensors"))
    (models / "insightface" / "antelopev2").mkdir(parents=True)
    (models / "insightface" / "antelopev2" / "glintr100.onnx").write_bytes(b"onnx")
    (models / "ESRGAN" / "4x.pth").write_bytes(b"not read")

    library = _library(paths)
    by_name = {e.name: e for e in library.entries()}
    kohya = by_name["styles/kohya.safetensors"]
    assert kohya.kind == "lora" and kohya.architecture == "SDXL"
    assert kohya.trigger_words[:3] == ["bluecat style", "cat", "dog"] and "blue eyes" in kohya.trigger_words
    assert kohya.training["epochs"] == "8" and kohya.training["resolution"] == "(1024, 1024)"
    assert kohya.modelspec["title"] == "Blue Cat" and kohya.title == "Blue Cat"
    assert "ss_tag_frequency" not in kohya.metadata and kohya.metadata["ss_num_epochs"] == "8"
    assert by_name["plain.safetensors"].architecture == "SD 2.x"
    assert by_name["tiny-sd1.safetensors"].architecture == "SD 1.x"
    assert by_name["tiny-sdxl.safetensors"].architecture == "SDXL"
    assert library.preview(by_name["tiny-sd1.safetensors"]).name == "tiny-sd1.png"
    assert by_name["pipe"].format == "diffusers" and by_name["pipe"].architecture == "SDXL"
    assert not any("unet" in name for name in by_name)  # a diffusers folder is one entry
    assert by_name["antelopev2"].kind == "insightface" and by_name["antelopev2"].format == "pack"
    assert by_name["4x.pth"].kind == "esrgan" and by_name["4x.pth"].format == "pickle"
    assert [e.name for e in library.search("blue eyes")] == ["styles/kohya.safetensors"]
    assert [e.name for e in library.search("sdxl", kind="checkpoint")] == ["pipe", "tiny-sdxl.safetensors"]


def test_background_hashing_fills_the_cache_and_stops(tmp_path):
    paths = _paths(tmp_path)
    files = [_lora(paths.models_dir / "Lora" / f"l{i}.safetensors", float(i)) for i in range(5)]
    library = _library(paths)
    library.start_background()
    assert library.wait_idle(30)
    for path in files:
        entry = next(e for e in library.entries() if e.path == str(path))
        assert library.short_hash(entry) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert library.pending_hashes() == []
    # a big file: stopping abandons its hash part-way and the thread ends
    big = paths.models_dir / "VAE" / "big.safetensors"
    save_file({"w": torch.zeros(64 << 20)}, str(big))  # 256 MiB
    library = _library(paths)
    library.start_background()
    deadline = time.monotonic() + 10
    while library.hashing is None and time.monotonic() < deadline:
        time.sleep(0.01)
    library.stop()
    assert library.wait_idle(5)
    assert library.short_hash(next(e for e in library.entries() if e.path == str(big))) is None


def test_library_tab_and_vae_picker_in_gradio(tmp_path, tiny_ckpt_dir):
    """The Library sub-tab and the top bar's VAE dropdown, built in real Gradio Blocks; their handlers
    are called as Gradio calls them."""
    import gradio as gr

    from tests.conftest import make_easel
    from webui.ui.models_library import build_library, build_vae_picker

    easel = make_easel(tmp_path, tiny_ckpt_dir)
    try:
        _lora(easel.paths.model_dir("lora") / "cat.safetensors",
              metadata={"ss_tag_frequency": json.dumps({"1_x": {"tabby": 3}})})
        save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(easel.paths.model_dir("vae") / "v.safetensors"))
        with gr.Blocks() as blocks:
            picker = build_vae_picker(easel)
            build_library(easel)
        assert picker.elem_id == "setting_sd_vae" and picker.choices[0][0] == "Automatic"
        fns = {f.name: f.fn for f in blocks.fns.values()}
        rows, paths, status = fns["fill"]("tabby", "All")
        assert [r[:2] for r in rows] == [["cat.safetensors", "lora"]] and rows[0][5] == "hashing…"
        assert rows[0][6] == "tabby" and "1 model(s)" in status
        rows, paths, _ = fns["fill"]("", "checkpoint")
        assert {r[0] for r in rows} == {"tiny-sd1.safetensors", "tiny-sdxl.safetensors"}
        sd1 = paths[[r[0] for r in rows].index("tiny-sd1.safetensors")]
        selected, detail, preview, metadata, vae_update, storage_update, set_vae, set_storage, _ = fns["choose"](
            paths, gr.SelectData(None, {"index": [paths.index(sd1), 0], "value": "tiny-sd1.safetensors"}))
        assert selected == sd1 and "SD 1.x" in detail and "not hashed yet" in detail
        assert vae_update["visible"] is True and "v.safetensors" in vae_update["choices"]
        assert storage_update == {"__type__": "update", "visible": True, "value": "Automatic"}
        assert "Automatic (default)" in detail and set_vae["visible"] is True and set_storage["visible"] is True
        detail, note = fns["do_set_storage"](sd1, "fp8_e4m3fn")
        assert easel.models.storage_choices.get("tiny-sd1.safetensors") == "fp8_e4m3fn"
        assert "fp8_e4m3fn (this checkpoint)" in detail and "fp8_e4m3fn" in note
        assert easel.models.weight_storage("tiny-sdxl.safetensors") == "Automatic"  # the other one keeps its own
        _, refused = fns["do_set_storage"](sd1, "fp9")
        assert "fp9" in refused and easel.models.storage_choices.get("tiny-sd1.safetensors") == "fp8_e4m3fn"
        assert "Select a checkpoint" in fns["do_set_storage"](None, "fp16")[1]
        rows, _, _, detail, note = fns["do_hash"](sd1, "", "checkpoint")
        short = hashlib.sha256(Path(sd1).read_bytes()).hexdigest()[:10]
        assert short in note and short in detail and short in [r[5] for r in rows]
        detail, note = fns["do_set_vae"](sd1, "v.safetensors")
        assert easel.vaes.preference("tiny-sd1.safetensors") == "v.safetensors" and "v.safetensors" in detail
        updated = fns["choose"](["nothing"], gr.SelectData(None, {"index": [5, 0], "value": ""}))
        assert "Select a row" in updated[1] and updated[6]["visible"] is False and updated[7]["visible"] is False
        lora_paths = fns["fill"]("tabby", "All")[1]
        lora = fns["choose"](lora_paths, gr.SelectData(None, {"index": [0, 0], "value": "cat.safetensors"}))
        assert lora[4]["visible"] is False and lora[6]["visible"] is False  # a LoRA: no VAE or storage to set
        choose_vae = fns["choose_vae"]
        assert choose_vae("None")["value"] == "None" and easel.settings.get("sd_vae") == "None"
        assert choose_vae("missing.safetensors")["value"] == "None"  # refused, the setting kept
    finally:
        easel.close()
