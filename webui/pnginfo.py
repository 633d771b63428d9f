"""Generation parameters stored in images by any of the tools in this family.

Everything is normalised to AUTOMATIC1111's infotext (prompt, negative prompt, params),
because that is what Easel writes and what its fields paste from:
- AUTOMATIC1111 / Forge / SD.Next / Fooocus (A1111 scheme) / Easel: PNG `parameters`
  text or JPEG/WebP EXIF UserComment;
- ComfyUI: PNG `prompt` (the API graph): the KSampler's seed/steps/cfg/sampler, its
  positive and negative CLIPTextEncode texts, the checkpoint loader's name, the latent size;
- InvokeAI: `invokeai_metadata` (JSON) or the older `sd-metadata`;
- NovelAI: `Comment` (JSON: prompt, uc, steps, scale, seed, sampler, width, height);
- Fooocus (its own scheme): `parameters` JSON with `fooocus_scheme`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .core.images import read_infotext
from .core.infotext import Infotext, parse_infotext
from .core import unipc
from .core.samplers import AUTOMATIC, SAMPLERS, split_legacy_name
from .model_manager.module_choice import INFOTEXT_PREFIX as MODULE_KEY_PREFIX
from .model_manager.module_choice import SETTING as MODULES_SETTING, pasted_modules
from .features.img2img_feature import fields_from_infotext as img2img_fields
from .features.wildcards import fields_from_params as wildcards_fields
from .features import refiner, token_merging
from .features.guidance import freeu, ngms, pag, sag, slg


@dataclass
class GenerationInfo:
    tool: str                      # "automatic1111", "comfyui", "invokeai", "novelai", "fooocus", "" (none)
    info: Infotext | None          # normalised to A1111 infotext
    raw: dict[str, Any] = field(default_factory=dict)   # every text chunk found, for display

    @property
    def text(self) -> str:
        from .core.infotext import format_parsed

        return format_parsed(self.info) if self.info else ""


def read_generation_info(image: Image.Image) -> GenerationInfo:
    raw = {k: v for k, v in image.info.items() if isinstance(v, str)}
    text = read_infotext(image)
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "fooocus_scheme" in data:
            return GenerationInfo("fooocus", _from_fooocus(data), raw)
        return GenerationInfo("automatic1111", parse_infotext(text), raw)
    for key, parser, tool in (("prompt", _from_comfy, "comfyui"), ("invokeai_metadata", _from_invoke, "invokeai"),
                              ("sd-metadata", _from_invoke_legacy, "invokeai"), ("Comment", _from_novelai, "novelai")):
        if key in raw:
            try:
                info = parser(json.loads(raw[key]), raw)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if info is not None:
                return GenerationInfo(tool, info, raw)
    return GenerationInfo("", None, raw)


def _params(**values: Any) -> dict[str, str]:
    from .core.infotext import format_value

    return {k: format_value(v) for k, v in values.items() if v not in (None, "")}


# ---- ComfyUI ------------------------------------------------------------------------------------

_COMFY_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
                   "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a",
                   "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
                   "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC", "lcm": "LCM"}
_COMFY_SCHEDULERS = {"normal": "Normal", "karras": "Karras", "exponential": "Exponential",
                     "sgm_uniform": "SGM Uniform", "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta"}


def _comfy_text(graph: dict, link: Any) -> str:
    """Follow a link ([node_id, output]) to the text of a CLIPTextEncode-like node."""
    if not isinstance(link, list):
        return ""
    node = graph.get(str(link[0]), {})
    inputs = node.get("inputs", {})
    for key in ("text", "text_g", "prompt"):
        value = inputs.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return _comfy_text(graph, value)
    for key in ("conditioning", "conditioning_1"):
        if key in inputs:
            return _comfy_text(graph, inputs[key])
    return ""


def _from_comfy(graph: dict, raw: dict) -> Infotext | None:
    samplers = [n for n in graph.values() if isinstance(n, dict) and "KSampler" in str(n.get("class_type", ""))]
    if not samplers:
        return None
    inputs = samplers[0]["inputs"]
    seed = inputs.get("seed", inputs.get("noise_seed"))
    width = height = None
    latent = graph.get(str(inputs.get("latent_image", [None])[0]), {}).get("inputs", {})
    if "width" in latent:
        width, height = latent["width"], latent["height"]
    model_name = None
    for node in graph.values():
        if isinstance(node, dict) and "CheckpointLoader" in str(node.get("class_type", "")):
            model_name = str(node["inputs"].get("ckpt_name", "")).rsplit(".", 1)[0] or None
    params = _params(Steps=inputs.get("steps"), Sampler=_COMFY_SAMPLERS.get(inputs.get("sampler_name"),
                                                                              inputs.get("sampler_name")),
                     **{"Schedule type": _COMFY_SCHEDULERS.get(inputs.get("scheduler")), "CFG scale": inputs.get("cfg"),
                        "Seed": seed, "Size": f"{width}x{height}" if width else None, "Model": model_name})
    denoise = inputs.get("denoise")
    if isinstance(denoise, (int, float)) and denoise < 1:
        params["Denoising strength"] = str(denoise)
    return Infotext(_comfy_text(graph, inputs.get("positive")), _comfy_text(graph, inputs.get("negative")), params)


# ---- InvokeAI -----------------------------------------------------------------------------------

_INVOKE_SCHEDULERS = {"euler": ("Euler", None), "euler_a": ("Euler a", None), "euler_k": ("Euler", "Karras"),
                      "dpmpp_2m": ("DPM++ 2M", None), "dpmpp_2m_k": ("DPM++ 2M", "Karras"), "ddim": ("DDIM", None),
                      "unipc": ("UniPC", None), "lcm": ("LCM", None), "heun": ("Heun", None), "lms": ("LMS", None),
                      "dpmpp_sde": ("DPM++ SDE", None), "dpmpp_sde_k": ("DPM++ SDE", "Karras")}


def _from_invoke(data: dict, raw: dict) -> Infotext:
    sampler, schedule = _INVOKE_SCHEDULERS.get(str(data.get("scheduler")), (data.get("scheduler"), None))
    model = data.get("model") or {}
    params = _params(Steps=data.get("steps"), Sampler=sampler,
                     **{"Schedule type": schedule, "CFG scale": data.get("cfg_scale"), "Seed": data.get("seed"),
                        "Size": f"{data['width']}x{data['height']}" if "width" in data else None,
                        "Model": model.get("name") if isinstance(model, dict) else model,
                        "Denoising strength": data.get("strength")})
    return Infotext(str(data.get("positive_prompt", "")), str(data.get("negative_prompt", "")), params)


def _from_invoke_legacy(data: dict, raw: dict) -> Infotext:
    image = data.get("image", {})
    prompt = image.get("prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[0].get("prompt", "") if prompt else ""
    negative = ""
    if "[" in prompt and prompt.rstrip().endswith("]"):  # InvokeAI 2 wrote negatives as [bracketed] text
        head, _, tail = prompt.rpartition("[")
        prompt, negative = head.strip(), tail.rstrip("]").strip()
    sampler, schedule = _INVOKE_SCHEDULERS.get(str(image.get("sampler")), (image.get("sampler"), None))
    params = _params(Steps=image.get("steps"), Sampler=sampler,
                     **{"Schedule type": schedule, "CFG scale": image.get("cfg_scale"), "Seed": image.get("seed"),
                        "Size": f"{image['width']}x{image['height']}" if "width" in image else None,
                        "Model": data.get("model_weights")})
    return Infotext(prompt, negative, params)


# ---- NovelAI ------------------------------------------------------------------------------------

_NOVELAI_SAMPLERS = {"k_euler": "Euler", "k_euler_ancestral": "Euler a", "k_dpmpp_2m": "DPM++ 2M",
                     "k_dpmpp_2s_ancestral": "DPM++ 2S a", "k_dpmpp_sde": "DPM++ SDE", "ddim": "DDIM",
                     "k_lms": "LMS", "k_heun": "Heun"}


def _from_novelai(data: dict, raw: dict) -> Infotext:
    prompt = data.get("prompt") or raw.get("Description", "")
    params = _params(Steps=data.get("steps"), Sampler=_NOVELAI_SAMPLERS.get(data.get("sampler"), data.get("sampler")),
                     **{"CFG scale": data.get("scale"), "Seed": data.get("seed"),
                        "Size": f"{data['width']}x{data['height']}" if "width" in data else None,
                        "Denoising strength": data.get("strength"), "Model": raw.get("Source")})
    return Infotext(str(prompt), str(data.get("uc", "")), params)


# ---- Fooocus ------------------------------------------------------------------------------------


def _from_fooocus(data: dict) -> Infotext:
    size = str(data.get("resolution", "")).strip("()").replace(" ", "").replace(",", "x") or None
    sampler, _ = split_legacy_name(str(data.get("sampler", "")))
    params = _params(Steps=data.get("steps"), Sampler=_COMFY_SAMPLERS.get(sampler, sampler),
                     **{"Schedule type": _COMFY_SCHEDULERS.get(data.get("scheduler")),
                        "CFG scale": data.get("guidance_scale"), "Seed": data.get("seed"), "Size": size,
                        "Model": str(data.get("base_model", "")).rsplit(".", 1)[0] or None})
    return Infotext(str(data.get("full_prompt", data.get("prompt", ""))),
                    str(data.get("full_negative_prompt", data.get("negative_prompt", ""))), params)


# ---- infotext -> request fields -------------------------------------------------------------------


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def infotext_to_fields(info: Infotext) -> dict[str, Any]:
    """GenerationRequest field values an infotext restores (only what it states)."""
    p = info.params
    fields: dict[str, Any] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    ints = {"Steps": "steps", "Seed": "seed", "Hires steps": "hr_second_pass_steps", "Mask blur": "mask_blur",
            "Masked area padding": "inpaint_full_res_padding"}
    floats = {"CFG scale": "cfg_scale", "Denoising strength": "denoising_strength", "Hires upscale": "hr_scale"}
    for key, name in ints.items():
        value = _number(p.get(key, ""))
        if value is not None:
            fields[name] = int(value)
    for key, name in floats.items():
        value = _number(p.get(key, ""))
        if value is not None:
            fields[name] = value
    if "Sampler" in p:
        sampler, legacy = split_legacy_name(p["Sampler"])
        fields["sampler_name"] = sampler
        fields["scheduler"] = p.get("Schedule type") or legacy or AUTOMATIC
    if "Size" in p and "x" in p["Size"]:
        width, _, height = p["Size"].partition("x")
        if _number(width) and _number(height):
            fields["width"], fields["height"] = int(float(width)), int(float(height))
    if any(k.startswith("Hires") for k in p):
        fields["enable_hr"] = True
        if "Hires upscaler" in p:
            fields["hr_upscaler"] = p["Hires upscaler"]
        if "Hires resize" in p and "x" in p["Hires resize"]:
            x, _, y = p["Hires resize"].partition("x")
            fields["hr_resize_x"], fields["hr_resize_y"] = int(float(x)), int(float(y))
        for key, name in (("Hires sampler", "hr_sampler_name"), ("Hires schedule type", "hr_scheduler"),
                          ("Hires prompt", "hr_prompt"), ("Hires negative prompt", "hr_negative_prompt")):
            if key in p:
                fields[name] = p[key]
        # "name [hash]" as AUTOMATIC1111 writes it (the tabs find the installed one); none: the same checkpoint
        fields["hr_checkpoint_name"] = p.get("Hires checkpoint", "")
    overrides: dict[str, Any] = {}
    if "Clip skip" in p and _number(p["Clip skip"]):
        overrides["CLIP_stop_at_last_layers"] = int(float(p["Clip skip"]))
    if p:  # AUTOMATIC1111 writes no RNG key for its default source, the GPU
        overrides["randn_source"] = p.get("RNG", "GPU") if p.get("RNG", "GPU") in ("CPU", "GPU", "NV") else "GPU"
    if p.get("SDE noise") in ("Brownian tree", "Per-step"):
        overrides["sde_noise"] = p["SDE noise"]
    elif split_legacy_name(p.get("Sampler", ""))[0].lower() in _BROWNIAN_SAMPLERS:
        overrides["sde_noise"] = "Brownian tree"  # no key: AUTOMATIC1111's (or Easel's default) Brownian trees
    if p.get("T5 tokens") == "256":  # SD 3's T5 read as diffusers does (no key: AUTOMATIC1111's, the default)
        overrides["sd3_t5_tokens"] = "256"
    for key, setting in (("ENSD", "eta_noise_seed_delta"), ("Sigma min", "sigma_min"), ("Sigma max", "sigma_max"),
                         ("Schedule rho", "rho"), ("Noise multiplier", "initial_noise_multiplier")):
        if key in p and _number(p[key]) is not None:
            overrides[setting] = int(float(p[key])) if setting == "eta_noise_seed_delta" else float(p[key])
    overrides.update(ngms.pasted_overrides(p))
    overrides.update(token_merging.pasted_overrides(p))
    overrides.update(_sampler_setting_overrides(p))
    if p.get("VAE"):  # the separate VAE file it was made with (AUTOMATIC1111 restores it as sd_vae)
        overrides["sd_vae"] = p["VAE"]
    if pasted_modules(p):  # Forge's "Module 1: ae, Module 2: clip_l": its VAE / Text Encoder choice
        overrides[MODULES_SETTING] = pasted_modules(p)
    if overrides:
        fields["override_settings"] = overrides
    if "Variation seed" in p and _number(p["Variation seed"]) is not None:
        fields["subseed"] = int(float(p["Variation seed"]))
        fields["subseed_strength"] = _number(p.get("Variation seed strength", "0")) or 0.0
    if "Seed resize from" in p and "x" in p["Seed resize from"]:
        w, _, h = p["Seed resize from"].partition("x")
        if _number(w) and _number(h):
            fields["seed_resize_from_w"], fields["seed_resize_from_h"] = int(float(w)), int(float(h))
    for key, name in (("Eta", "eta"), ("Eta DDIM", "eta"), ("Sigma churn", "s_churn"), ("Sigma tmin", "s_tmin"),
                      ("Sigma tmax", "s_tmax"), ("Sigma noise", "s_noise"), ("CFG Rescale phi", "cfg_rescale"),
                      ("Distilled CFG Scale", "distilled_cfg_scale")):
        if key in p and _number(p[key]) is not None:
            fields[name] = float(p[key])
    if "CFG interval" in p:
        start, _, end = p["CFG interval"].partition("-")
        if _number(start) is not None and _number(end) is not None:
            fields["cfg_interval_start"], fields["cfg_interval_end"] = float(start), float(end)
    if "Lora composition" in p:
        fields["lora_composition"] = p["Lora composition"]
    if _number(p.get("Lora switch steps", "")):
        fields["lora_switch_steps"] = int(float(p["Lora switch steps"]))
    fields.update(img2img_fields(p))  # img2img, inpainting and soft inpainting keys
    fields.update(wildcards_fields(p))  # Dynamic Prompts' templates go back into the prompts
    if "Face restoration" in p:
        fields["restore_faces"] = True
    if p.get("Tiling", "").strip().lower() == "true":
        fields["tiling"] = True
    for module in (ngms, freeu, pag, sag, slg, refiner):  # guidance add-ons and the refiner
        fields.update(module.pasted_fields(p))
    if "Model" in p or "Model hash" in p:
        fields["checkpoint_hint"] = {"name": p.get("Model", ""), "hash": p.get("Model hash", "")}
    return fields


def _sampler_setting_overrides(p: dict[str, str]) -> dict[str, Any]:
    """UniPC's settings and the Beta schedule's alpha/beta, under AUTOMATIC1111's keys (it writes "Beta schedule
    alpha" but its settings name "Beta scheduler alpha": both are read)."""
    overrides: dict[str, Any] = {}
    for key, setting, default in unipc.INFOTEXT:
        value = p.get(key, "").strip()
        if isinstance(default, bool) and value.lower() in ("true", "false"):
            overrides[setting] = value.lower() == "true"
        elif isinstance(default, int) and not isinstance(default, bool) and _number(value) is not None:
            overrides[setting] = int(float(value))
        elif isinstance(default, str) and value:
            overrides[setting] = value
    for name in ("alpha", "beta"):
        value = _number(p.get(f"Beta schedule {name}", p.get(f"Beta scheduler {name}", "")))
        if value is not None:
            overrides[f"beta_dist_{name}"] = value
    return overrides


