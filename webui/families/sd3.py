"""Stable Diffusion 3 Medium and 3.5 Medium / Large / Large Turbo: an MMDiT on flow matching, three text encoders.

What differs from the other families, all answered here so the engine stays family-blind:
- **Flow matching** with a static shift of 3.0 (`FlowVelocity`, `SD3Schedule`); "Automatic"
  means Simple, which for SD3 is exactly StableDiffusion3Pipeline's schedule: t from 1 down to
  the trained sigma_min (not 1/n as Flux's), then shifted.
- **Text.** CLIP-L and CLIP-G penultimate hidden states (no final norm), concatenated and
  zero-padded to T5's width, then T5-XXL's sequence after them; the pooled vector is
  CLIP-L's and CLIP-G's projected pooled outputs side by side. CLIP reads the prompt in 75-token
  chunks whose states follow each other, as AUTOMATIC1111 does for SD3 (a prompt within 75 tokens is
  exactly the reference pipeline's; it cuts longer ones), pooled from the first chunk. T5 reads the
  whole prompt as AUTOMATIC1111 does for SD3 (setting `sd3_t5_tokens` "CLIP chunks", the default): padded
  or cut to the CLIP part's length, 77 tokens per chunk (so a pasted A1111 prompt gives its image; 77 is
  also what Stability's sd3_infer.py and ComfyUI pad a short prompt to), without emphasis; or, set to
  "256", as StableDiffusion3Pipeline's default max_sequence_length, with emphasis. Emphasis applies to
  CLIP. A shorter prompt in the CFG batch gets empty CLIP chunks (core.conditioning.pad_to_chunks).
- **T5 is optional.** Without a T5 file the model runs on the two CLIPs with a zero T5 sequence (of
  the length above), exactly as the reference pipeline does without `text_encoder_3`; the load notes and the
  infotext ("T5: none") say so.
- **Files.** diffusers folders (`transformer/`, `text_encoder_3/`, `tokenizer_3/`), Stability's
  single files (`model.diffusion_model.joint_blocks.*` + `first_stage_model.*`, optionally with
  ComfyUI's `text_encoders.clip_l/clip_g/t5xxl.transformer.*`), read by diffusers' own conversion
  functions; separate `clip_l`, `clip_g`, `t5xxl` files from models/text_encoder.
- **Variants** are told apart by tensors: 3.5 Medium has dual attention (`attn2`) and qk-norm,
  3.5 Large qk-norm only, SD3 Medium neither. Large Turbo has Large's tensors: a file or folder
  whose name says "turbo" (or a sidecar naming `sd35-large-turbo`) is Turbo.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..core.parameterisation import FlowVelocity, Parameterisation
from ..core.schedules import FlowSchedule
from .base import Family, LatentFormat, LayerChoice, Shapes
from .t5_text import t5_clip_length_sequence, t5_sequence

# previews: TAESD3, or the published least-squares latent -> RGB fit for SD3's VAE (as AUTOMATIC1111 and ComfyUI use)
SD3_LATENT = LatentFormat(channels=16, tiny_vae="taesd3", preview_rgb=(
    (-0.0645, 0.0177, 0.1052), (0.0028, 0.0312, 0.0650), (0.1848, 0.0762, 0.0360), (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364), (-0.0020, 0.1203, 0.0284), (0.0855, 0.0118, 0.0283), (-0.0539, 0.0658, 0.1047),
    (-0.0057, 0.0116, 0.0700), (-0.0412, 0.0281, -0.0039), (0.1106, 0.1171, 0.1220), (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207), (-0.0120, -0.0055, -0.0867), (-0.0749, -0.0634, -0.0456), (-0.1418, -0.1457, -0.1259)))
_PARAMETERISATION = FlowVelocity()
PREFIXES = ("model.diffusion_model.", "")
_MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
_DUAL = "joint_blocks.0.x_block.attn2.qkv.weight"
_QK_NORM = "joint_blocks.0.x_block.attn.ln_q.weight"
T5_TOKENS = 256
T5_LENGTH_SETTING = "sd3_t5_tokens"
T5_LIKE_A1111 = "CLIP chunks"  # the setting's default; "256" is StableDiffusion3Pipeline's max_sequence_length
# ComfyUI's / Stability's prefixes inside an all-in-one file
AIO_TEXT = {"text_encoder": "text_encoders.clip_l.transformer.", "text_encoder_2": "text_encoders.clip_g.transformer.",
            "text_encoder_3": "text_encoders.t5xxl.transformer."}
VAE_PREFIX = "first_stage_model."


def stability_prefix(shapes: Shapes) -> str | None:
    """The prefix of Stability's transformer keys in this file, or None when it has none."""
    return next((p for p in PREFIXES if p + _MARKER in shapes), None)


