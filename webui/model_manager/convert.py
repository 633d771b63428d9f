"""Key layout conversion between single-file checkpoints and diffusers components.

Model sites publish Stable Diffusion as one file in the original (LDM / SGM) layout:
`model.diffusion_model.*` for the UNet, `first_stage_model.*` for the VAE, and the text
encoders under `cond_stage_model.*` or `conditioner.embedders.N.*`. Diffusers names the
same tensors differently. The mapping is derived from each component's config (number of
blocks, layers per block, which blocks have attention), so it works for full-size models
and for the tests' tiny ones alike, and it runs in both directions: loading a file and
saving one (conversion, merging) share one table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .architecture import ModelConfigs

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
_BARE_UNET_KEY = "input_blocks.0.0.weight"


def with_unet_prefix(tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    """A UNet-only file in the original layout, saved without `model.diffusion_model.` (ComfyUI's
    diffusion_models files, most published UNet GGUF quantizations), under a full checkpoint's names, so
    detection and conversion read it as they read any checkpoint; any other file as it is."""
    if _BARE_UNET_KEY not in tensors or any(k.startswith(UNET_PREFIX) for k in tensors):
        return tensors
    return {UNET_PREFIX + k: v for k, v in tensors.items()}
VAE_PREFIX = "first_stage_model."
# Where a family keeps each text encoder in a single file: (component, prefix, layout "hf" | "openclip");
# the family adapter declares its own (Family.single_file_text_encoders)
TextEncoderPrefixes = tuple[tuple[str, str, str], ...]

_UNET_RESNET = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
                "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
_VAE_RESNET = {"nin_shortcut.": "conv_shortcut."}
_VAE_ATTENTION = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}
_OPENCLIP_LAYER = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.",
                   "mlp.c_proj.": "mlp.fc2.", "attn.out_proj.": "self_attn.out_proj."}


@dataclass(frozen=True)
class Rule:
    """Original prefix <-> diffusers prefix, with renames applied to the rest of the key."""

    original: str
    diffusers: str
    inner: dict[str, str] | None = None


class ConversionError(ValueError):
    """The file's tensors do not fit the expected layout."""


