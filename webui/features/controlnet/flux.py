"""Flux.1 ControlNets: InstantX / Shakker-Labs (Union Pro) and XLabs, through diffusers' FluxControlNetModel.

A Flux ControlNet is a small Flux transformer whose block outputs are added to the base transformer's
blocks; it is not a UNet encoder, so it has its own path next to apply.py's residuals:
- **Files.** diffusers' layout (InstantX's and Shakker-Labs' `diffusion_pytorch_model.safetensors`,
  single or in a folder with its config.json) loads as is; XLabs' single files (BFL's `double_blocks.*`
  names, `pos_embed_input`, a pixel-space `input_hint_block`) are converted here, because diffusers reads
  XLabs ControlNets only from its own converted repositories and has no conversion function for them. The
  double blocks go through the family's own BFL table (`families/flux_layout.py`); the config is read
  from the tensors' shapes (width, heads, depth, union modes), the rotary axes from the base transformer.
- **Control image.** InstantX / Union take the control map's VAE latents, packed as the noise is; XLabs
  takes the pixels in [-1, 1] through its hint block (FluxControlNetPipeline's two branches), and its
  few blocks repeat over the base's blocks (`controlnet_blocks_repeat`).
- **Union.** The unit's `union_control_type` (sd-webui-controlnet's field: "Hard Edge", "Depth",
  "OpenPose", "Tile", plus "Blur", "Gray", "Low Quality") or, when "Unknown", the preprocessor's name,
  picks the mode index of InstantX's / Shakker-Labs' Union (canny 0, tile 1, depth 2, blur 3, pose 4,
  gray 5, low quality 6).
- **Each step** the family's `call_denoiser` hands the packed tokens, ids, timestep, guidance and text
  to `FluxControls` (the `transformer_control` keyword), which runs every active unit over the whole CFG
  batch and sums their block samples, as FluxMultiControlNetModel does. "ControlNet is more important"
  keeps the samples on the conditional rows only (the extension's cfg injection); "My prompt is more
  important" acts as Balanced, with a warning: the extension's soft injection (0.825 ** (12 - i) over a
  UNet's 13 residuals, shallow high-resolution layers weakest) has no counterpart across Flux's blocks of
  one width, and there is no original to follow (Forge runs no Flux ControlNet; diffusers' and InvokeAI's
  Flux ControlNets have no control mode), so none is made up here.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...core.request import FieldError, ValidationError
from .units import SCRIPT, ControlUnit

KIND = "flux"  # ControlNetInfo.kind of Flux ControlNet files
CLASS_NAME = "FluxControlNetModel"
# InstantX's / Shakker-Labs' Union modes (their model cards), by sd-webui-controlnet's union type names
UNION_MODES = {"hard edge": 0, "canny": 0, "tile": 1, "depth": 2, "blur": 3, "openpose": 4, "pose": 4, "gray": 5,
               "low quality": 6}
UNION_TYPES = ("Unknown", "Hard Edge", "Tile", "Depth", "Blur", "OpenPose", "Gray", "Low Quality")  # the UI's list
# the preprocessor's name says the type when the unit says "Unknown" (as the extension does)
_MODULE_MODES = (("canny", 0), ("lineart", 0), ("mlsd", 0), ("tile", 1), ("depth", 2), ("blur", 3),
                 ("openpose", 4), ("invert", 0))
PROMPT_MORE_IMPORTANT = 1  # units.CONTROL_MODES index of "My prompt is more important"
_XLABS_HINT = ["conv_in"] + [f"blocks.{i}" for i in range(6)] + ["conv_out"]  # input_hint_block.{0,2,..,14}


# ---- telling and reading the files --------------------------------------------------------------------


def is_flux_controlnet(shapes: dict[str, Any], saved: dict[str, Any] | None = None) -> bool:
    """diffusers' layout (`controlnet_x_embedder` + transformer blocks) or XLabs' (`double_blocks` +
    `controlnet_blocks`), or a folder whose config names FluxControlNetModel."""
    if (saved or {}).get("_class_name") == CLASS_NAME:
        return True
    diffusers = "controlnet_x_embedder.weight" in shapes and "transformer_blocks.0.attn.to_q.weight" in shapes
    xlabs = "double_blocks.0.img_attn.qkv.weight" in shapes and "controlnet_blocks.0.weight" in shapes
    return diffusers or xlabs


def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def xlabs_to_diffusers(tensors: dict[str, torch.Tensor], base: dict[str, Any]) -> dict[str, torch.Tensor]:
    """XLabs' ControlNet (x-flux `ControlNetFlux`) -> FluxControlNetModel's state dict."""
    from ...families.flux_layout import to_diffusers

    layers = _count(tensors, r"double_blocks\.(\d+)\.")
    config = {"num_layers": layers, "num_single_layers": 0, "guidance_embeds": "guidance_in.in_layer.weight" in tensors,
              "num_attention_heads": base.get("num_attention_heads", 24),
              "attention_head_dim": base.get("attention_head_dim", 128)}
    out, rest = to_diffusers(tensors, config)
    for key, value in rest.items():
        if key.startswith("input_hint_block."):
            index, name = key.split(".")[1:]
            out[f"input_hint_block.{_XLABS_HINT[int(index) // 2]}.{name}"] = value
        elif key.startswith("pos_embed_input."):
            out["controlnet_x_embedder." + key.split(".", 1)[1]] = value
        else:  # controlnet_blocks.N.* keep their names; anything else is reported as missing / unexpected
            out[key] = value
    return out


def controlnet_config(state: dict[str, torch.Tensor], base: dict[str, Any],
                      saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """FluxControlNetModel's config from the tensors (a folder's config.json, when there is one, wins)."""
    inner, in_channels = state["x_embedder.weight"].shape
    norm = next((v for k, v in state.items() if k.endswith("attn.norm_q.weight")), None)
    head = int(norm.shape[0]) if norm is not None else int(base.get("attention_head_dim", 128))
    hint = "input_hint_block.conv_out.weight" in state
    config = {"patch_size": 2 if hint else 1, "in_channels": int(in_channels),
              "num_layers": _count(state, r"transformer_blocks\.(\d+)\."),
              "num_single_layers": _count(state, r"single_transformer_blocks\.(\d+)\."),
              "attention_head_dim": head, "num_attention_heads": int(inner) // head,
              "joint_attention_dim": int(state["context_embedder.weight"].shape[1]),
              "pooled_projection_dim": int(state["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
              "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in state,
              "axes_dims_rope": list(base.get("axes_dims_rope", [16, 56, 56])),
              "num_mode": int(state["controlnet_mode_embedder.weight"].shape[0])
              if "controlnet_mode_embedder.weight" in state else None,
              "conditioning_embedding_channels": int(state["input_hint_block.conv_out.weight"].shape[0])
              if hint else None}
    config.update({k: v for k, v in (saved or {}).items() if k in config})
    return config


def build_flux_controlnet(tensors: dict[str, torch.Tensor], base: dict[str, Any], device: torch.device,
                          dtype: torch.dtype, saved: dict[str, Any] | None = None):
    """A FluxControlNetModel from either layout, on the base model's device and compute dtype."""
    from diffusers import FluxControlNetModel

    from .models import ControlNetError, load_fitting

    tensors = {k.removeprefix("controlnet."): v for k, v in tensors.items()}
    if "double_blocks.0.img_attn.qkv.weight" in tensors:
        tensors = xlabs_to_diffusers(tensors, base)
    if "x_embedder.weight" not in tensors:
        raise ControlNetError("not a Flux ControlNet file (no x_embedder / img_in)")
    config = controlnet_config(tensors, base, saved)
    if config["joint_attention_dim"] != base.get("joint_attention_dim") or \
            config["in_channels"] != 4 * 16:
        raise ControlNetError("this Flux ControlNet does not fit the loaded checkpoint (text or latent width)")
    with torch.device("meta"):
        model = FluxControlNetModel(**config)
    load_fitting(model, tensors, "Flux ControlNet", device, dtype)
    return model.eval().requires_grad_(False)


