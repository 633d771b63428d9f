"""FreeU (Si et al. 2023): rebalance the UNet decoder's backbone and skip features.

In the decoder, half of the backbone's channels are scaled up (b1, b2) and the skip
connection's low frequencies scaled down (s1, s2: a Fourier filter on the skip features).

- v1: diffusers' own `UNet2DConditionModel.enable_freeu(s1, s2, b1, b2)` (the paper's code:
  the first two decoder stages, the backbone scaled by b). diffusers treats a 0 as "off", so v1
  takes factors above 0.
- v2 (Forge's "FreeU Integrated", ComfyUI's FreeU_V2): the backbone factor follows the
  structure, 1 + (b - 1) * m with m the per-image min-max-normalised channel mean, applied to
  every decoder ResNet whose backbone input has 4x (b1, s1) or 2x (b2, s2) the UNet's base
  channels. diffusers has no v2, so v2 is a forward pre-hook on those ResNets that scales the
  backbone half of their (backbone, skip) input and filters the skip half with diffusers'
  `fourier_filter`.

Both run only within Forge's step window (step / (steps - 1) in [start, end]) and only while a
pass samples: the UNet is restored when the pass ends, on error too. Arguments as Forge's
always-on "FreeU Integrated (SD 1.x, SD 2.x, SDXL)" script sends them ([enabled, b1, b2, s1, s2,
start, end], plus Easel's `version`, default 2 as Forge's), infotext keys as Forge writes them
(`freeu_enabled`, `freeu_b1` ... `freeu_end`; `freeu_version: 1` only for v1).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import torch

from ...core.denoiser import CFGDenoiser, Guidance
from ...core.pipeline import Pass, Run
from ...core.request import FieldError
from .args import Arg, ScriptFeature, in_window, number, truthy

VERSIONS = (1, 2, "1", "2", "v1", "v2")


@dataclass(frozen=True)
class FreeUSettings:
    b1: float
    b2: float
    s1: float
    s2: float
    start: float = 0.0
    end: float = 1.0
    version: int = 2


def backbone_v2(h: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the first half of the channels by 1 + (factor - 1) * (normalised channel mean)."""
    mean = h.float().mean(1, keepdim=True)  # in float32: half precision would round a flat map's range to 0
    low = mean.amin(dim=(2, 3), keepdim=True)
    high = mean.amax(dim=(2, 3), keepdim=True)
    structure = (mean - low) / (high - low).clamp_min(1e-12)
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * ((factor - 1) * structure + 1).to(h.dtype), h[:, half:]], dim=1)


def decoder_resnets(unet: Any) -> Iterator[tuple[Any, int]]:
    """(ResNet, channels of its backbone input) for every decoder ResNet; the rest of its input is the skip."""
    channels = unet.config.block_out_channels[-1]  # what the middle block hands the decoder
    for block in unet.up_blocks:
        for resnet in block.resnets:
            yield resnet, channels
            channels = resnet.out_channels


class FreeUPatch(Guidance):
    """FreeU on one UNet for one pass; as a Guidance it follows the step window."""

    def __init__(self, unet: Any, settings: FreeUSettings):
        self.unet, self.settings = unet, settings
        self.on = False

    def before_call(self, denoiser: CFGDenoiser) -> None:
        on = in_window(denoiser, self.settings.start, self.settings.end)
        if on != self.on and self.settings.version == 1:
            s = self.settings
            self.unet.enable_freeu(s1=s.s1, s2=s.s2, b1=s.b1, b2=s.b2) if on else self.unet.disable_freeu()
        self.on = on

    @contextmanager
    def installed(self) -> Iterator[None]:
        handles = []
        try:
            if self.settings.version == 2:
                base = self.unet.config.block_out_channels[0]
                scales = {base * 4: (self.settings.b1, self.settings.s1), base * 2: (self.settings.b2, self.settings.s2)}
                for resnet, backbone in decoder_resnets(self.unet):
                    if backbone in scales:
                        handles.append(resnet.register_forward_pre_hook(partial(self._v2, backbone,
                                                                                *scales[backbone])))
            yield
        finally:
            for handle in handles:
                handle.remove()
            if self.settings.version == 1:
                self.unet.disable_freeu()
            self.on = False

    def _v2(self, backbone: int, b: float, s: float, module: Any, args: tuple) -> tuple | None:
        if not self.on:
            return None
        from diffusers.utils.torch_utils import fourier_filter

        x = args[0]
        h = backbone_v2(x[:, :backbone], b)
        skip = fourier_filter(x[:, backbone:], threshold=1, scale=s)
        return (torch.cat([h, skip.to(h.dtype)], dim=1), *args[1:])