# ---- settings-type values: AUTOMATIC1111's "Override settings" list ------------------------------

# infotext keys with no control of their own in a tab; pasted, they are listed for the user to keep or drop
OVERRIDE_KEYS = ("Clip skip", "RNG", "ENSD", "Eta", "Eta DDIM", "Sigma churn", "Sigma tmin", "Sigma tmax",
                 "Sigma noise", "Sigma min", "Sigma max", "Schedule rho", "SDE noise", "VAE", "Noise multiplier",
                 "T5 tokens", "Beta schedule alpha", "Beta schedule beta", "Beta scheduler alpha",
                 "Beta scheduler beta", *(key for key, _, _ in unipc.INFOTEXT), *token_merging.INFOTEXT_KEYS)
_BROWNIAN_SAMPLERS = {s.name.lower() for s in SAMPLERS if s.brownian_noise}


def _is_module_key(key: str) -> bool:
    return key.startswith(MODULE_KEY_PREFIX) and key[len(MODULE_KEY_PREFIX):].isdigit()
# request fields (not settings) those keys restore
_SAMPLER_FIELDS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")


def override_items(info: Infotext) -> list[str]:
    """"Key: value" entries for the settings-type values an infotext states (RNG: GPU when it states none)."""
    p = dict(info.params)
    if p and "RNG" not in p:  # AUTOMATIC1111 writes no RNG key for its default, the GPU
        p["RNG"] = "GPU"
    if "SDE noise" not in p and split_legacy_name(p.get("Sampler", ""))[0].lower() in _BROWNIAN_SAMPLERS:
        p["SDE noise"] = "Brownian tree"  # an SDE image without the key was made with Brownian trees
    modules = [f"{key}: {value}" for key, value in p.items() if _is_module_key(key) and str(value).strip()]
    return [f"{key}: {p[key]}" for key in OVERRIDE_KEYS if str(p.get(key, "")).strip()] + modules


def override_item_fields(items: list[str] | None) -> dict[str, Any]:
    """Request fields (override_settings, eta, s_churn ...) from "Key: value" entries; unknown keys are ignored."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition(": ")
        if sep and (key.strip() in OVERRIDE_KEYS or _is_module_key(key.strip())):
            params[key.strip()] = value.strip()
    if not params:
        return {}
    fields = infotext_to_fields(Infotext("", "", params))
    result = {name: fields[name] for name in _SAMPLER_FIELDS if name in fields}
    overrides = dict(fields.get("override_settings") or {})
    if "RNG" not in params:  # infotext_to_fields assumes GPU for an infotext with no RNG; a list states only itself
        overrides.pop("randn_source", None)
    if overrides:
        result["override_settings"] = overrides
    return result