# ---- units of a request ----------------------------------------------------------------------------


def union_mode(unit: ControlUnit, index: int) -> int:
    """The Union mode index for a unit: its union type, else its preprocessor's name."""
    said = (unit.union_control_type or "unknown").strip().lower()
    if said in UNION_MODES:
        return UNION_MODES[said]
    if said.isdigit() and 0 <= int(said) <= 6:
        return int(said)
    module = unit.module.lower()
    found = next((mode for word, mode in _MODULE_MODES if word in module), None)
    if found is None:
        raise ValidationError([FieldError(f"alwayson_scripts.{SCRIPT}.args[{index}].union_control_type",
                                          "a Flux Union ControlNet needs the control type: one of Hard Edge, Tile, "
                                          "Depth, Blur, OpenPose, Gray, Low Quality (or a preprocessor that says it)")])
    return found


@dataclass
class FluxControlApplication:
    model: Any               # FluxControlNetModel
    cond: torch.Tensor       # (1, tokens, 64) packed latents, or (1, 3, H, W) pixels for XLabs' hint block
    weight: float
    start: float
    end: float
    control_mode: int        # index into units.CONTROL_MODES
    union: int | None = None

    def active(self, fraction: float) -> bool:
        return self.weight != 0 and self.start <= fraction <= self.end