class FreeU(ScriptFeature):
    name = "freeu"
    title = "freeu integrated (sd 1.x, sd 2.x, sdxl)"
    titles = (title, "freeu integrated", "freeu")
    prefix = "freeu"
    spec = (Arg("enabled", False), Arg("b1", 1.01, 0, 2), Arg("b2", 1.02, 0, 2), Arg("s1", 0.99, 0, 4),
            Arg("s2", 0.95, 0, 4), Arg("start", 0.0, 0, 1), Arg("end", 1.0, 0, 1), Arg("version", 2, choices=VERSIONS))

    def parse(self, request: Any) -> tuple[Any, list[FieldError]]:
        from . import freeu_webui
        from .args import find_entry

        entry = find_entry(request, self.titles)  # sd-webui-freeu's shape under its title "FreeU"
        args = (entry[1].get("args") if isinstance(entry[1], dict) else entry[1]) if entry is not None else None
        if entry is not None and freeu_webui.is_webui_shape(args):
            return freeu_webui.parse(args, f"alwayson_scripts.{entry[0]}.args")
        settings, errors = super().parse(request)
        if settings is not None and settings.version == 1 and min(settings.b1, settings.b2, settings.s1,
                                                                   settings.s2) <= 0:
            key = find_key(request, self.titles)
            return None, [FieldError(f"alwayson_scripts.{key}.args", "FreeU v1 (diffusers') takes factors above 0")]
        return settings, errors

    def settings(self, args: dict[str, Any]) -> FreeUSettings:
        version = int(str(args["version"]).lstrip("v"))
        return FreeUSettings(float(args["b1"]), float(args["b2"]), float(args["s1"]), float(args["s2"]),
                             float(args["start"]), float(args["end"]), version)

    def begin_pass(self, run: Run, p: Pass) -> None:
        settings = run.args.get(self.name)
        if settings is None:
            return
        from .freeu_webui import WebuiFreeUPatch, WebuiFreeUSettings

        patch = (WebuiFreeUPatch if isinstance(settings, WebuiFreeUSettings) else FreeUPatch)(p.plan.model.unet,
                                                                                              settings)
        run.state[(self.name, p.name)] = patch
        p.plan.prompts.denoiser_edits.append(lambda denoiser: denoiser.add_guidance(patch))

    def installed(self, run: Run, p: Pass):
        patch = run.state.get((self.name, p.name))
        return patch.installed() if patch is not None else super().installed(run, p)

    def infotext(self, run: Run) -> dict[str, Any]:
        s = run.args.get(self.name)
        if s is None:
            return {}
        if not isinstance(s, FreeUSettings):  # sd-webui-freeu's settings, its keys
            from .freeu_webui import infotext

            return infotext(s)
        return {"freeu_enabled": True, "freeu_b1": s.b1, "freeu_b2": s.b2, "freeu_s1": s.s1, "freeu_s2": s.s2,
                "freeu_start": s.start, "freeu_end": s.end, "freeu_version": 1 if s.version == 1 else None}


def find_key(request: Any, titles: tuple[str, ...]) -> str:
    from .args import find_entry

    entry = find_entry(request, titles)
    return entry[0] if entry else titles[0]


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    if not truthy(params.get("freeu_enabled")):
        return {}
    fields: dict[str, Any] = {"freeu_enabled": True, "freeu_version": "1" if params.get("freeu_version") == "1"
                              else "2"}
    for name in ("b1", "b2", "s1", "s2", "start", "end"):
        value = number(params.get(f"freeu_{name}"))
        if value is not None:
            fields[f"freeu_{name}"] = value
    return fields