def variant_of(shapes: Shapes) -> str | None:
    """"sd3" / "sd35-medium" / "sd35-large" from a single file's tensor names, None when not SD3."""
    prefix = stability_prefix(shapes)
    if prefix is None:
        return None
    if prefix + _DUAL in shapes:
        return "sd35-medium"
    return "sd35-large" if prefix + _QK_NORM in shapes else "sd3"


def variant_of_config(config: dict[str, Any]) -> str | None:
    """The same question for a diffusers transformer config."""
    if config.get("_class_name") != "SD3Transformer2DModel":
        return None
    if config.get("dual_attention_layers"):
        return "sd35-medium"
    return "sd35-large" if config.get("qk_norm") else "sd3"


class SD3Schedule(FlowSchedule):
    """Flow schedule whose Simple is StableDiffusion3Pipeline's: shift(linspace(1, sigma_min, n))."""

    def simple_sigmas(self, n: int) -> torch.Tensor:
        shift = float((self.config or {}).get("shift", 3.0))
        steps = int((self.config or {}).get("num_train_timesteps", 1000))
        lowest = torch.tensor(1 / steps, dtype=torch.float32)
        lowest = float(shift * lowest / (1 + (shift - 1) * lowest))  # the scheduler's sigma_min, already shifted
        t = torch.linspace(1.0, lowest, n, dtype=torch.float64)
        return (shift * t / (1 + (shift - 1) * t)).float()