@dataclass
class FluxControls:
    """Every Flux ControlNet unit of a pass; `step(...)` gives the transformer call's control keywords."""
    applications: list[FluxControlApplication] = field(default_factory=list)
    repeat: bool = False     # XLabs: its few blocks repeat over the base's (FluxTransformer2DModel's flag)
    notes: list[str] = field(default_factory=list)  # for the result's warnings (control modes that act otherwise)
    ip_adapter: Any = None   # flux_ip_adapter.FluxIPAdapter: XLabs' processors, installed while a pass samples

    def installed(self) -> Any:
        # ControlNets install nothing: the family's denoiser call asks `kwargs` for each step
        return self.ip_adapter.installed() if self.ip_adapter is not None else nullcontext()

    def set_step(self, fraction: float, copies: int, uncond_first: bool) -> None:
        pass

    def kwargs(self, fraction: float, copies: int, uncond_first: bool) -> dict[str, Any]:
        active = [a for a in self.applications if a.active(fraction)]
        if not active and self.ip_adapter is None:
            return {}

        def control(**call: Any) -> dict[str, Any]:
            out = self.samples(active, copies, uncond_first, **call) if active else {}
            if self.ip_adapter is not None:  # its image embeds, one row per row of the call
                out.update(self.ip_adapter.kwargs(fraction, call["hidden_states"].shape[0], copies, uncond_first))
            return out

        return {"transformer_control": control}

    @torch.no_grad()
    def samples(self, active: list[FluxControlApplication], copies: int, uncond_first: bool,
                **call: Any) -> dict[str, Any]:
        rows = call["hidden_states"].shape[0]
        blocks = single = None
        for app in active:
            args = dict(call)
            if not app.model.config.guidance_embeds:
                args["guidance"] = None
            elif args.get("guidance") is None:
                raise ValueError("this Flux ControlNet needs a guidance value")
            mode = None if app.union is None else torch.full((rows, 1), app.union, dtype=torch.long,
                                                               device=args["hidden_states"].device)
            cond = app.cond.expand(rows, *app.cond.shape[1:])
            down, flat = app.model(controlnet_cond=cond, controlnet_mode=mode, conditioning_scale=app.weight,
                                   return_dict=False, **args)
            if app.control_mode == 2 and uncond_first and copies > 1:  # the conditional rows only
                keep = torch.ones(rows, 1, 1, device=cond.device, dtype=call["hidden_states"].dtype)
                keep[:rows // copies] = 0
                down = None if down is None else [d * keep for d in down]
                flat = None if flat is None else [d * keep for d in flat]
            blocks = _add(blocks, down)
            single = _add(single, flat)
        return {"controlnet_block_samples": blocks, "controlnet_single_block_samples": single,
                "controlnet_blocks_repeat": self.repeat}


def _add(total, samples):
    if samples is None:
        return total
    return list(samples) if total is None else [a + b for a, b in zip(total, samples)]


def applies(model) -> bool:
    """Whether the loaded checkpoint is a Flux family (its ControlNets come from here)."""
    return model.architecture.adapter.name.startswith("flux")


def fits(family: str | None) -> bool:
    return bool(family) and family.startswith("flux")


def prepare(units: list[ControlUnit], model, library, annotators: Path, width: int, height: int,
            fallback_image: Image.Image | None) -> tuple[FluxControls, dict[str, str]]:
    """(FluxControls, infotext params) for the enabled ControlNet units on a Flux checkpoint."""
    from ...core.latents import encode, to_pixels
    from ...families.flux import pack
    from .apply import control_units, detect_map

    controls, params = FluxControls(), {}
    for index, unit, image in control_units(units, fallback_image):
        field_name = f"alwayson_scripts.{SCRIPT}.args[{index}].model"
        info = library.find(unit.model)
        if info.kind != KIND:
            raise ValidationError([FieldError(field_name, f"{info.name} is not a Flux ControlNet; "
                                                          f"{model.architecture.label} takes InstantX, "
                                                          f"Shakker-Labs Union or XLabs Flux ControlNets")])
        net = library.load(unit.model, model)
        hint = detect_map(unit, image, width, height, annotators, getattr(library, "store", None))
        param = next(net.parameters())
        if net.input_hint_block is not None:   # XLabs: pixels through its own hint block
            cond = to_pixels(hint).to(param.device, param.dtype)
        else:                                   # InstantX / Union: the map's latents, packed
            cond = pack(encode(model, [hint])).to(param.device, param.dtype)
        repeat = net.input_hint_block is not None
        if controls.applications and (repeat != controls.repeat or _depth(net) != _depth(controls.applications[0].model)):
            raise ValidationError([FieldError(field_name, "Flux ControlNets of different kinds or depths cannot "
                                                          "run together; use one kind per generation")])
        controls.repeat = repeat
        if unit.control_mode == PROMPT_MORE_IMPORTANT:
            controls.notes.append(f"ControlNet unit {index}: \"My prompt is more important\" acts as Balanced on "
                                  "Flux (the UNet's per-layer decay has no counterpart in Flux's transformer blocks)")
        union = union_mode(unit, index) if net.union else None
        controls.applications.append(FluxControlApplication(net, cond, unit.weight, unit.guidance_start,
                                                             unit.guidance_end, unit.control_mode, union))
        params[f"ControlNet {index}"] = unit.infotext(info.title)
    return controls, params


def _depth(net) -> tuple[int, int]:
    return len(net.transformer_blocks), len(net.single_transformer_blocks)


def wrong_family(index: int, name: str, label: str) -> ValidationError:
    """A Flux ControlNet named for a UNet checkpoint: a 422 on the unit's model field."""
    return ValidationError([FieldError(f"alwayson_scripts.{SCRIPT}.args[{index}].model",
                                       f"{name} is a Flux ControlNet; the loaded checkpoint is {label}")])


# ---- test and benchmark files ----------------------------------------------------------------------


def write_flux_controlnet(path: Path, transformer, layout: str = "diffusers", union: bool = False,
                          seed: int = 0) -> Path:
    """A random-weight Flux ControlNet for `transformer`: diffusers' layout (a file, or a folder with
    config.json when `path` has no suffix), or XLabs' single-file layout (`layout="xlabs"`)."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import save_file

    from ...families.flux_layout import from_diffusers

    torch.manual_seed(seed)
    base = dict(transformer.config)
    config = {k: base[k] for k in ("in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                                   "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")}
    config.update(num_layers=1, num_single_layers=0 if layout == "xlabs" else 1,
                  num_mode=7 if union else None)
    if layout == "xlabs":
        config.update(patch_size=2, conditioning_embedding_channels=16)
    model = FluxControlNetModel(**config)
    with torch.no_grad():  # zero-initialised in training: give the outputs signal so the effect is visible
        for module in [*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder]:
            module.weight.normal_(0, 0.3)
        if model.input_hint_block is not None:
            model.input_hint_block.conv_out.weight.normal_(0, 0.3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "xlabs":
        xlabs = from_diffusers(state, {**config, "num_single_layers": 0})
        xlabs.pop("final_layer.linear.weight", None)
        for key, value in state.items():
            if key.startswith("input_hint_block."):
                _, name, *rest = key.split(".")
                block = name if name != "blocks" else f"blocks.{rest.pop(0)}"
                xlabs[f"input_hint_block.{2 * _XLABS_HINT.index(block)}.{rest[0]}"] = value
            elif key.startswith("controlnet_x_embedder."):
                xlabs["pos_embed_input." + key.split(".", 1)[1]] = value
            elif key.startswith("controlnet_blocks."):
                xlabs[key] = value
        state = xlabs
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    return path
