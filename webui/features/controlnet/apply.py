"""Turning a request's ControlNet units into what the denoiser adds at every step.

Per unit: pick the control image (or the img2img input), run the preprocessor at the unit's
resolution (pixel perfect: derived from the output size), fit the map to the output size
with the unit's resize mode, and load the model for the current checkpoint. At each step the
denoiser adds each active unit's residuals (within its start/end fraction of the steps) to
the UNet: "Balanced" on both CFG halves, "My prompt is more important" with residuals that
fade towards the shallow layers, "ControlNet is more important" the same but only on the
conditional half, so guidance amplifies the control.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from ...core.request import FieldError, ValidationError
from ..img2img import resize_image
from . import flux, flux_ip_adapter, flux_redux, sd3
from .preprocessors import run_preprocessor
from .units import ControlUnit

SOFT_INJECTION = 0.825  # per-layer decay for the "prompt"/"control is more important" modes


@dataclass
class ControlApplication:
    model: Any              # diffusers ControlNetModel or T2IAdapter
    hint: torch.Tensor      # (1, 3, H, W) in [0, 1], on the model's device
    weight: float
    start: float
    end: float
    mode: int               # index into CONTROL_MODES
    features: list[torch.Tensor] | None = None  # a T2I-Adapter's output: computed once, added every step
    # replaces the text embeddings as the ControlNet's cross-attention input, laid out like the
    # batch: context(batch, copies, uncond_first) (InstantID's IdentityNet reads face tokens)
    context: Any = None

    def active(self, fraction: float) -> bool:
        return self.weight != 0 and self.start <= fraction <= self.end


class ControlUnitError(ValueError):
    user_facing = True


@dataclass
class Controls:
    """Everything a request's units add to the UNet: ControlNet residuals and IP-Adapter image tokens."""
    nets: list[ControlApplication] = field(default_factory=list)
    ip_adapter: Any = None   # features.ip_adapter.IPAdapterPatch, entered around sampling
    # a transformer family's ControlNets: flux.FluxControls (keywords for each call) or sd3.TransformerControls
    # (a pre-hook on the transformer); both: installed(), set_step(fraction, copies, uncond_first), kwargs(...)
    transformer: Any = None
    denoiser_edit: Any = None  # changes the pass's conditioning (flux_redux.ReduxEdit)
    params: dict[str, str] = field(default_factory=dict)  # infotext
    warnings: list[str] = field(default_factory=list)   # for the result ("2 faces found in ...")

    def __bool__(self) -> bool:
        return bool(self.nets) or self.ip_adapter is not None or self.transformer is not None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Context in which the IP-Adapter attention is on the UNet and transformer ControlNets on their model."""
        with ExitStack() as stack:
            if self.ip_adapter is not None:
                stack.enter_context(self.ip_adapter)
            if self.transformer is not None:
                stack.enter_context(self.transformer.installed())
            yield

    def unet_kwargs(self, fraction: float, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict,
                    copies: int, uncond_first: bool) -> dict[str, Any]:
        """Extra UNet arguments for this step; `x` holds only the latent channels."""
        kwargs: dict[str, Any] = {}
        if self.transformer is not None:  # its residuals for this step: as keywords, or added inside the call
            self.transformer.set_step(fraction, copies, uncond_first)
            kwargs.update(self.transformer.kwargs(fraction, copies, uncond_first))
        if self.ip_adapter is not None:
            self.ip_adapter.set_step(fraction)
            image_embeds = self.ip_adapter.image_embeds(x.shape[0] // copies, copies, uncond_first, x.dtype, x.device)
            kwargs["added_cond_kwargs"] = {**added, "image_embeds": image_embeds}
        down, mid, intrablock = residuals(self.nets, fraction, x, t, embeds, added, copies, uncond_first)
        if down is not None:
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if intrablock is not None:  # a new list each step: the UNet pops from it
            kwargs["down_intrablock_additional_residuals"] = list(intrablock)
        return kwargs


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: int) -> int:
    """The preprocessor resolution that lands the map on the output pixels 1:1."""
    k_h, k_w = height / image.height, width / image.width
    scale = min(k_h, k_w) if resize_mode == 2 else max(k_h, k_w)
    return int(round(scale * min(image.height, image.width)))


def detect_map(unit: ControlUnit, image: Image.Image, width: int, height: int, annotators: Path,
               store=None) -> Image.Image:
    """The unit's preprocessed map at the output size (annotator models kept in `store`, the model store)."""
    resolution = pixel_perfect_resolution(image, width, height, unit.resize_mode) if unit.pixel_perfect \
        else unit.processor_res
    detected = run_preprocessor(unit.module, np.asarray(image.convert("RGB")), resolution, unit.threshold_a,
                                unit.threshold_b, annotators, store)
    return resize_image(Image.fromarray(detected), width, height, unit.resize_mode)


