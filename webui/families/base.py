"""What every model family answers, so the engine never asks "is this SDXL?".

A family adapter owns what differs between model families: how its files are recognised
(tensor names and shapes, diffusers folders), which text encoders it has and which
hidden layer it reads from them, its latent format (channels, VAE factor, preview
colours), its default size, its extra conditioning (SDXL's size and aesthetic ids), and
the keyword arguments its denoiser takes. The engine, samplers, img2img and inpainting
call these methods; adding a family is one adapter module in `webui/families/` plus its
configs in `webui/model_manager/configs/<name>/` and its tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..core.parameterisation import VP_PARAMETERISATIONS, Parameterisation
from ..core.schedules import DiscreteSchedule

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class LayerChoice:
    """Which hidden state a text encoder's output is read from."""

    from_end: int          # 1 = last hidden layer
    final_norm: bool       # apply the encoder's final layer norm


@dataclass(frozen=True)
class LatentFormat:
    """The autoencoder's latent space as the sampler and previews see it."""

    channels: int = 4
    # 4 rows (latent channels) x 3 columns (RGB): a least-squares latent -> colour fit for previews
    preview_rgb: tuple[tuple[float, float, float], ...] = ()
    # the tiny autoencoder for this latent space (a folder in models/VAE-approx), for TAESD previews
    tiny_vae: str = ""