# ---- rule tables ----------------------------------------------------------------------


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def unet_rules(config: dict[str, Any]) -> list[Rule]:
    """Block-level renames for a UNet2DConditionModel config (SD 1.x/2.x/SDXL and variants)."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ConversionError("per-block layer counts that differ between blocks are not supported")
    rules = [Rule("time_embed.0.", "time_embedding.linear_1."), Rule("time_embed.2.", "time_embedding.linear_2."),
             Rule("input_blocks.0.0.", "conv_in."), Rule("out.0.", "conv_norm_out."), Rule("out.2.", "conv_out."),
             Rule("middle_block.0.", "mid_block.resnets.0.", _UNET_RESNET),
             Rule("middle_block.1.", "mid_block.attentions.0."),
             Rule("middle_block.2.", "mid_block.resnets.1.", _UNET_RESNET)]
    if config.get("addition_embed_type") == "text_time":
        rules += [Rule("label_emb.0.0.", "add_embedding.linear_1."), Rule("label_emb.0.2.", "add_embedding.linear_2.")]
    blocks = len(config["block_out_channels"])
    for i, block_type in enumerate(config["down_block_types"]):
        for j in range(per_block):
            index = i * (per_block + 1) + j + 1
            rules.append(Rule(f"input_blocks.{index}.0.", f"down_blocks.{i}.resnets.{j}.", _UNET_RESNET))
            if _has_attention(block_type):
                rules.append(Rule(f"input_blocks.{index}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < blocks - 1:
            rules.append(Rule(f"input_blocks.{(i + 1) * (per_block + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i, block_type in enumerate(config["up_block_types"]):
        for j in range(per_block + 1):
            index = i * (per_block + 1) + j
            rules.append(Rule(f"output_blocks.{index}.0.", f"up_blocks.{i}.resnets.{j}.", _UNET_RESNET))
            if _has_attention(block_type):
                rules.append(Rule(f"output_blocks.{index}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < blocks - 1:
            slot = 2 if _has_attention(block_type) else 1
            rules.append(Rule(f"output_blocks.{i * (per_block + 1) + per_block}.{slot}.conv.",
                              f"up_blocks.{i}.upsamplers.0.conv."))
    return rules


def vae_rules(config: dict[str, Any]) -> list[Rule]:
    """Renames for AutoencoderKL; the decoder's blocks are stored in reverse order in the original."""
    blocks = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    rules = [Rule("encoder.norm_out.", "encoder.conv_norm_out."), Rule("decoder.norm_out.", "decoder.conv_norm_out.")]
    for part in ("encoder", "decoder"):
        rules += [Rule(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", _VAE_RESNET),
                  Rule(f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", _VAE_RESNET),
                  Rule(f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", _VAE_ATTENTION)]
    for i in range(blocks):
        for j in range(per_block):
            rules.append(Rule(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.", _VAE_RESNET))
        if i < blocks - 1:
            rules.append(Rule(f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv."))
        original = blocks - 1 - i
        for j in range(per_block + 1):
            rules.append(Rule(f"decoder.up.{original}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.", _VAE_RESNET))
        if i < blocks - 1:
            rules.append(Rule(f"decoder.up.{original}.upsample.conv.", f"decoder.up_blocks.{i}.upsamplers.0.conv."))
    return rules


def openclip_rules(config: dict[str, Any]) -> list[Rule]:
    """OpenCLIP text tower (SD 2.x, SDXL's second encoder) <-> transformers CLIPTextModelWithProjection."""
    rules = [Rule("token_embedding.", "text_model.embeddings.token_embedding."),
             Rule("ln_final.", "text_model.final_layer_norm.")]
    for i in range(config["num_hidden_layers"]):
        rules.append(Rule(f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", _OPENCLIP_LAYER))
    return rules


# ---- applying rules ---------------------------------------------------------------------


def _apply(key: str, rules: list[Rule], forward: bool) -> str | None:
    for rule in rules:
        src, dst = (rule.original, rule.diffusers) if forward else (rule.diffusers, rule.original)
        if key.startswith(src):
            rest = key[len(src):]
            for a, b in (rule.inner or {}).items():
                a, b = (a, b) if forward else (b, a)
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            return dst + rest
    return None


def _sorted(rules: list[Rule], forward: bool) -> list[Rule]:
    return sorted(rules, key=lambda r: len(r.original if forward else r.diffusers), reverse=True)


def _is_vae_attention_weight(diffusers_key: str) -> bool:
    return ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(".weight") and (
        any(f".{p}weight" in diffusers_key for p in ("to_q.", "to_k.", "to_v.", "to_out.0.")))


def _convert_generic(tensors: StateDict, rules: list[Rule], forward: bool,
                     reshape: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> tuple[StateDict, StateDict]:
    ordered = _sorted(rules, forward)
    out: StateDict = {}
    unmapped: StateDict = {}
    for key, value in tensors.items():
        new_key = _apply(key, ordered, forward)
        if new_key is None:
            if forward:
                unmapped[key] = value
                continue
            new_key = key  # diffusers and original share this name (conv_in of the VAE, quant_conv, ...)
        out[new_key] = reshape(new_key if forward else key, value) if reshape else value
    return out, unmapped


def unet_to_diffusers(tensors: StateDict, config: dict[str, Any]) -> tuple[StateDict, StateDict]:
    """Original UNet tensors (prefix stripped) -> diffusers names; also returns keys it did not place."""
    out, unmapped = _convert_generic(tensors, unet_rules(config), forward=True)
    return out, unmapped


def unet_to_original(tensors: StateDict, config: dict[str, Any]) -> StateDict:
    ordered = _sorted(unet_rules(config), forward=False)
    out: StateDict = {}
    for key, value in tensors.items():
        new_key = _apply(key, ordered, forward=False)
        if new_key is None:
            raise ConversionError(f"UNet tensor {key} has no place in the original layout")
        out[new_key] = value
    return out


_VAE_SAME = ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.", "quant_conv.",
             "post_quant_conv.")


def vae_to_diffusers(tensors: StateDict, config: dict[str, Any]) -> tuple[StateDict, StateDict]:
    rules = vae_rules(config) + [Rule(p, p) for p in _VAE_SAME]

    def flatten(key: str, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(value.shape[0], value.shape[1]) if _is_vae_attention_weight(key) and value.ndim == 4 else value

    return _convert_generic(tensors, rules, forward=True, reshape=flatten)


def vae_to_original(tensors: StateDict, config: dict[str, Any]) -> StateDict:
    rules = vae_rules(config) + [Rule(p, p) for p in _VAE_SAME]

    def to_conv(key: str, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(*value.shape, 1, 1) if _is_vae_attention_weight(key) and value.ndim == 2 else value

    out, _ = _convert_generic(tensors, rules, forward=False, reshape=to_conv)
    return out


def hf_clip_to_diffusers(tensors: StateDict) -> tuple[StateDict, StateDict]:
    """transformers-layout CLIP text model; older files lack the `text_model.` level."""
    out: StateDict = {}
    unmapped: StateDict = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            unmapped[key] = value  # a buffer the model rebuilds itself
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = value
    return out, unmapped


def openclip_to_diffusers(tensors: StateDict, config: dict[str, Any]) -> tuple[StateDict, StateDict]:
    rules = _sorted(openclip_rules(config), forward=True)
    out: StateDict = {}
    unmapped: StateDict = {}
    for key, value in tensors.items():
        if key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            layer = key.split(".")[2]
            kind = "weight" if key.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
        else:
            new_key = _apply(key, rules, forward=True)
            if new_key is None:
                unmapped[key] = value
            else:
                out[new_key] = value
    return out, unmapped


def openclip_to_original(tensors: StateDict, config: dict[str, Any]) -> StateDict:
    rules = _sorted(openclip_rules(config), forward=False)
    out: StateDict = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif ".self_attn." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            layer = key.split(".")[3]
            kind = key.rsplit(".", 1)[-1]
            pending.setdefault((layer, kind), {})[key.rsplit(".", 2)[-2]] = value
        else:
            new_key = _apply(key, rules, forward=False)
            if new_key is None:
                raise ConversionError(f"text encoder tensor {key} has no place in the OpenCLIP layout")
            out[new_key] = value
    for (layer, kind), parts in pending.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise ConversionError(f"text encoder layer {layer}: q/k/v {kind} incomplete")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


# ---- whole checkpoints -------------------------------------------------------------------


def split_by_prefix(tensors: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def checkpoint_to_diffusers(tensors: StateDict, configs: ModelConfigs) -> tuple[dict[str, StateDict], StateDict]:
    """Split a single-file checkpoint into diffusers component state dicts, as its family's adapter lays it out.

    Returns (components, leftovers); leftovers are tensors no component uses (EMA copies,
    noise-schedule buffers, OpenCLIP's logit scale), kept so callers can report them.
    """
    return configs.architecture.adapter.split_single_file(tensors, configs)


def diffusers_to_checkpoint(components: dict[str, StateDict], configs: ModelConfigs) -> StateDict:
    """Inverse of checkpoint_to_diffusers: the single-file layout model sites publish."""
    return configs.architecture.adapter.join_single_file(components, configs)


def ldm_to_diffusers(tensors: StateDict, configs: ModelConfigs,
                     text_encoders: TextEncoderPrefixes) -> tuple[dict[str, StateDict], StateDict]:
    """The Stable Diffusion (LDM / SGM) single-file layout split into diffusers components."""
    components: dict[str, StateDict] = {}
    used_prefixes = [UNET_PREFIX, VAE_PREFIX]
    components["unet"], rest_unet = unet_to_diffusers(split_by_prefix(tensors, UNET_PREFIX), configs["unet"])
    components["vae"], rest_vae = vae_to_diffusers(split_by_prefix(tensors, VAE_PREFIX), configs["vae"])
    leftovers = {UNET_PREFIX + k: v for k, v in rest_unet.items()}
    leftovers.update({VAE_PREFIX + k: v for k, v in rest_vae.items()})
    for name, prefix, layout in text_encoders:
        used_prefixes.append(prefix)
        part = split_by_prefix(tensors, prefix)
        if layout == "hf":
            components[name], rest = hf_clip_to_diffusers(part)
        else:
            components[name], rest = openclip_to_diffusers(part, configs[name])
        leftovers.update({prefix + k: v for k, v in rest.items()})
    for key, value in tensors.items():
        if not any(key.startswith(p) for p in used_prefixes):
            leftovers[key] = value
    return components, leftovers


def diffusers_to_ldm(components: dict[str, StateDict], configs: ModelConfigs,
                     text_encoders: TextEncoderPrefixes) -> StateDict:
    """Inverse of ldm_to_diffusers."""
    out: StateDict = {}
    out.update({UNET_PREFIX + k: v for k, v in unet_to_original(components["unet"], configs["unet"]).items()})
    out.update({VAE_PREFIX + k: v for k, v in vae_to_original(components["vae"], configs["vae"]).items()})
    for name, prefix, layout in text_encoders:
        tensors = components[name]
        if layout == "hf":
            converted = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
        else:
            converted = openclip_to_original(tensors, configs[name])
        out.update({prefix + k: v for k, v in converted.items()})
    return out
