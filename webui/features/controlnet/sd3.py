"""SD 3 / SD 3.5 ControlNets: Stability's SD 3.5 Large canny / depth / blur files and diffusers folders.

An SD3 ControlNet is diffusers' `SD3ControlNetModel`: a few transformer blocks that read the
noisy latents plus the *VAE-encoded* control image and return one residual per block, which the
MMDiT adds after its blocks (`block_controlnet_hidden_states`). Unlike a UNet ControlNet it
needs what only the transformer's own call holds (the pooled text vector), so it runs in a
forward pre-hook on the transformer while a pass samples (`TransformerControls`); the denoiser
tells it the step and the CFG layout through `Controls.unet_kwargs`, as for UNet ControlNets.

Files:
- Stability's single files (`sd3.5_large_controlnet_canny.safetensors`): blocks in Stability's
  names (`transformer_blocks.N.attn.qkv`, `mlp.fc1`, `adaLN_modulation.1`), the embedders already
  in diffusers' names, and a `control_type` tensor (0 blur, 1 canny, 2 depth). They have no patch
  embedding of their own and no text stream (diffusers: `use_pos_embed=False`,
  `joint_attention_dim=None`): the transformer's patch embedding is shared, as
  StableDiffusion3ControlNetPipeline does. diffusers reads these only with a script
  (scripts/convert_sd3_controlnet_to_diffusers.py), so the renaming is ours (`to_diffusers`),
  with its inverse (`to_original`) for the tests' files.
- diffusers folders (`config.json` with `SD3ControlNetModel`: Stability's converted ones; InstantX's SD3 Medium
  Canny / Pose / Tile, whose configs predate most keys and two of which name the class `ControlNetSD3Model`:
  they are told by their tensors), and InstantX's file alone (diffusers names, config from the tensors).

The control image goes in as the pipeline prepares it: [-1, 1] pixels, the VAE's posterior mean
(the same image always gives the same latents, as for img2img), then shift and scale; the 8B canny
model was trained on `pixels * 255 * 0.5 + 0.5` (Stability's sd3_infer.py), and InstantX's models
skip the shift and see a zero pooled vector (their config's `force_zeros_for_pooled_projection`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

KIND = "sd3_controlnet"
CONTROL_TYPES = {0: "blur", 1: "canny", 2: "depth"}
_BLOCK_RENAMES = (("attn.proj.", "attn.to_out.0."), ("mlp.fc1.", "ff.net.0.proj."), ("mlp.fc2.", "ff.net.2."),
                  ("adaLN_modulation.1.", "norm1.linear."))


def is_sd3_controlnet(shapes: dict[str, Any], saved_config: dict[str, Any] | None = None) -> bool:
    """An SD3 ControlNet's tensors (either layout) or a diffusers folder whose config says so."""
    if (saved_config or {}).get("_class_name") == "SD3ControlNetModel":
        return True
    return "pos_embed_input.proj.weight" in shapes and "controlnet_blocks.0.weight" in shapes


def is_sd3_config(config: dict[str, Any] | None) -> bool:
    """Whether a denoiser config is an SD3 transformer's (the checkpoints these ControlNets fit)."""
    return (config or {}).get("_class_name") == "SD3Transformer2DModel"


def width_of(shapes: dict[str, Any]) -> int | None:
    """The ControlNet's hidden width (its blocks' width = the transformer's it was trained for)."""
    shape = shapes.get("controlnet_blocks.0.weight")
    return int(shape[0]) if shape else None


def transformer_width(config: dict[str, Any]) -> int:
    return int(config.get("num_attention_heads", 0)) * int(config.get("attention_head_dim", 0))


def fits(kind: str, width: int | None, denoiser_config: dict[str, Any]) -> bool:
    """SD3 ControlNets fit SD3 checkpoints of their width, and nothing else fits an SD3 checkpoint."""
    if not is_sd3_config(denoiser_config):
        return kind != KIND
    return kind == KIND and (width is None or width == transformer_width(denoiser_config))


def mismatch(kind: str, width: int | None, name: str, model: Any) -> str | None:
    """Why this ControlNet cannot run with the loaded checkpoint (for a 422 on the unit's model), or None."""
    config = model.configs.components.get(model.architecture.adapter.denoiser_component) or {}
    label = model.architecture.label
    if kind == KIND and not is_sd3_config(config):
        return f"{name} is an SD 3 ControlNet; the loaded checkpoint is {label}: choose a ControlNet made for it"
    if kind != KIND and is_sd3_config(config):
        return (f"{name} is not an SD 3 ControlNet; the loaded checkpoint is {label}: choose an SD 3 ControlNet "
                "(e.g. Stability's sd3.5_large_controlnet_canny)")
    if kind == KIND and width is not None and width != transformer_width(config):
        return (f"{name} was made for an SD 3 transformer {width} wide; the loaded {label} is "
                f"{transformer_width(config)} wide (Stability's SD 3.5 ControlNets are for SD 3.5 Large)")
    return None


