"""Write LoRA files in the layouts people publish, for a loaded model.

Used by the tests and the benchmark to make real files (random low-rank updates) that
go through the same reading code as downloaded LoRAs. Layouts:
- "kohya": `lora_unet_<module>` named the diffusers way for SD 1.x/2.x and the original
  (SGM) way for SDXL, as kohya-ss writes them; `lora_te_` / `lora_te1_` / `lora_te2_`.
- "peft": `unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.<module>...`
  (scale 1: the update is stored pre-scaled).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model_manager.convert import _apply, _sorted, unet_rules
from .lora import _text_module_name


def _unet_name(model, name: str, layout: str) -> str:
    if layout == "peft":
        return f"unet.{name}"
    if model.architecture.is_sdxl:
        original = _apply(name + ".", _sorted(unet_rules(model.configs["unet"]), forward=False), forward=False)
        return "lora_unet_" + original.rstrip(".").replace(".", "_")
    return "lora_unet_" + name.replace(".", "_")


def _text_name(model, component: str, name: str, layout: str) -> str:
    file_name = _text_module_name(model.text_encoders[component], name)
    if layout == "peft":
        return f"{component}.{file_name}"
    if len(model.architecture.text_encoders) == 1 and component == "text_encoder":
        return "lora_te_" + file_name.replace(".", "_")
    index = 1 if component == "text_encoder" else 2
    return f"lora_te{index}_" + file_name.replace(".", "_")


def random_lora_tensors(model, rank: int = 4, seed: int = 0, alpha: float | None = None, scale: float = 0.5,
                        layout: str = "kohya", text_encoder: bool = True,
                        match: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn2.to_v", "attn2.to_out.0",
                                                  "proj_in", "q_proj", "v_proj")) -> dict[str, torch.Tensor]:
    """Random low-rank updates for the model's attention layers (and text encoder q/v)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    modules = [("unet", n, m) for n, m in model.unet.named_modules()]
    if text_encoder:
        modules += [(c, n, m) for c in model.architecture.text_encoders for n, m in model.text_encoders[c].named_modules()]
    for component, name, module in modules:
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or not name.endswith(match):
            continue
        out_features, in_features = module.weight.shape[0], module.weight.shape[1]
        kernel = tuple(module.weight.shape[2:])
        down = torch.randn((rank, in_features, *kernel), generator=generator) * scale
        up = torch.randn((out_features, rank, *([1] * len(kernel))), generator=generator) * scale
        key = _unet_name(model, name, layout) if component == "unet" else _text_name(model, component, name, layout)
        if layout == "peft":
            factor = (alpha / rank) if alpha is not None else 1.0
            tensors[f"{key}.lora_A.weight"] = down
            tensors[f"{key}.lora_B.weight"] = up * factor
        else:
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            if alpha is not None:
                tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    return tensors


def write_lora(path: Path, model, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_lora_tensors(model, **kwargs), str(path), metadata={"ss_network_module": "networks.lora"})
    return path
