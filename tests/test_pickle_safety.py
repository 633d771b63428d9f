"""Pickle checkpoints: refused by default; with --allow-pickle only tensors load, code never runs."""
import json
import sys
import types

import pytest
import torch

from webui.devices import device_config
from webui.model_manager.architecture import Architecture
from webui.model_manager.convert import diffusers_to_checkpoint
from webui.model_manager.loader import ModelLoadError, load_checkpoint
from webui.model_manager.registry import scan_folder
from webui.model_manager.tiny import _state_dicts, build_tiny_components, sidecar_json


class Payload:
    """Runs a shell command when unpickled - what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def _tiny_tensors():
    configs, modules = build_tiny_components(Architecture("sd1"), seed=11)
    return configs, diffusers_to_checkpoint(_state_dicts(modules), configs)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    configs, tensors = _tiny_tensors()
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tensors, "payload": Payload(marker)}, path)
    (tmp_path / "evil.json").write_text(json.dumps(sidecar_json(configs)))
    info = scan_folder(tmp_path)[0]
    assert info.format == "pickle"

    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_checkpoint(info, device_config("cpu"), allow_pickle=False)
    assert not marker.exists()

    with pytest.raises(ModelLoadError, match="restricted unpickler"):
        load_checkpoint(info, device_config("cpu"), allow_pickle=True)
    assert not marker.exists()


def test_benign_pickle_with_lightning_callback_loads_when_allowed(tmp_path, monkeypatch):
    # old SD training checkpoints carry a PyTorch Lightning ModelCheckpoint object
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best = 1.0

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    configs, tensors = _tiny_tensors()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": tensors, "callbacks": {"ckpt": ModelCheckpoint()}, "global_step": 470000}, path)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)  # the loader must not need lightning installed
    (tmp_path / "old.json").write_text(json.dumps(sidecar_json(configs)))

    model = load_checkpoint(scan_folder(tmp_path)[0], device_config("cpu"), allow_pickle=True)
    expected = tensors["model.diffusion_model.out.2.weight"]
    assert torch.equal(model.unet.conv_out.weight, expected)