# ---- key layouts ----------------------------------------------------------------------------------


def to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stability's block names -> diffusers' (qkv split in three); diffusers names pass through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key == "control_type":
            continue
        if key.startswith("transformer_blocks.") and ".attn.qkv." in key:
            head, _, tail = key.partition("attn.qkv.")
            for letter, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{head}attn.to_{letter}.{tail}"] = part
            continue
        if key.startswith("transformer_blocks."):
            for old, new in _BLOCK_RENAMES:
                key = key.replace("." + old, "." + new)
        out[key] = value
    return out


def to_original(tensors: dict[str, torch.Tensor], control_type: int | None = None) -> dict[str, torch.Tensor]:
    """diffusers names -> Stability's (qkv fused), with `control_type` as Stability's files carry it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("transformer_blocks.") and ".attn.to_q." in key:
            out[key.replace("attn.to_q.", "attn.qkv.")] = torch.cat(
                [value, tensors[key.replace("to_q.", "to_k.")], tensors[key.replace("to_q.", "to_v.")]])
            continue
        if key.startswith("transformer_blocks.") and (".attn.to_k." in key or ".attn.to_v." in key):
            continue
        if key.startswith("transformer_blocks."):
            for old, new in _BLOCK_RENAMES:
                key = key.replace("." + new, "." + old)
        out[key] = value
    if control_type is not None:
        out["control_type"] = torch.tensor([control_type], dtype=torch.int32)
    return out


def config_from_tensors(tensors: dict[str, torch.Tensor], transformer_config: dict[str, Any]) -> dict[str, Any]:
    """An SD3ControlNetModel config for a single file (diffusers names), sized from its tensors; what tensors
    cannot say (head size, latent size) is the checkpoint's transformer's."""
    width = int(tensors["controlnet_blocks.0.weight"].shape[0])
    head = int(transformer_config.get("attention_head_dim", 64))
    embed = tensors["pos_embed_input.proj.weight"]
    in_channels = int(transformer_config.get("in_channels", 16))
    context = tensors.get("context_embedder.weight")
    own_patches = "pos_embed.proj.weight" in tensors
    return {"sample_size": int(transformer_config.get("sample_size", 128)), "patch_size": int(embed.shape[-1]),
            "in_channels": in_channels, "out_channels": in_channels,
            "num_layers": len({k.split(".")[1] for k in tensors if k.startswith("controlnet_blocks.")}),
            "attention_head_dim": head, "num_attention_heads": width // head,
            "joint_attention_dim": int(context.shape[1]) if context is not None else None,
            "caption_projection_dim": int(context.shape[0]) if context is not None else width,
            "pooled_projection_dim": int(tensors["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
            "pos_embed_max_size": _table_size(tensors, transformer_config) if own_patches else None,
            "extra_conditioning_channels": int(embed.shape[1]) - in_channels,
            "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in tensors else None,
            "pos_embed_type": "sincos" if own_patches else None, "use_pos_embed": own_patches,
            # InstantX's (with a text stream) were trained on a zero pooled vector; Stability's 8B ones were not
            "force_zeros_for_pooled_projection": context is not None}


def _table_size(tensors: dict[str, torch.Tensor], transformer_config: dict[str, Any]) -> int | None:
    """The side of an own patch embedding's position table (InstantX's: 192 patches, from its (1, side², width)
    tensor); the transformer's when the file has no table."""
    table = tensors.get("pos_embed.pos_embed")
    return round(table.shape[1] ** 0.5) if table is not None else transformer_config.get("pos_embed_max_size")


def _shared_patch_embedding(transformer: torch.nn.Module) -> torch.nn.Module:
    """The transformer's patch embedding (with its position table), copied: the 8B ControlNets have none."""
    from diffusers.models.embeddings import PatchEmbed

    config = transformer.config
    embed = PatchEmbed(height=config.sample_size, width=config.sample_size, patch_size=config.patch_size,
                       in_channels=config.in_channels, embed_dim=transformer.inner_dim,
                       pos_embed_max_size=config.pos_embed_max_size)
    embed.load_state_dict(transformer.pos_embed.state_dict())
    return embed


