"""Flux.1 dev and schnell: a rectified-flow transformer, CLIP-L pooled + T5-XXL text, 16-channel latents.

What differs from the UNet families, all answered here so the engine stays family-blind:
- **Flow matching.** `FlowVelocity` (the network predicts noise - x0) and a `FlowSchedule`
  (sigma = flow time, shifted: resolution-dependent for dev, none for schnell); "Automatic"
  means Simple, which on a flow schedule is exactly diffusers' FluxPipeline schedule.
- **Tokens, not a latent grid.** The transformer sees 2x2 latent patches as tokens
  (`pack`/`unpack`, as FluxPipeline packs them) with 3-axis position ids.
- **Text.** T5's hidden states are the sequence (256 tokens for schnell, 512 for dev, with
  AUTOMATIC1111 emphasis), CLIP-L's pooled output the vector; no CLIP hidden states.
- **Distilled guidance.** dev takes the guidance value as an input (Forge's "Distilled CFG
  Scale"); real CFG with a negative pass only when CFG scale is not 1.
- **Files.** diffusers folders (`transformer/`, `text_encoder_2/`, `tokenizer_2/`) and BFL's
  single-file transformer (`double_blocks.*`), converted by diffusers' own function.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..core.parameterisation import FlowVelocity, Parameterisation
from ..core.schedules import FlowSchedule
from .base import Family, LatentFormat, Shapes
from .t5_text import t5_sequence

# previews: TAEF1, or the published least-squares latent -> RGB fit for Flux.1's VAE (ComfyUI's, without its bias)
FLUX_LATENT = LatentFormat(channels=16, tiny_vae="taef1", preview_rgb=(
    (-0.0404, 0.0159, 0.0609), (0.0043, 0.0298, 0.0850), (0.0328, -0.0749, -0.0503), (-0.0245, 0.0085, 0.0549),
    (0.0966, 0.0894, 0.0530), (0.0035, 0.0399, 0.0123), (0.0583, 0.1184, 0.1262), (-0.0191, -0.0206, -0.0306),
    (-0.0324, 0.0055, 0.1001), (0.0955, 0.0659, -0.0545), (-0.0504, 0.0231, -0.0013), (0.0500, -0.0008, -0.0088),
    (0.0982, 0.0941, 0.0976), (-0.1233, -0.0280, -0.0897), (-0.0005, -0.0530, -0.0020), (-0.1273, -0.0932, -0.0680)))
_PARAMETERISATION = FlowVelocity()
# BFL's transformer keys, bare or under ComfyUI's / Forge's prefix
BFL_PREFIXES = ("", "model.diffusion_model.")
_DOUBLE = "double_blocks.0.img_attn.qkv.weight"
_GUIDANCE = "guidance_in.in_layer.weight"
_IMG_IN = "img_in.weight"


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): 2x2 patches as tokens, FluxPipeline's order."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width`."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (0, row, column) of each token of a latent of `height` x `width`."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def pad_control(kwargs: dict[str, Any], extra: int) -> None:
    """ControlNet block samples cover the latents' tokens; with `extra` reference tokens after them (Kontext)
    the samples get zeros there, so the residuals reach the image tokens only."""
    for key in ("controlnet_block_samples", "controlnet_single_block_samples"):
        if kwargs.get(key) is not None:
            kwargs[key] = [torch.nn.functional.pad(s, (0, 0, 0, extra)) for s in kwargs[key]]


def bfl_prefix(shapes: Shapes) -> str | None:
    """The prefix BFL's transformer keys carry in this file, or None when it has none of them."""
    return next((p for p in BFL_PREFIXES if p + _DOUBLE in shapes), None)


