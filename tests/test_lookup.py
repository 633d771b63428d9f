"""Every model library keeps the one `find()` contract of webui/model_manager/lookup.py.

Each library is built over real files of its kind, as app.build() builds it, and asked for a
known model by every name a user or an AUTOMATIC1111 client may hold, and for unknown and
misspelt names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file

from webui.devices import device_config
from webui.features.controlnet.models import ControlNetError, ControlNetLibrary
from webui.features.embeddings import EmbeddingLibrary
from webui.features.ip_adapter import IPAdapterError, IPAdapterLibrary
from webui.features.lora import LoraError, LoraLibrary
from webui.features.upscalers import UPSCALER_KINDS, UpscaleError, Upscalers
from webui.features.upscalers.tiny import write_tiny_esrgan
from webui.model_manager.architecture import Architecture
from webui.model_manager.lookup import ModelNotFound, without_hash
from webui.model_manager.manager import ModelManager
from webui.model_manager.registry import ModelNotFoundError
from webui.model_manager.tiny import write_single_file
from webui.model_manager.vae import VaeLibrary, VaeNotFoundError
from webui.paths import Paths
from webui.settings import SettingsStore


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


@dataclass
class Libraries:
    models: ModelManager
    vaes: VaeLibrary
    loras: LoraLibrary
    embeddings: EmbeddingLibrary
    controlnets: ControlNetLibrary
    ip_adapters: IPAdapterLibrary
    upscalers: Upscalers


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Libraries:
    """Every library with one model in a subfolder, written with that kind's real key names."""
    root = tmp_path_factory.mktemp("lookup")
    ckpts = root / "ckpts"
    write_single_file(ckpts / "sub" / "Tiny-Checkpoint.safetensors", Architecture("sd1"), seed=1)
    models = root / "models"
    _save(models / "VAE" / "sub" / "Tiny-Vae.safetensors", {"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)})
    _save(models / "Lora" / "sub" / "Tiny-Lora.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)})
    _save(models / "embeddings" / "sub" / "Tiny-Embedding.safetensors", {"emb_params": torch.zeros(1, 768)})
    _save(models / "ControlNet" / "sub" / "Tiny-Control.safetensors", {
        "control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
        "control_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768)})
    _save(models / "ipadapter" / "sub" / "Tiny-Adapter.safetensors", {
        "image_proj.proj.weight": torch.zeros(3072, 1024), "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)})
    write_tiny_esrgan(models / "ESRGAN" / "sub" / "Tiny-Upscaler.safetensors")
    paths = Paths(models_dir=models, outputs_dir=root / "outputs", data_dir=root / "data", ckpt_dirs=[ckpts])
    paths.ensure()
    manager = ModelManager(paths, SettingsStore(paths.config_file), device_config("cpu"))
    manager.refresh()
    return Libraries(
        models=manager,
        vaes=VaeLibrary([paths.model_dir("vae")], paths.checkpoint_dirs(), manager.hashes,
                        paths.cache_dir / "vae_preferences.json"),
        loras=LoraLibrary(paths.lora_folders(), manager.hashes),
        embeddings=EmbeddingLibrary(paths.embedding_folders(), manager.hashes),
        controlnets=ControlNetLibrary([paths.model_dir("controlnet")]),
        ip_adapters=IPAdapterLibrary([paths.model_dir("ipadapter")],
                                     [paths.model_dir("ipadapter"), paths.model_dir("clip_vision")]),
        upscalers=Upscalers(lambda: {kind: [paths.model_dir(kind)] for kind in UPSCALER_KINDS}, torch.device("cpu")))


# kind -> (the library's find, the stem of its one model, the folder the name is relative to, the library's own error)
LIBRARIES: dict[str, tuple[Callable[[Libraries], Callable[[str], Any]], str, str, type[Exception] | None]] = {
    "checkpoint": (lambda a: a.models.find, "Tiny-Checkpoint", "", ModelNotFoundError),
    "checkpoint registry": (lambda a: a.models.registry.find, "Tiny-Checkpoint", "", ModelNotFoundError),
    "VAE": (lambda a: a.vaes.find, "Tiny-Vae", "VAE", VaeNotFoundError),
    "LoRA": (lambda a: a.loras.find, "Tiny-Lora", "Lora", LoraError),
    "embedding": (lambda a: a.embeddings.find, "Tiny-Embedding", "embeddings", None),
    "ControlNet": (lambda a: a.controlnets.find, "Tiny-Control", "ControlNet", ControlNetError),
    "IP-Adapter": (lambda a: a.ip_adapters.find, "Tiny-Adapter", "ipadapter", IPAdapterError),
    "upscaler": (lambda a: a.upscalers.find, "Tiny-Upscaler", "ESRGAN", UpscaleError),
}


def _path_of(found: Any) -> Path:
    """Every library returns its own record (an info object with .path, or the file's Path)."""
    return found if isinstance(found, Path) else found.path


@pytest.mark.parametrize("kind", LIBRARIES)
def test_known_model_is_found_by_every_name(app, kind):
    get_find, stem, _, _ = LIBRARIES[kind]
    find = get_find(app)
    found = find(stem)
    assert found is not None
    path = _path_of(found)
    assert path.name == f"{stem}.safetensors" and path.is_file()
    names = [stem, f"{stem}.safetensors", f"sub/{stem}", f"sub/{stem}.safetensors", f"sub\\{stem}.safetensors",
             f"{stem} [0123abcd]", f"  {stem}  ", stem.lower(), stem.upper() + ".SAFETENSORS"]
    for name in names:
        assert _path_of(find(name)) == path, f"{kind}: {name!r}"


@pytest.mark.parametrize("kind", LIBRARIES)
def test_unknown_name_raises_model_not_found_naming_it_and_the_close_choices(app, kind):
    get_find, stem, where, own_error = LIBRARIES[kind]
    find = get_find(app)
    with pytest.raises(ModelNotFound) as caught:
        find("no-such-model")
    error = caught.value
    assert error.user_facing is True and isinstance(error, LookupError)
    assert error.name == "no-such-model" and error.kind
    message = str(error)
    assert "'no-such-model' not found" in message and error.kind in message
    assert stem in message  # what is installed instead
    if own_error is not None:  # older `except` clauses of that library keep catching it
        assert isinstance(error, own_error)

    misspelt = stem.replace("Tiny", "Tinny")
    with pytest.raises(ModelNotFound) as caught:
        find(misspelt)
    close = caught.value.close  # the names as the library lists them ("sub/x.safetensors", "x" ...)
    assert len(close) == 1 and stem in close[0] and f"did you mean {close[0]!r}?" in str(caught.value)


def test_find_never_returns_none_for_builtin_or_empty_names(app):
    """The upscaler's built-ins are not model files, and an empty name is no name: both raise, neither is None."""
    for find in (app.upscalers.find, app.loras.find, app.vaes.find, app.models.find):
        for name in ("Lanczos", ""):
            with pytest.raises(ModelNotFound):
                find(name)


def test_lora_tag_naming_no_file_is_still_a_warning(app):
    """prompt planning treats LoraError as a warning; the contract's error is one."""
    with pytest.raises(LoraError, match="'missing-lora' not found"):
        app.loras.load("missing-lora")


def test_a_library_without_files_says_where_they_go(tmp_path):
    from webui.features.lora import LoraLibrary
    from webui.model_manager.hashing import HashCache

    folder = tmp_path / "Lora"
    library = LoraLibrary([folder], HashCache(tmp_path / "hashes.json"))
    with pytest.raises(ModelNotFound, match=r"\(none installed in .*Lora\)"):
        library.find("anything")


def test_without_hash():
    assert without_hash("model.safetensors [0123456789]") == "model.safetensors"
    assert without_hash("model") == "model"
    assert without_hash("[weird]") == "[weird]"