class Family:
    """Base adapter: a UNet denoiser with CLIP text encoders (the Stable Diffusion shape).

    Subclasses set the class attributes and override what differs. Instances carry no
    state: one per family, shared by every model of that family.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    # diffusers component names of the text encoders, in the order their outputs are concatenated
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    # the encoder whose pooled output conditions the denoiser (None: no pooled conditioning)
    pooled_encoder: ClassVar[str | None] = None
    # text encoders whose tokenizer pads with "!" (OpenCLIP) rather than the end token (OpenAI CLIP)
    openclip_encoders: ClassVar[tuple[str, ...]] = ()
    latent: ClassVar[LatentFormat] = LatentFormat()
    base_size: ClassVar[int] = 512
    # Align Your Steps reference sigmas (10 steps, sigma_max .. sigma_min) for this family
    ays_sigmas: ClassVar[tuple[float, ...]] = ()
    # single-file detection: a text-encoder tensor only this family's files have
    marker_keys: ClassVar[tuple[str, ...]] = ()
    # the UNet's cross-attention width, to name the family of a file whose text encoder is missing
    context_width: ClassVar[int] = 0
    # whether the SD 2.x question "epsilon or v?" must be settled by probing the model
    prediction_uncertain: ClassVar[bool] = False
    # SDXL-based families share ControlNets, IP-Adapters and LoRA layouts
    sdxl_like: ClassVar[bool] = False
    # the schedule "Automatic" means for this family (None: each sampler's own default)
    automatic_schedule: ClassVar[str | None] = None
    # whether the DDPM schedulers (DDIM, PLMS, UniPC, LCM) fit the model's parameterisation
    ddpm_samplers: ClassVar[bool] = True
    # guidance-distilled: the network takes the guidance value as an input ("Distilled CFG Scale")
    distilled_guidance: ClassVar[bool] = False
    # what the generation tabs show when a checkpoint of this family is selected (Forge's presets per family);
    # keys: width, height, steps, cfg_scale, sampler_name, scheduler (request fields)
    ui_defaults: ClassVar[dict[str, Any]] = {"width": 512, "height": 512, "steps": 20, "cfg_scale": 7.0,
                                             "sampler_name": "DPM++ 2M", "scheduler": "Automatic"}
    # components a checkpoint may lack and still run (SD3's T5): the loader notes their absence
    optional_components: ClassVar[tuple[str, ...]] = ()
    # words in a file or folder name that make a model this family when its tensors match a parent family's
    # (SD 3.5 Large Turbo has Large's tensors); see registry.refine_by_name
    name_hints: ClassVar[tuple[str, ...]] = ()

    def noise_schedule(self, scheduler_config: dict[str, Any]) -> DiscreteSchedule:
        """The trained noise levels the samplers step through (DDPM betas from the scheduler config)."""
        return DiscreteSchedule.from_config(scheduler_config, self.ays_sigmas)

    def parameterisation(self, prediction_type: str) -> Parameterisation:
        """What the denoiser's output means (noise or velocity, in VP space)."""
        return VP_PARAMETERISATIONS[prediction_type]

    def default_size(self, prediction_type: str = "epsilon") -> int:
        return self.base_size

    def layer_choice(self, clip_skip: int = 1) -> LayerChoice:
        """The hidden layer the denoiser was trained on; clip skip moves it further from the end."""
        return LayerChoice(max(1, int(clip_skip)), True)

    def tokenizer_pad(self, component: str) -> str:
        return "!" if component in self.openclip_encoders else "end"

    def matches_folder(self, index: dict[str, Any], components: dict[str, dict[str, Any]]) -> bool:
        """Whether a diffusers folder (its model_index.json and component configs) is this family."""
        return False

    def extra_conditioning(self, width: int, height: int,
                           guidance: float = 0.0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-image conditioning besides the text (positive, negative), e.g. SDXL's size ids; `guidance`
        is the request's distilled guidance value (for `distilled_guidance` families)."""
        return None, None

    def encode_prompt(self, encoder: Any, text: str) -> Any:
        """The prompt's conditioning (core.conditioning.Conditioning) when this family encodes text its own
        way (e.g. a T5 sequence plus a CLIP pooled vector); None: the CLIP 77-token chunks of `encoder`."""
        return None

    def detect_file(self, shapes: Shapes) -> Any:
        """(Architecture keyword arguments) when a single file's tensors are this family's own layout that
        the shared UNet detection cannot read (e.g. a transformer); None otherwise."""
        return None

    # the img2img image goes in as reference tokens beside the latents (Kontext-style editing), not only as
    # the start; the denoiser then gets `reference_latents` (the image's clean latents) in its kwargs
    image_reference: ClassVar[bool] = False

    def file_variant(self, file_name: str, metadata: dict[str, str]) -> str | None:
        """Another family's name when a detected file is a variant its tensors cannot tell apart (told by
        its file name or safetensors metadata, e.g. Flux.1 Kontext dev); None: as detected."""
        return None

    def configure_inpainting(self, components: dict[str, dict[str, Any]]) -> None:
        """Widen the denoiser's config for the inpainting variant (mask and masked-image channels)."""
        if "unet" in components:
            components["unet"]["in_channels"] = 9

    def inpaint_conditioning(self, mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
        """The inpainting variant's extra input channels from the full-size mask (B, 1, H, W; 1 = repaint)
        and the masked image's latents: SD's 9-channel UNet takes the mask at latent size, then the latents."""
        small = torch.nn.functional.interpolate(mask, size=tuple(masked_latents.shape[-2:]))
        return torch.cat([small, masked_latents], dim=1)

    def component_tensors(self, component: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A component's tensors under the names its module uses (e.g. a causal LM's `model.` prefix dropped)."""
        return tensors

    def load_tokenizer(self, component: str, folder: Any) -> Any:
        """The tokenizer of a text encoder that is not CLIP (None: the shipped CLIP tokenizer), read from a
        diffusers folder's tokenizer subfolder (`folder`, None for single files)."""
        return None

    @staticmethod
    def local_tokenizer(folder: Any, loader: Any, missing: str) -> Any:
        """`loader.from_pretrained(folder)` offline (never fetched); `missing` says what and where when the
        folder has no tokenizer.json."""
        if folder is None or not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{missing} (looked in {folder})")
        return loader.from_pretrained(str(folder), local_files_only=True)

    def infotext_fields(self, model: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keys this family adds to each image's infotext for a loaded model and the request's settings (e.g. SD3
        run without T5)."""
        return {}

    def run_warnings(self, model: Any) -> list[str]:
        """What the UI and API should tell the user about a result from this model (e.g. SD3 without T5)."""
        return []

    def denoiser_kwargs(self, pooled: torch.Tensor | None, extra: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the denoiser call built from pooled text and extra conditioning."""
        return {}

    # ---- the denoiser and the modules a checkpoint is made of ------------------------------

    # the component that predicts (its diffusers folder name); "transformer" for DiT families
    denoiser_component: ClassVar[str] = "unet"

    def components(self) -> tuple[str, ...]:
        """Every module a checkpoint of this family is built from, in load order."""
        return (self.denoiser_component, "vae", *self.text_encoders)

    def module_factory(self, component: str, config: dict[str, Any]) -> Callable[[], torch.nn.Module]:
        """A constructor for one component from its diffusers/transformers config (called on the meta device)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        if component == "unet":
            return lambda: UNet2DConditionModel.from_config(config)
        if component == "vae":
            return lambda: AutoencoderKL.from_config(config)
        clean = {k: v for k, v in config.items() if not k.startswith("_")}
        projection = (clean.get("architectures") or ["CLIPTextModel"])[0] == "CLIPTextModelWithProjection"
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        return lambda: cls(CLIPTextConfig(**clean))

    # components a single file may leave out, found in models/<kind> by file-name patterns (first match wins)
    companion_files: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}
    # text encoders whose tokenizer is not the shipped CLIP one: the tokenizer_config class it starts with
    tokenizer_classes: ClassVar[dict[str, str]] = {}
    # where a single file keeps each text encoder: (component, key prefix, layout "hf" | "openclip")
    single_file_text_encoders: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    def takes_companions(self) -> bool:
        """Whether a denoiser-only file of this family loads: every text encoder and the VAE have companion files."""
        return all(part in self.companion_files for part in (*self.text_encoders, "vae"))

    def companion_state_dict(self, component: str, tensors: dict[str, torch.Tensor],
                             configs: Any) -> dict[str, torch.Tensor]:
        """A separate component file's tensors as the module expects them (the loader has put VAE files in
        diffusers' layout already); e.g. SD3 gives a clip_l file without a projection its identity one."""
        return tensors

    def split_single_file(self, tensors: dict[str, torch.Tensor], configs: Any) -> tuple[dict, dict]:
        """(diffusers component state dicts, leftover tensors) from a single-file checkpoint of this family.

        The base reads the Stable Diffusion (LDM / SGM) layout; a family published in another
        layout overrides this (and `join_single_file`), e.g. with diffusers' own conversion functions.
        """
        from ..model_manager.convert import ldm_to_diffusers

        return ldm_to_diffusers(tensors, configs, self.single_file_text_encoders)

    def join_single_file(self, components: dict[str, dict[str, torch.Tensor]], configs: Any) -> dict:
        """The single-file layout model sites publish, from diffusers component state dicts."""
        from ..model_manager.convert import diffusers_to_ldm

        return diffusers_to_ldm(components, configs, self.single_file_text_encoders)

    def call_denoiser(self, module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      kwargs: dict[str, Any]) -> torch.Tensor:
        """One prediction (noise or velocity) for a batch: the family's call convention."""
        return module(x, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]

    def __repr__(self) -> str:
        return f"<family {self.name}>"