class SD3(Family):
    """Shared by every SD3 variant; they differ in the transformer's shape and their defaults."""

    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    optional_components = ("text_encoder_3",)
    pooled_encoder = "text_encoder_2"
    openclip_encoders = ("text_encoder_2",)  # CLIP-G pads with "!" as SDXL's does (ComfyUI's SD3 tokenizer)
    latent = SD3_LATENT
    base_size = 1024
    denoiser_component = "transformer"
    automatic_schedule = "Simple"
    ddpm_samplers = False
    # per-family defaults the UI applies when such a model is selected (Stability's recommended settings)
    ui_defaults: ClassVar[dict[str, Any]] = {"width": 1024, "height": 1024, "steps": 28, "cfg_scale": 4.5,
                                             "sampler_name": "Euler", "scheduler": "Automatic"}
    # Skip Layer Guidance as Stability recommends it for this variant (None: not recommended)
    slg_layers: ClassVar[tuple[int, ...] | None] = None

    def noise_schedule(self, scheduler_config: dict[str, Any]) -> FlowSchedule:
        return SD3Schedule.flow(scheduler_config, patch=2)

    def parameterisation(self, prediction_type: str) -> Parameterisation:
        return _PARAMETERISATION

    def layer_choice(self, clip_skip: int = 1) -> LayerChoice:
        return LayerChoice(max(1, int(clip_skip)) + 1, False)  # penultimate hidden state, no final norm

    def matches_folder(self, index: dict[str, Any], components: dict[str, dict[str, Any]]) -> bool:
        return variant_of_config(components.get("transformer", {})) == self.name

    def detect_file(self, shapes: Shapes) -> dict[str, Any] | None:
        return {"inpainting": False} if variant_of(shapes) == self.name else None

    def denoiser_kwargs(self, pooled: torch.Tensor | None, extra: torch.Tensor | None) -> dict[str, Any]:
        return {"pooled_projections": pooled}

    def call_denoiser(self, module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      kwargs: dict[str, Any]) -> torch.Tensor:
        """The timestep in [0, 1000] as StableDiffusion3Pipeline passes it; no packing (the model patchifies)."""
        return module(hidden_states=x, timestep=t.to(x.dtype), encoder_hidden_states=context, return_dict=False,
                      **kwargs)[0]

    def module_factory(self, component: str, config: dict[str, Any]) -> Callable[[], torch.nn.Module]:
        if component == "transformer":
            from diffusers import SD3Transformer2DModel

            return lambda: SD3Transformer2DModel.from_config(config)
        if component == "text_encoder_3":
            from transformers import T5Config, T5EncoderModel

            clean = {k: v for k, v in config.items() if not k.startswith("_")}
            return lambda: T5EncoderModel(T5Config(**clean))
        return super().module_factory(component, config)

    def load_tokenizer(self, component: str, folder: Any) -> Any:
        """T5's tokenizer from the folder's tokenizer_3/ (never fetched); the CLIPs' are the shipped ones."""
        if component != "text_encoder_3":
            return None
        from transformers import T5TokenizerFast

        return self.local_tokenizer(folder, T5TokenizerFast,
                                    "the T5 tokenizer is missing: SD3 needs tokenizer_3/tokenizer.json")

    # ---- text -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, encoder: Any, text: str) -> Any:
        """[CLIP-L | CLIP-G] (zero-padded to T5's width), then T5's sequence; pooled = [CLIP-L, CLIP-G]."""
        model = encoder.model
        width = int(model.unet.config.joint_attention_dim)
        hidden_l, pooled_l = encoder.clip_chunks("text_encoder", text)
        hidden_g, pooled_g = encoder.clip_chunks("text_encoder_2", text)
        chunks = min(len(hidden_l), len(hidden_g))  # one tokenizer vocabulary: the same count
        clip = torch.cat([torch.cat(hidden_l[:chunks], dim=1), torch.cat(hidden_g[:chunks], dim=1)], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        t5 = model.text_encoders.get("text_encoder_3")
        like_a1111 = getattr(encoder, "options", {}).get(T5_LENGTH_SETTING, T5_LIKE_A1111) == T5_LIKE_A1111
        length = clip.shape[1] if like_a1111 else T5_TOKENS
        if t5 is None:  # as StableDiffusion3Pipeline without text_encoder_3 (A1111 without T5): zeros
            sequence = torch.zeros(1, length, width, device=clip.device)
        elif like_a1111:
            sequence = t5_clip_length_sequence(t5, model.tokenizers["text_encoder_3"], encoder.weighted_pieces(text),
                                               length)
        else:
            sequence = t5_sequence(encoder, t5, model.tokenizers["text_encoder_3"], encoder.weighted_pieces(text),
                                   length)
        embeds = torch.cat([clip, sequence.to(clip.device)], dim=1)
        return encoder.conditioning(embeds, torch.cat([pooled_l, pooled_g], dim=-1).float())

    def infotext_fields(self, model: Any, options: dict[str, Any] | None = None) -> dict[str, str]:
        """What the image's parameters add for this family: that T5 was not used, when it was not; T5's length
        when it is not AUTOMATIC1111's (which writes no key: its images paste as they were made)."""
        fields = {} if "text_encoder_3" in model.text_encoders else {"T5": "none"}
        length = (options or {}).get(T5_LENGTH_SETTING, T5_LIKE_A1111)
        return {**fields, "T5 tokens": length} if length != T5_LIKE_A1111 else fields

    def run_warnings(self, model: Any) -> list[str]:
        if "text_encoder_3" in model.text_encoders:
            return []
        return ["No T5 text encoder: SD 3 ran on CLIP-L and CLIP-G only (weaker prompt following, no long "
                "prompts). Put t5xxl_fp16.safetensors and its tokenizer folder in models/text_encoder to use it."]

    # ---- single files -----------------------------------------------------------------------------

    # what a file without them takes from models/<kind> (first match wins); T5 may be absent altogether
    companion_files = {"text_encoder": ("text_encoder", ("clip_l.safetensors", "clip_l*.safetensors")),
                       "text_encoder_2": ("text_encoder", ("clip_g.safetensors", "clip_g*.safetensors")),
                       "text_encoder_3": ("text_encoder", ("t5xxl_fp16.safetensors", "t5xxl*.safetensors",
                                                           "t5*.safetensors")),
                       "vae": ("vae", ("sd3*vae*.safetensors", "sd35*vae*.safetensors", "*sd3*.safetensors"))}
    tokenizer_classes = {"text_encoder_3": "T5"}

    def companion_state_dict(self, component: str, tensors: dict[str, torch.Tensor],
                             configs: Any) -> dict[str, torch.Tensor]:
        """A separate clip_l file has no text projection: SD3 uses CLIP-L's pooled output as it is (identity),
        as diffusers' single-file loader and ComfyUI do."""
        tensors = super().companion_state_dict(component, tensors, configs)
        if component == "text_encoder" and "text_projection.weight" not in tensors:
            width = int(configs["text_encoder"]["hidden_size"])
            tensors = {**tensors, "text_projection.weight": torch.eye(width)}
        return tensors

    def split_single_file(self, tensors: dict[str, torch.Tensor], configs: Any) -> tuple[dict, dict]:
        """Stability's transformer (bare or under `model.diffusion_model.`), its `first_stage_model.` VAE and
        ComfyUI's `text_encoders.*` encoders, each through diffusers' own conversion function."""
        from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                         convert_sd3_t5_checkpoint_to_diffusers,
                                                         convert_sd3_transformer_checkpoint_to_diffusers)

        from ..model_manager.convert import vae_to_diffusers

        prefix = stability_prefix({k: () for k in tensors}) or ""
        others = (*AIO_TEXT.values(), VAE_PREFIX, "vae.")
        mine = {k: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(others)}
        rest = {k: v for k, v in tensors.items() if k not in mine}
        working = dict(mine)  # diffusers' function pops what it converts: what stays was not used
        components: dict[str, dict[str, torch.Tensor]] = {
            "transformer": convert_sd3_transformer_checkpoint_to_diffusers(working)}
        rest.update(working)
        for component, text_prefix in AIO_TEXT.items():
            part = {k: v for k, v in rest.items() if k.startswith(text_prefix)}
            if not part:
                continue
            rest = {k: v for k, v in rest.items() if k not in part}
            if component == "text_encoder_3":
                converted = convert_sd3_t5_checkpoint_to_diffusers(part)
            else:
                converted = convert_ldm_clip_checkpoint(part, text_prefix)
            converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
            components[component] = self.companion_state_dict(component, converted, configs)
        for vae_prefix in (VAE_PREFIX, "vae."):
            part = {k[len(vae_prefix):]: v for k, v in rest.items() if k.startswith(vae_prefix)}
            if part:
                rest = {k: v for k, v in rest.items() if not k.startswith(vae_prefix)}
                components["vae"] = part if any(k.startswith("encoder.down_blocks.") for k in part) \
                    else vae_to_diffusers(part, configs["vae"])[0]
                break
        return components, rest

    def join_single_file(self, components: dict[str, dict[str, torch.Tensor]], configs: Any) -> dict:
        """Stability's layout: the transformer under `model.diffusion_model.`, the VAE under `first_stage_model.`
        (original layout), and whatever text encoders are given under ComfyUI's prefixes."""
        from ..model_manager.convert import vae_to_original
        from .sd3_layout import from_diffusers

        out = from_diffusers(components["transformer"], configs["transformer"], PREFIXES[0])
        if "vae" in components:
            out.update({VAE_PREFIX + k: v for k, v in vae_to_original(components["vae"], configs["vae"]).items()})
        for component, text_prefix in AIO_TEXT.items():
            if component in components:
                out.update({text_prefix + k: v for k, v in components[component].items()})
        return out