class Flux(Family):
    """Shared by dev and schnell; the two differ in guidance input, T5 length and schedule shift."""

    text_encoders = ("text_encoder", "text_encoder_2")
    pooled_encoder = "text_encoder"
    latent = FLUX_LATENT
    base_size = 1024
    denoiser_component = "transformer"
    automatic_schedule = "Simple"
    ddpm_samplers = False
    max_sequence_length: ClassVar[int] = 512
    ui_defaults = {"width": 1024, "height": 1024, "steps": 20, "cfg_scale": 1.0, "sampler_name": "Euler",
                   "scheduler": "Simple"}  # Forge's Flux preset: no real CFG, Euler / Simple

    def noise_schedule(self, scheduler_config: dict[str, Any]) -> FlowSchedule:
        return FlowSchedule.flow(scheduler_config, patch=2)

    def parameterisation(self, prediction_type: str) -> Parameterisation:
        return _PARAMETERISATION

    def matches_folder(self, index: dict[str, Any], components: dict[str, dict[str, Any]]) -> bool:
        transformer = components.get("transformer", {})
        return (transformer.get("_class_name") == "FluxTransformer2DModel"
                and bool(transformer.get("guidance_embeds")) == self.distilled_guidance
                and (index.get("_class_name") == KONTEXT_PIPELINE) == self.image_reference)

    def detect_file(self, shapes: Shapes) -> dict[str, Any] | None:
        """BFL's layout: dev has the guidance embedder, schnell not; Fill's input is 384 wide."""
        prefix = bfl_prefix(shapes)
        if prefix is None or (prefix + _GUIDANCE in shapes) != self.distilled_guidance:
            return None
        width = shapes.get(prefix + _IMG_IN, (0, 64))[1]
        return {"inpainting": width == 384}

    def configure_inpainting(self, components: dict[str, dict[str, Any]]) -> None:
        """Fill: latents + masked-image latents + the 8x8 mask, packed: 64 + 64 + 256 inputs."""
        components["transformer"]["in_channels"] = 384
        components["transformer"]["out_channels"] = 64

    def inpaint_conditioning(self, mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
        """Fill: the masked image's latents, then the mask with each 8x8 pixel block as 64 channels
        (FluxFillPipeline's order; packing then gives its 64 + 64 + 256 token features)."""
        b, _, h, w = masked_latents.shape
        factor = mask.shape[-1] // w
        blocks = mask[:, 0].reshape(b, h, factor, w, factor).permute(0, 2, 4, 1, 3)
        return torch.cat([masked_latents, blocks.reshape(b, factor * factor, h, w)], dim=1)

    def extra_conditioning(self, width: int, height: int, guidance: float = 0.0):
        value = torch.tensor([[float(guidance)]], dtype=torch.float32)
        return value, value

    def denoiser_kwargs(self, pooled: torch.Tensor | None, extra: torch.Tensor | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"pooled_projections": pooled}
        if extra is not None:
            kwargs["guidance"] = extra[:, 0]
        return kwargs

    def call_denoiser(self, module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      kwargs: dict[str, Any]) -> torch.Tensor:
        """Pack, call with position ids and the timestep as a fraction (as FluxPipeline does), unpack."""
        height, width = x.shape[-2:]
        kwargs = dict(kwargs)
        guidance = kwargs.pop("guidance", None)
        reference = kwargs.pop("reference_latents", None)
        control = kwargs.pop("transformer_control", None)  # a feature's ControlNets: their block samples
        tokens, ids = pack(x), image_ids(height, width, x.device, x.dtype)
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device, dtype=x.dtype)
        if control is not None:  # they see the noisy latents' tokens only (not Fill's extra channels)
            kwargs.update(control(hidden_states=pack(x[:, :self.latent.channels]), timestep=t.to(x.dtype) / 1000,
                                  guidance=guidance, pooled_projections=kwargs.get("pooled_projections"),
                                  encoder_hidden_states=context, txt_ids=txt_ids, img_ids=ids))
        if not module.config.guidance_embeds:
            guidance = None
        if reference is not None:  # Kontext: the reference image's tokens follow, at position index 1
            ref_ids = image_ids(*reference.shape[-2:], x.device, x.dtype)
            ref_ids[:, 0] = 1
            tokens = torch.cat([tokens, pack(reference.to(x.dtype))], dim=1)
            ids = torch.cat([ids, ref_ids])
            pad_control(kwargs, ref_ids.shape[0])
        out = module(hidden_states=tokens, timestep=t.to(x.dtype) / 1000, guidance=guidance,
                     encoder_hidden_states=context, txt_ids=txt_ids, img_ids=ids, return_dict=False, **kwargs)[0]
        return unpack(out[:, :(height // 2) * (width // 2)], height, width)

    def module_factory(self, component: str, config: dict[str, Any]) -> Callable[[], torch.nn.Module]:
        if component == "transformer":
            from diffusers import FluxTransformer2DModel

            return lambda: FluxTransformer2DModel.from_config(config)
        if component == "text_encoder_2":
            from transformers import T5Config, T5EncoderModel

            clean = {k: v for k, v in config.items() if not k.startswith("_")}
            return lambda: T5EncoderModel(T5Config(**clean))
        return super().module_factory(component, config)

    def load_tokenizer(self, component: str, folder: Any) -> Any:
        """T5's tokenizer from the folder's tokenizer_2/ (never fetched); CLIP's is the shipped one."""
        if component != "text_encoder_2":
            return None
        from transformers import T5TokenizerFast

        return self.local_tokenizer(folder, T5TokenizerFast,
                                    "the T5 tokenizer is missing: Flux needs tokenizer_2/tokenizer.json")

    # ---- text -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, encoder: Any, text: str) -> Any:
        """T5 hidden states (with emphasis) as the sequence, CLIP-L's pooled output as the vector."""
        model = encoder.model
        pieces = encoder.weighted_pieces(text)
        plain = "".join(part for part, _ in pieces)
        clip, clip_tokens = model.text_encoders["text_encoder"], model.tokenizers["text_encoder"]
        ids = clip_tokens(plain, padding="max_length", max_length=clip_tokens.model_max_length,
                          truncation=True).input_ids
        clip_device = next(clip.parameters()).device
        pooled = clip(input_ids=torch.tensor([ids], device=clip_device)).pooler_output.float()

        sequence = t5_sequence(encoder, model.text_encoders["text_encoder_2"], model.tokenizers["text_encoder_2"],
                               pieces, self.max_sequence_length)
        return encoder.conditioning(sequence, pooled)

    # ---- single files -----------------------------------------------------------------------------

    # a file holding only the transformer takes the rest from these folders (models/<kind>), first match wins
    companion_files = {"vae": ("vae", ("ae.safetensors", "*flux*ae*.safetensors", "*flux*vae*.safetensors")),
                       "text_encoder": ("text_encoder", ("clip_l.safetensors", "clip_l*.safetensors")),
                       "text_encoder_2": ("text_encoder", ("t5xxl_fp16.safetensors", "t5xxl*.safetensors",
                                                           "t5*.safetensors"))}
    tokenizer_classes = {"text_encoder_2": "T5"}

    def split_single_file(self, tensors: dict[str, torch.Tensor], configs: Any) -> tuple[dict, dict]:
        """BFL's transformer (bare or under `model.diffusion_model.`), and in all-in-one files ComfyUI's
        `text_encoders.clip_l.` / `text_encoders.t5xxl.` encoders and the `vae.` autoencoder."""
        from ..model_manager.convert import vae_to_diffusers
        from .flux_layout import to_diffusers

        prefix = bfl_prefix({k: () for k in tensors}) or ""
        transformer, rest = to_diffusers(tensors, configs["transformer"], prefix)
        components: dict[str, dict[str, torch.Tensor]] = {"transformer": transformer}
        for component, prefixes in AIO_PREFIXES.items():
            found = next((p for p in prefixes if any(k.startswith(p) for k in rest)), None)
            if found is None:
                continue
            part = {k[len(found):]: v for k, v in rest.items() if k.startswith(found)}
            rest = {k: v for k, v in rest.items() if not k.startswith(found)}
            if component == "vae" and not any(k.startswith("encoder.down_blocks.") for k in part):
                part, _ = vae_to_diffusers(part, configs["vae"])
            components[component] = part
        return components, rest

    def join_single_file(self, components: dict[str, dict[str, torch.Tensor]], configs: Any) -> dict:
        """BFL's transformer under `model.diffusion_model.` plus whatever other components are given,
        under ComfyUI's all-in-one prefixes (the VAE in the original layout)."""
        from ..model_manager.convert import vae_to_original
        from .flux_layout import from_diffusers

        out = from_diffusers(components["transformer"], configs["transformer"], BFL_PREFIXES[1])
        for component, prefixes in AIO_PREFIXES.items():
            if component in components:
                part = components[component]
                if component == "vae":
                    part = vae_to_original(part, configs["vae"])
                out.update({prefixes[0] + k: v for k, v in part.items()})
        return out


# ComfyUI's all-in-one prefixes (the first is what `join_single_file` writes)
AIO_PREFIXES = {"text_encoder": ("text_encoders.clip_l.transformer.", "text_encoders.clip_l."),
                "text_encoder_2": ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl."),
                "vae": ("vae.", "first_stage_model.")}


class FluxDev(Flux):
    name = "flux-dev"
    label = "Flux.1 dev"
    distilled_guidance = True
    max_sequence_length = 512

    def file_variant(self, file_name: str, metadata: dict[str, str]) -> str | None:
        """Kontext dev has dev's tensors exactly: told by its name (flux1-kontext-dev.safetensors) or
        a metadata value naming it (modelspec.architecture / title)."""
        said = [file_name, *(str(v) for k, v in metadata.items() if k.startswith("modelspec."))]
        return FluxKontext.name if any("kontext" in text.lower() for text in said) else None


class FluxKontext(FluxDev):
    """FLUX.1 Kontext dev: dev's architecture; the img2img image is a reference in the token sequence
    (FluxKontextPipeline's layout), so an edit starts from noise and looks at the image throughout."""

    name = "flux-kontext"
    label = "Flux.1 Kontext dev"
    image_reference = True

    def detect_file(self, shapes: Shapes) -> dict[str, Any] | None:
        return None  # dev's tensors: detected as dev, then `FluxDev.file_variant` says Kontext

    def file_variant(self, file_name: str, metadata: dict[str, str]) -> str | None:
        return None


class FluxSchnell(Flux):
    name = "flux-schnell"
    label = "Flux.1 schnell"
    distilled_guidance = False
    max_sequence_length = 256
    ui_defaults = {**Flux.ui_defaults, "steps": 4}  # timestep-distilled: 1-4 steps


KONTEXT_PIPELINE = "FluxKontextPipeline"
FAMILIES = (FluxDev(), FluxSchnell(), FluxKontext())
