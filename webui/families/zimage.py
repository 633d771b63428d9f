"""Z-Image (Turbo and base): a single-stream flow transformer reading a Qwen3 chat prompt, 16-channel latents.

What differs from Flux, all answered here so the engine stays family-blind:
- **Text.** The prompt is wrapped in Qwen3's chat template exactly as ZImagePipeline wraps it
  (one user message, generation prompt, `enable_thinking=True`), tokenized up to 512 tokens, and
  the encoder's second-to-last hidden state of the real tokens is the caption (no pooled vector).
  Captions have their own length, so the conditioning is padded to 512 rows and carries its
  token mask where other families carry a pooled vector; `call_denoiser` hands the transformer
  the unpadded captions as a list, as the pipeline does.
- **Sign and time.** The network predicts x0 - noise at time 1 - sigma: `call_denoiser` turns
  that into the flow velocity (noise - x0) at sigma that `FlowVelocity` expects.
- **Guidance.** ZImagePipeline's `guidance_scale` g is `pos + g (pos - neg)`, i.e. CFG scale 1 + g
  here; Turbo is distilled to run without CFG (CFG scale 1), base with it.
- **Files.** diffusers folders (`transformer/`, `text_encoder/` Qwen3, `tokenizer/`), the published
  single-file transformer (`layers.*.attention.qkv`, bare or under `model.diffusion_model.`), read by
  diffusers' own `convert_z_image_transformer_checkpoint_to_diffusers`, and GGUF files in that layout;
  the VAE (Flux's `ae.safetensors`) and the Qwen3 text encoder (`qwen_3_4b.safetensors`, HF layout)
  then come from models/VAE and models/text_encoder, the tokenizer from a folder there.
- **Turbo or base.** Both have the same tensors; a checkpoint is Turbo (the published one most people
  run) unless its sidecar says `"architecture": "zimage"`.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..core.parameterisation import FlowVelocity, Parameterisation
from ..core.schedules import FlowSchedule
from .base import Family, Shapes
from .flux import FLUX_LATENT

ZIMAGE_LATENT = FLUX_LATENT  # Z-Image decodes with Flux.1's VAE: same latent space, same previews (TAEF1)
_PARAMETERISATION = FlowVelocity()
# the published transformer's keys, bare or under ComfyUI's prefix
ORIGINAL_PREFIXES = ("", "model.diffusion_model.")
# Z-Image's blocks modulate with one Linear (`adaLN_modulation.0`); Lumina 2's start with SiLU (`.1`)
_MARKER = "layers.0.adaLN_modulation.0.weight"
_CAPTION = "cap_embedder.1.weight"
_DIFFUSERS_MARKER = "all_x_embedder.2-1.weight"
# diffusers' names -> the published file's (the inverse of diffusers' conversion, for writing files)
_TO_ORIGINAL = (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
                (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
                (".attention.norm_q.", ".attention.q_norm."))
# ComfyUI's all-in-one prefixes (the first is what `join_single_file` writes)
AIO_PREFIXES = {"text_encoder": ("text_encoders.qwen3_4b.transformer.", "text_encoders.qwen3_4b."),
                "vae": ("vae.", "first_stage_model.")}
CHAT_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def original_prefix(shapes: Shapes) -> str | None:
    """The prefix the transformer's keys carry in this file (published or diffusers names), or None."""
    for prefix in ORIGINAL_PREFIXES:
        if prefix + _MARKER in shapes and prefix + _CAPTION in shapes:
            return prefix
    return None