def control_units(units: list[ControlUnit], fallback_image: Image.Image | None
                  ) -> Iterator[tuple[int, ControlUnit, Image.Image]]:
    """(index, unit, control image) of each enabled ControlNet unit (not IP-Adapter), each with a picture (its own
    or the pass's) and a model chosen, or a ControlUnitError naming the unit."""
    for index, unit in enumerate(units):
        if not unit.enabled or unit.is_ip_adapter:
            continue
        image = unit.image if unit.image is not None else fallback_image
        if image is None:
            raise ControlUnitError(f"ControlNet unit {index}: give it a control image")
        if unit.model in ("", "None"):
            raise ControlUnitError(f"ControlNet unit {index}: choose a model")
        yield index, unit, image


def prepare(units: list[ControlUnit], model, library, annotators: Path, width: int, height: int,
            fallback_image: Image.Image | None) -> tuple[list[ControlApplication], dict[str, str]]:
    """(applications, infotext params) for the enabled ControlNet units of a request."""
    applications, params = [], {}
    for index, unit, image in control_units(units, fallback_image):
        info = library.find(unit.model)
        if info.kind == flux.KIND:
            raise flux.wrong_family(index, info.name, model.architecture.label)
        _check_fit(info, model, index)
        hint_image = detect_map(unit, image, width, height, annotators, getattr(library, "store", None))
        hint = torch.from_numpy(np.asarray(hint_image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        controlnet = library.load(unit.model, model)
        param = next(controlnet.parameters())
        hint = hint.to(param.device, param.dtype)
        application = ControlApplication(controlnet, hint, unit.weight, unit.guidance_start, unit.guidance_end,
                                         unit.control_mode)
        if is_adapter(controlnet):
            application.features = adapter_features(controlnet, hint, unit.weight)
        if sd3.is_model(controlnet):  # SD 3 ControlNets read the control map's latents
            application.hint = sd3.hint_latents(model, controlnet, hint, info.name)
        applications.append(application)
        params[f"ControlNet {index}"] = unit.infotext(info.title)
    return applications, params


def _check_fit(info, model, index: int) -> None:
    """A ControlNet made for another model family: a 422 on the unit's model field, before anything loads."""
    from .models import fits

    problem = sd3.mismatch(info.kind, info.context_width, info.name, model)
    unet_config = model.configs.components.get("unet")
    if problem is None and unet_config is not None and info.kind != sd3.KIND and not fits(info, unet_config):
        problem = f"{info.name} was made for another model family than the loaded {model.architecture.label}"
    if problem is not None:
        raise ValidationError([FieldError(f"alwayson_scripts.controlnet.args[{index}].model", problem)])


def build_controls(units: list[ControlUnit], model, controlnets, ip_adapters, annotators: Path, width: int,
                   height: int, fallback_image: Image.Image | None, ip_adapter: Any = None) -> Controls:
    """A request's units, ready for the denoiser. `ip_adapter`: reuse one already prepared (hires pass)."""
    controls = Controls()
    if any(u.enabled and not u.is_ip_adapter for u in units) and flux.applies(model):
        controls.transformer, params = flux.prepare(units, model, controlnets, annotators, width, height,
                                                    fallback_image)
        controls.params.update(params)
        controls.warnings += controls.transformer.notes
    elif any(u.enabled and not u.is_ip_adapter for u in units):
        controls.nets, params = prepare(units, model, controlnets, annotators, width, height, fallback_image)
        controls.params.update(params)
        blocks = [app for app in controls.nets if sd3.is_model(app.model)]
        if blocks:
            controls.nets = [app for app in controls.nets if app not in blocks]
            controls.transformer = sd3.TransformerControls(model.unet, blocks)
    if ip_adapter is not None:
        controls.ip_adapter = ip_adapter
    elif any(u.enabled and u.is_ip_adapter for u in units) and flux.applies(model):  # FLUX.1 Redux, XLabs'
        controls.denoiser_edit, params = flux_redux.prepare(units, model, ip_adapters, fallback_image)
        controls.params.update(params)
        adapter, params = flux_ip_adapter.prepare(units, model, ip_adapters, fallback_image)
        if adapter is not None:
            controls.transformer = controls.transformer or flux.FluxControls()
            controls.transformer.ip_adapter = adapter
            controls.params.update(params)
    elif any(u.enabled and u.is_ip_adapter for u in units):
        flux_redux.refuse_on_other_families(units, ip_adapters)
        from ..ip_adapter import prepare_adapters

        controls.ip_adapter, params = prepare_adapters(units, model, ip_adapters, fallback_image)
        controls.params.update(params)
        controls.warnings += getattr(controls.ip_adapter, "notes", [])
    controls.params = dict(sorted(controls.params.items()))
    return controls


def is_adapter(model) -> bool:
    from diffusers import T2IAdapter

    return isinstance(model, T2IAdapter)


def adapter_features(adapter, hint: torch.Tensor, weight: float) -> list[torch.Tensor]:
    """A T2I-Adapter's features for the control map, scaled by the unit weight."""
    if adapter.config.in_channels == 1:  # sketch/canny adapters read one channel
        hint = hint.mean(dim=1, keepdim=True)
    with torch.no_grad():
        return [f * weight for f in adapter(hint)]


def _expand(outputs: list[torch.Tensor], app: ControlApplication, rows: int, batch: int, copies: int,
            uncond_first: bool) -> list[torch.Tensor]:
    """Control-mode weighting of one unit's outputs (soft injection; conditional half only)."""
    if app.mode != 0:  # soft injection: deeper layers keep more of the control
        count = len(outputs)
        outputs = [o * (SOFT_INJECTION ** (count - 1 - i)) for i, o in enumerate(outputs)]
    if app.mode == 2 and uncond_first and copies > 1:  # only the conditional half is controlled
        keep = torch.ones(rows, 1, 1, 1, device=outputs[0].device, dtype=outputs[0].dtype)
        keep[:batch] = 0
        outputs = [o * keep for o in outputs]
    return outputs


def _add(total: list[torch.Tensor] | None, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return outputs if total is None else [a + b for a, b in zip(total, outputs)]


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """A map for every row of the UNet batch: one map broadcast, or a per-image stack (tiled diffusion cuts one
    per tile) repeated for each CFG copy."""
    return tensor.expand(rows, -1, -1, -1) if tensor.shape[0] == 1 else tensor.repeat(rows // tensor.shape[0], 1, 1, 1)


def residuals(applications: list[ControlApplication], fraction: float, x: torch.Tensor, t: torch.Tensor,
              embeds: torch.Tensor, added: dict, copies: int, uncond_first: bool):
    """Summed (down residuals, mid residual, adapter features) of the active units; None where none."""
    controlnet_total, adapter_total = None, None
    rows = x.shape[0]
    batch = rows // copies
    for app in applications:
        if not app.active(fraction):
            continue
        if app.features is not None:
            features = [_rows(f, rows) for f in app.features]
            adapter_total = _add(adapter_total, _expand(features, app, rows, batch, copies, uncond_first))
            continue
        hint = _rows(app.hint, rows)
        kwargs = {"added_cond_kwargs": added} if added else {}
        context = embeds if app.context is None else app.context(batch, copies, uncond_first)
        down, mid = app.model(x, t, encoder_hidden_states=context, controlnet_cond=hint,
                              conditioning_scale=app.weight, return_dict=False, **kwargs)
        controlnet_total = _add(controlnet_total, _expand(list(down) + [mid], app, rows, batch, copies, uncond_first))
    if controlnet_total is None:
        return None, None, adapter_total
    return controlnet_total[:-1], controlnet_total[-1], adapter_total