def build(tensors: dict[str, torch.Tensor], saved_config: dict[str, Any] | None, transformer: torch.nn.Module,
          device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The SD3ControlNetModel for the loaded checkpoint's transformer, on its device and dtype."""
    from diffusers import SD3ControlNetModel

    from .models import load_fitting

    control_type = int(tensors["control_type"].flatten()[0]) if "control_type" in tensors else None
    converted = to_diffusers(tensors)
    config = {k: v for k, v in (saved_config or {}).items() if not k.startswith("_")} or \
        config_from_tensors(converted, dict(transformer.config))
    with torch.device("meta"):
        model = SD3ControlNetModel.from_config(config)
    load_fitting(model, converted, "SD 3 ControlNet", device, dtype)
    if not model.config.use_pos_embed:
        model.pos_embed = _shared_patch_embedding(transformer).to(device, dtype)
    model.control_type = control_type  # None: not said by the file (diffusers folders)
    return model.eval().requires_grad_(False)


def is_model(module: Any) -> bool:
    return type(module).__name__ == "SD3ControlNetModel"


def _is_canny(net: Any, name: str) -> bool:
    """Canny input scaling is the 8B models' (no text stream); the file's control_type says it, else the name."""
    if net.config.joint_attention_dim is not None:
        return False
    kind = getattr(net, "control_type", None)
    return kind == 1 if kind is not None else "canny" in name.lower()


def hint_latents(model: Any, net: Any, hint: torch.Tensor, name: str) -> torch.Tensor:
    """The control map (1, 3, H, W in [0, 1]) as the ControlNet reads it: VAE latents, shifted and scaled."""
    from ...core.latents import encode

    pixels = hint.float().cpu()
    pixels = pixels * 255 * 0.5 + 0.5 if _is_canny(net, name) else pixels * 2 - 1
    latents = encode(model, [pixels])
    if net.config.force_zeros_for_pooled_projection:  # InstantX's: scaled, not shifted
        latents = latents + float(getattr(model.vae.config, "shift_factor", None) or 0.0) * \
            float(model.vae.config.scaling_factor)
    param = next(net.parameters())
    return latents.to(param.device, param.dtype)


# ---- running --------------------------------------------------------------------------------------


@dataclass
class _Step:
    fraction: float = 0.0
    copies: int = 1
    uncond_first: bool = False


def control_mode_rows(samples: list[torch.Tensor], mode: int, step: _Step) -> list[torch.Tensor]:
    """sd-webui-controlnet's control modes on transformer blocks. "ControlNet is more important" (2): the
    residuals on the conditional rows of the CFG batch only, so guidance amplifies the control (the extension's
    cfg injection; ComfyUI's ControlNet applied to the positive conditioning only). "My prompt is more important"
    (1) is Balanced (0) here: its soft injection fades the UNet's 13 residuals from the deep, low-resolution
    ones to the shallow, high-resolution ones (0.825 ** (12 - i)), and an MMDiT's blocks all work at one
    resolution, so there is nothing that ordering stands for; ComfyUI has no control modes at all, Forge no
    SD 3 ControlNets. The same choice as the Flux ControlNets (flux.py)."""
    if mode != 2 or not step.uncond_first or step.copies < 2:
        return samples
    rows = samples[0].shape[0]
    keep = torch.ones(rows, *([1] * (samples[0].ndim - 1)), device=samples[0].device, dtype=samples[0].dtype)
    keep[:rows // step.copies] = 0
    return [s * keep for s in samples]


class TransformerControls:
    """SD3 ControlNet units on the transformer: while entered, every transformer call gets the summed block
    residuals of the units active at this step, computed from that call's own inputs."""

    def __init__(self, transformer: torch.nn.Module, applications: list[Any]):
        self.transformer = transformer
        self.applications = applications
        self.step = _Step()

    def set_step(self, fraction: float, copies: int, uncond_first: bool) -> None:
        self.step = _Step(fraction, copies, uncond_first)

    def kwargs(self, fraction: float, copies: int, uncond_first: bool) -> dict[str, Any]:
        return {}  # the residuals are added inside the transformer's call (`_before`)

    @contextmanager
    def installed(self) -> Iterator[None]:
        handle = self.transformer.register_forward_pre_hook(self._before, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        from .apply import _add

        hidden, pooled = kwargs["hidden_states"], kwargs.get("pooled_projections")
        rows = hidden.shape[0]
        total = None
        for app in self.applications:
            if not app.active(self.step.fraction):
                continue
            net = app.model
            samples = net(hidden_states=hidden, controlnet_cond=app.hint.expand(rows, -1, -1, -1),
                          conditioning_scale=app.weight, timestep=kwargs["timestep"],
                          encoder_hidden_states=kwargs["encoder_hidden_states"]
                          if net.config.joint_attention_dim is not None else None,
                          pooled_projections=torch.zeros_like(pooled)
                          if net.config.force_zeros_for_pooled_projection else pooled, return_dict=False)[0]
            total = _add(total, control_mode_rows([s.to(hidden.dtype) for s in samples], app.mode, self.step))
        if total is not None:
            kwargs = {**kwargs, "block_controlnet_hidden_states": total}
        return args, kwargs


# ---- tiny models for tests and benchmarks ---------------------------------------------------------


@torch.no_grad()
def write_sd3_controlnet(path: Path, transformer: torch.nn.Module, layout: str = "original", control_type: int = 2,
                         num_layers: int = 1, seed: int = 0) -> Path:
    """A random-weight ControlNet shaped as Stability's SD 3.5 Large ones (no patch embedding, no text stream) for
    `transformer`: `layout="original"` a single file as Stability publishes it, "diffusers" a folder."""
    from diffusers import SD3ControlNetModel
    from safetensors.torch import save_file

    config = transformer.config
    torch.manual_seed(seed)
    net = SD3ControlNetModel(sample_size=config.sample_size, patch_size=config.patch_size,
                             in_channels=config.in_channels, out_channels=config.in_channels, num_layers=num_layers,
                             attention_head_dim=config.attention_head_dim,
                             num_attention_heads=config.num_attention_heads, joint_attention_dim=None,
                             caption_projection_dim=transformer.inner_dim,
                             pooled_projection_dim=config.pooled_projection_dim, pos_embed_max_size=None,
                             pos_embed_type=None, use_pos_embed=False, force_zeros_for_pooled_projection=False)
    for module in [*net.controlnet_blocks, net.pos_embed_input.proj]:  # zero-initialised in training: give signal
        module.weight.normal_(0, 0.3)
        module.bias.normal_(0, 0.1)
    if layout == "diffusers":
        net.save_pretrained(str(path), safe_serialization=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in to_original(net.state_dict(), control_type).items()}, str(path))
    return path



# InstantX's SD3 Medium ControlNets (Canny, Pose, Tile) as published: a diffusers 0.29/0.30 config.json naming the
# class `ControlNetSD3Model` (Canny, Pose) or `SD3ControlNetModel` (Tile), with none of the later keys (so
# diffusers' defaults: own sincos patch embedding, a text stream, zero pooled vector); people also keep the folder's
# one safetensors file alone under models/ControlNet, as ComfyUI loads it.
INSTANTX_CONFIG_KEYS = ("sample_size", "patch_size", "in_channels", "out_channels", "num_layers",
                        "attention_head_dim", "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                        "pooled_projection_dim", "pos_embed_max_size")


@torch.no_grad()
def write_instantx_controlnet(path: Path, transformer: torch.nn.Module, layout: str = "diffusers",
                              class_name: str = "ControlNetSD3Model", num_layers: int = 1,
                              pos_embed_max_size: int | None = None, seed: int = 0) -> Path:
    """A random-weight ControlNet shaped as InstantX's SD3 ones for `transformer`: `layout="diffusers"` a folder
    with their config.json keys only, "single" the folder's weights file alone."""
    import json

    from diffusers import SD3ControlNetModel
    from safetensors.torch import save_file

    source = transformer.config
    config = {"sample_size": source.sample_size, "patch_size": source.patch_size,
              "in_channels": source.in_channels, "out_channels": source.in_channels, "num_layers": num_layers,
              "attention_head_dim": source.attention_head_dim, "num_attention_heads": source.num_attention_heads,
              "joint_attention_dim": source.joint_attention_dim, "caption_projection_dim": transformer.inner_dim,
              "pooled_projection_dim": source.pooled_projection_dim,
              "pos_embed_max_size": pos_embed_max_size or source.pos_embed_max_size}
    torch.manual_seed(seed)
    net = SD3ControlNetModel(**config)
    for module in [*net.controlnet_blocks, net.pos_embed_input.proj]:  # zero-initialised in training: give signal
        module.weight.normal_(0, 0.3)
        module.bias.normal_(0, 0.1)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    if layout == "single":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "diffusion_pytorch_model.safetensors"))
    saved = {"_class_name": class_name, "_diffusers_version": "0.29.0.dev0", "_name_or_path": "/path/", **config}
    (path / "config.json").write_text(json.dumps(saved, indent=2))
    return path