class SD3Medium(SD3):
    name = "sd3"
    label = "SD 3 Medium"
    ui_defaults = dict(SD3.ui_defaults, steps=28, cfg_scale=7.0)  # Stability's SD3 Medium settings


class SD35Medium(SD3):
    name = "sd35-medium"
    label = "SD 3.5 Medium"
    ui_defaults = dict(SD3.ui_defaults, steps=40, cfg_scale=4.5)
    # Stability's SD 3.5 Medium recommendation (and ComfyUI's SkipLayerGuidanceSD3 default): layers 7, 8, 9
    slg_layers = (7, 8, 9)


class SD35Large(SD3):
    name = "sd35-large"
    label = "SD 3.5 Large"
    ui_defaults = dict(SD3.ui_defaults, steps=28, cfg_scale=3.5)


class SD35LargeTurbo(SD35Large):
    """Large's tensors, distilled to few steps without CFG: only a name or sidecar says it is Turbo."""

    name = "sd35-large-turbo"
    label = "SD 3.5 Large Turbo"
    ui_defaults = dict(SD3.ui_defaults, steps=4, cfg_scale=1.0)
    name_hints: ClassVar[tuple[str, ...]] = ("turbo",)

    def detect_file(self, shapes: Shapes) -> dict[str, Any] | None:
        return None  # the same tensors as Large: `name_hints` decide

    def matches_folder(self, index: dict[str, Any], components: dict[str, dict[str, Any]]) -> bool:
        return False


FAMILIES = (SD3Medium(), SD35Medium(), SD35Large(), SD35LargeTurbo())