def chat_prompt(tokenizer: Any, text: str) -> str:
    """The prompt as ZImagePipeline builds it: the tokenizer's chat template (Qwen3's), one user message,
    with the generation prompt and thinking enabled (which adds no empty think block)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)
    return CHAT_TEMPLATE.format(prompt=text)


def to_original(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The published single-file layout from a diffusers ZImageTransformer2DModel state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            out[prefix + key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts, dim=0)
            continue
        for ours, theirs in _TO_ORIGINAL:
            key = key.replace(ours, theirs)
        out[prefix + key] = value
    return out


def to_diffusers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(transformer state dict in diffusers' names, the other tensors) with diffusers' own conversion."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    prefix = original_prefix({k: () for k in tensors})
    if prefix is None:
        return {}, dict(tensors)
    mine = {k: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(_OTHER_PREFIXES)}
    rest = {k: v for k, v in tensors.items() if k not in mine}
    if prefix + _DIFFUSERS_MARKER in mine:  # already diffusers' names (some single files are saved so)
        return {k[len(prefix):]: v for k, v in mine.items()}, rest
    return convert_z_image_transformer_checkpoint_to_diffusers(mine), rest


_OTHER_PREFIXES = tuple(p for prefixes in AIO_PREFIXES.values() for p in prefixes)


def _qwen3(config: dict[str, Any]) -> torch.nn.Module:
    """Qwen3Model (built on the meta device by the loader) with its rotary frequencies computed for real:
    they are a non-persistent buffer, in no file."""
    from transformers import Qwen3Config, Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    settings = Qwen3Config(**config)
    model = Qwen3Model(settings)
    with torch.device("cpu"):
        model.rotary_emb = Qwen3RotaryEmbedding(settings)
    return model


class ZImage(Family):
    """Shared by Turbo and base; they differ in the defaults a user expects (steps, CFG)."""

    text_encoders = ("text_encoder",)
    pooled_encoder = None
    latent = ZIMAGE_LATENT
    base_size = 1024
    denoiser_component = "transformer"
    automatic_schedule = "Simple"
    ddpm_samplers = False
    max_sequence_length: ClassVar[int] = 512
    # base: CFG with the negative prompt (the pipeline's guidance_scale 3 is CFG scale 4 here)
    ui_defaults = {"width": 1024, "height": 1024, "steps": 28, "cfg_scale": 4.0, "sampler_name": "Euler",
                   "scheduler": "Simple"}

    def noise_schedule(self, scheduler_config: dict[str, Any]) -> FlowSchedule:
        return FlowSchedule.flow(scheduler_config, patch=2)

    def parameterisation(self, prediction_type: str) -> Parameterisation:
        return _PARAMETERISATION

    def matches_folder(self, index: dict[str, Any], components: dict[str, dict[str, Any]]) -> bool:
        return components.get("transformer", {}).get("_class_name") == "ZImageTransformer2DModel" and self.default

    def detect_file(self, shapes: Shapes) -> dict[str, Any] | None:
        return {} if self.default and original_prefix(shapes) is not None else None

    # whether a Z-Image file or folder is this variant when nothing says otherwise
    default: ClassVar[bool] = False

    def denoiser_kwargs(self, pooled: torch.Tensor | None, extra: torch.Tensor | None) -> dict[str, Any]:
        return {"caption_mask": pooled}

    def call_denoiser(self, module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      kwargs: dict[str, Any]) -> torch.Tensor:
        """Unpadded captions and (C, 1, H, W) latents as lists, time 1 - sigma; the output's sign flipped."""
        mask = kwargs.get("caption_mask")
        if mask is None:
            captions = list(context.unbind(0))
        else:
            keep = mask.to(context.device) > 0.5
            captions = [context[i][keep[i]] for i in range(context.shape[0])]
        time = (1000 - t.to(torch.float32)) / 1000
        out = module(list(x.unsqueeze(2).unbind(0)), time.to(x.dtype), captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def module_factory(self, component: str, config: dict[str, Any]) -> Callable[[], torch.nn.Module]:
        if component == "transformer":
            from diffusers import ZImageTransformer2DModel

            return lambda: ZImageTransformer2DModel.from_config(config)
        if component == "text_encoder":
            clean = {k: v for k, v in config.items() if not k.startswith("_")}
            return lambda: _qwen3(clean)
        return super().module_factory(component, config)

    def component_tensors(self, component: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Qwen3 files keep the causal LM's names (`model.layers.*`, maybe `lm_head`): the bare model's here."""
        if component != "text_encoder" or not any(k.startswith("model.") for k in tensors):
            return tensors
        return {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("lm_head.")}

    def load_tokenizer(self, component: str, folder: Any) -> Any:
        """Qwen's tokenizer from the folder's tokenizer/ or a folder in models/text_encoder (never fetched)."""
        from transformers import AutoTokenizer

        return self.local_tokenizer(folder, AutoTokenizer,
                                    "the Qwen tokenizer is missing: Z-Image needs tokenizer/tokenizer.json")

    # ---- text -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, encoder: Any, text: str) -> Any:
        """The chat-templated prompt's second-to-last hidden state (with emphasis), padded to 512 rows; its
        token mask rides where a pooled vector would."""
        model = encoder.model
        qwen, tokenizer = model.text_encoders["text_encoder"], model.tokenizers["text_encoder"]
        pieces = encoder.weighted_pieces(text)
        plain = "".join(part for part, _ in pieces)
        prompt = chat_prompt(tokenizer, plain)
        start = prompt.index(plain) if plain else len(prompt)
        bounds, position = [], start  # (first, end, weight) of each piece in the templated prompt
        for part, weight in pieces:
            bounds.append((position, position + len(part), weight))
            position += len(part)
        tokens = tokenizer(prompt, max_length=self.max_sequence_length, truncation=True,
                           return_offsets_mapping=True)
        weights = [next((w for a, b, w in bounds if a <= first < b), 1.0) for first, _ in tokens["offset_mapping"]]
        device = next(qwen.parameters()).device
        ids = torch.tensor([tokens["input_ids"]], device=device)
        hidden = qwen(input_ids=ids, attention_mask=torch.ones_like(ids),
                      output_hidden_states=True).hidden_states[-2].float()
        hidden = encoder.emphasise(hidden, weights)
        count, width = hidden.shape[1], hidden.shape[2]
        embeds = torch.zeros(1, self.max_sequence_length, width, device=hidden.device)
        embeds[:, :count] = hidden
        mask = torch.zeros(1, self.max_sequence_length, device=hidden.device)
        mask[:, :count] = 1.0
        return encoder.conditioning(embeds, mask)

    # ---- single files -----------------------------------------------------------------------------

    # a file holding only the transformer takes the rest from these folders (models/<kind>), first match wins
    companion_files = {"vae": ("vae", ("ae.safetensors", "*z*image*vae*.safetensors", "*flux*ae*.safetensors",
                                       "*flux*vae*.safetensors")),
                       "text_encoder": ("text_encoder", ("qwen_3_4b.safetensors", "qwen3*4b*.safetensors",
                                                         "qwen*.safetensors"))}
    tokenizer_classes = {"text_encoder": "Qwen2"}

    def split_single_file(self, tensors: dict[str, torch.Tensor], configs: Any) -> tuple[dict, dict]:
        """The published transformer (diffusers' conversion), and in all-in-one files ComfyUI's
        `text_encoders.qwen3_4b.` encoder and `vae.` autoencoder."""
        from ..model_manager.convert import vae_to_diffusers

        transformer, rest = to_diffusers(tensors)
        components: dict[str, dict[str, torch.Tensor]] = {"transformer": transformer}
        for component, prefixes in AIO_PREFIXES.items():
            found = next((p for p in prefixes if any(k.startswith(p) for k in rest)), None)
            if found is None:
                continue
            part = {k[len(found):]: v for k, v in rest.items() if k.startswith(found)}
            rest = {k: v for k, v in rest.items() if not k.startswith(found)}
            if component == "vae" and not any(k.startswith("encoder.down_blocks.") for k in part):
                part, _ = vae_to_diffusers(part, configs["vae"])
            components[component] = self.component_tensors(component, part)
        return components, rest

    def join_single_file(self, components: dict[str, dict[str, torch.Tensor]], configs: Any) -> dict:
        """The published transformer layout plus whatever other components are given, under ComfyUI's
        all-in-one prefixes (the VAE in the original layout)."""
        from ..model_manager.convert import vae_to_original

        out = to_original(components["transformer"])
        for component, prefixes in AIO_PREFIXES.items():
            if component in components:
                part = components[component]
                if component == "vae":
                    part = vae_to_original(part, configs["vae"])
                out.update({prefixes[0] + k: v for k, v in part.items()})
        return out


class ZImageTurbo(ZImage):
    name = "zimage-turbo"
    label = "Z-Image Turbo"
    default = True
    # distilled to 8 steps without CFG (the model card's 9 "steps" were 8 forwards in older diffusers)
    ui_defaults = {**ZImage.ui_defaults, "steps": 8, "cfg_scale": 1.0}


class ZImageBase(ZImage):
    name = "zimage"
    label = "Z-Image"


FAMILIES = (ZImageTurbo(), ZImageBase())
