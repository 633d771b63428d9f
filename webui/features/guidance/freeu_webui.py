"""The sd-webui-freeu extension's FreeU: per decoder stage, a channel window of the backbone scaled, the skip's
low and high frequencies scaled apart, with its own step schedule.

Its always-on entry is titled "FreeU" like Forge's, but its args are `[{"enable", "start_ratio",
"stop_ratio", "transition_smoothness", "version", "stage_infos": [{...}, ...]}]` (one object) or
positional `[enable, start_ratio, stop_ratio, transition_smoothness, version, *stage values]` (6 per
stage: backbone_factor, skip_factor, backbone_offset, backbone_width, skip_cutoff,
skip_high_end_factor). Stages are the decoder levels whose backbone has 4x, 2x and 1x the UNet's base
channels (1280/640/320 for SD); a stage left out changes nothing. `start_ratio`/`stop_ratio`: a
float is a fraction of the steps, an int a step. As there, per stage and decoder ResNet: the
backbone channels in the window [offset, offset + width) (wrapping) are multiplied by the factor
(v1) or by 1 + (factor - 1) x the min-max-normalised channel mean (v2), and the skip features' FFT
is scaled by `skip_factor` within `skip_cutoff` of the centre and by `skip_high_end_factor` outside;
every factor eased towards 1 by the schedule ratio (1 inside [start, stop), a ramp with
`transition_smoothness`). The step counted is the sampler's step (the extension counts model calls,
the same for one-call samplers). Infotext keys as it writes them: `FreeU Stages` (JSON),
`FreeU Schedule` ("start, stop, smoothness"), `FreeU Version`.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any, Iterator

import torch

from ...core.denoiser import CFGDenoiser, Guidance
from ...core.request import FieldError, is_number

STAGES = 3
VERSIONS = {"1": "1", "2": "2", "Version 1": "1", "Version 2": "2", 1: "1", 2: "2"}


@dataclass(frozen=True)
class StageInfo:
    backbone_factor: float = 1.0
    skip_factor: float = 1.0
    backbone_offset: float = 0.0
    backbone_width: float = 0.5
    skip_cutoff: float = 0.0
    skip_high_end_factor: float = 1.0

    def changed(self) -> dict[str, float]:
        default = StageInfo()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}


STAGE_FIELDS = tuple(f.name for f in fields(StageInfo))


@dataclass(frozen=True)
class WebuiFreeUSettings:
    start: float | int = 0.0
    stop: float | int = 1.0
    smoothness: float = 0.0
    version: str = "1"
    stages: tuple[StageInfo, ...] = field(default_factory=lambda: (StageInfo(),) * STAGES)


def is_webui_shape(args: Any) -> bool:
    """sd-webui-freeu's args rather than Forge's [enabled, b1, b2, s1, s2, start, end]."""
    if not isinstance(args, list) or not args:
        return False
    if isinstance(args[0], dict):
        return True
    return isinstance(args[0], bool) and len(args) >= 5 and (isinstance(args[4], str) or len(args) > 8)


def parse(args: list, where: str) -> tuple[WebuiFreeUSettings | None, list[FieldError]]:
    """(the settings, or None when off; errors naming each bad value)."""
    if isinstance(args[0], dict):
        if len(args) > 1:
            return None, [FieldError(where, "takes one object")]
        given = dict(args[0])
        unknown = [k for k in given if k not in ("enable", "start_ratio", "stop_ratio", "transition_smoothness",
                                                 "version", "stage_infos")]
        if unknown:
            return None, [FieldError(f"{where}[0].{unknown[0]}", "unknown argument")]
        stage_values = given.get("stage_infos", [])
    else:
        given = dict(zip(("enable", "start_ratio", "stop_ratio", "transition_smoothness", "version"), args))
        stage_values = args[5:]
        where_item = f"{where}"
        if len(stage_values) % len(STAGE_FIELDS):
            return None, [FieldError(where_item, f"stage values come in sixes ({', '.join(STAGE_FIELDS)})")]
        stage_values = [dict(zip(STAGE_FIELDS, stage_values[i:i + 6])) for i in range(0, len(stage_values), 6)]
    errors: list[FieldError] = []
    enable = given.get("enable", True)
    if not isinstance(enable, bool):
        errors.append(FieldError(f"{where}.enable", "must be true or false"))
    start, stop = given.get("start_ratio", 0.0), given.get("stop_ratio", 1.0)
    for name, value in (("start_ratio", start), ("stop_ratio", stop)):
        if not is_number(value) or value < 0 or (isinstance(value, float) and value > 1):
            errors.append(FieldError(f"{where}.{name}", "must be a fraction from 0.0 to 1.0 or a step number"))
    smooth = given.get("transition_smoothness", 0.0)
    if not is_number(smooth) or not 0 <= smooth <= 1:
        errors.append(FieldError(f"{where}.transition_smoothness", "must be a number from 0 to 1"))
    raw_version = given.get("version", "1")
    version = VERSIONS.get(raw_version) if isinstance(raw_version, (str, int)) else None
    if version is None:
        errors.append(FieldError(f"{where}.version", "must be 1 or 2"))
    if not isinstance(stage_values, list) or len(stage_values) > STAGES:
        errors.append(FieldError(f"{where}.stage_infos", f"must be a list of at most {STAGES} stages"))
        stage_values = []
    stages = []
    for index, value in enumerate(stage_values):
        if not isinstance(value, dict) or any(k not in STAGE_FIELDS for k in value):
            errors.append(FieldError(f"{where}.stage_infos.{index}", f"must be an object of {', '.join(STAGE_FIELDS)}"))
            continue
        bad = [k for k, v in value.items() if not is_number(v)]
        if bad:
            errors.append(FieldError(f"{where}.stage_infos.{index}.{bad[0]}", "must be a number"))
            continue
        stages.append(StageInfo(**{k: float(v) for k, v in value.items()}))
    if errors or not enable:
        return None, errors
    stages += [StageInfo()] * (STAGES - len(stages))
    return WebuiFreeUSettings(start, stop, float(smooth), version, tuple(stages)), []


def schedule_ratio(settings: WebuiFreeUSettings, step: int, steps: int) -> float:
    """The extension's schedule: 1 inside [start, stop), eased by `transition_smoothness`."""
    def to_step(value: float | int) -> int:
        return int(value * steps) if isinstance(value, float) else int(value)

    start, stop = to_step(settings.start), to_step(settings.stop)
    if start == stop:
        smooth = 0.0
    elif step < start:
        smooth = min(1.0, max(0.0, step / start))
    else:
        smooth = min(1.0, max(0.0, 1 + (step - start) / (start - stop)))
    flat = 1.0 if start <= step < stop else 0.0
    return (1 - settings.smoothness) * flat + settings.smoothness * smooth


def channel_window(width: float, offset: float, n: int) -> torch.Tensor:
    """The backbone channels a stage scales: [offset, offset + width) of n, wrapping (as the extension rounds it)."""
    if width < 0:
        offset, width = offset + width, -width
    width = min(width, 1)
    if offset < 0:
        offset = 1 + offset - int(offset)
    offset = math.fmod(offset, 1.0)
    index = torch.arange(n)
    if width + offset <= 1:
        return (round(offset * n) <= index) & (index <= round((width + offset) * n))
    return ~((round((width + offset - 1) * n) <= index) & (index <= round(offset * n)))


def filter_skip(x: torch.Tensor, cutoff: float, scale: float, scale_high: float) -> torch.Tensor:
    """Scale the skip's centred low frequencies by `scale` and the rest by `scale_high`."""
    if scale == 1 and scale_high == 1:
        return x
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    _, _, h, w = freq.shape
    mask = torch.full(freq.shape, float(scale_high), device=x.device)
    ch, cw = h // 2, w // 2
    th, tw = max(1, math.floor(ch * cutoff)), max(1, math.floor(cw * cutoff))
    mask[..., ch - th:ch + th, cw - tw:cw + tw] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def apply_stage(h: torch.Tensor, skip: torch.Tensor, stage: StageInfo, version: str,
                ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder ResNet's (backbone, skip) input with the stage applied at schedule `ratio`."""
    factor = 1 + (stage.backbone_factor - 1) * ratio
    if version == "1":
        scale: Any = factor
    else:
        mean = h.float().mean(1, keepdim=True)
        low = mean.amin(dim=(2, 3), keepdim=True)
        high = mean.amax(dim=(2, 3), keepdim=True)
        scale = 1 + (factor - 1) * (mean - low) / (high - low)
    mask = channel_window(stage.backbone_width, stage.backbone_offset, h.shape[1]).to(h.device)
    mask = mask.reshape(1, -1, 1, 1).to(h.dtype)
    h = h * (mask * scale + (1 - mask)).to(h.dtype)
    skip = filter_skip(skip, stage.skip_cutoff, 1 + (stage.skip_factor - 1) * ratio,
                       1 + (stage.skip_high_end_factor - 1) * ratio)
    return h, skip


class WebuiFreeUPatch(Guidance):
    """Pre-hooks on the decoder ResNets while a pass samples; as a Guidance it reads the step."""

    def __init__(self, unet: Any, settings: WebuiFreeUSettings):
        self.unet, self.settings, self.ratio = unet, settings, 0.0

    def before_call(self, denoiser: CFGDenoiser) -> None:
        self.ratio = schedule_ratio(self.settings, denoiser.step, denoiser.total_steps)

    @contextmanager
    def installed(self) -> Iterator[None]:
        from .freeu import decoder_resnets

        base = self.unet.config.block_out_channels[0]
        stage_of = {base * 4: 0, base * 2: 1, base: 2}
        handles = []
        try:
            for resnet, backbone in decoder_resnets(self.unet):
                stage = stage_of.get(backbone)
                if stage is not None and self.settings.stages[stage] != StageInfo():
                    handles.append(resnet.register_forward_pre_hook(partial(self._hook, backbone, stage)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, backbone: int, stage: int, module: Any, args: tuple) -> tuple | None:
        if self.ratio == 0:
            return None
        x = args[0]
        h, skip = apply_stage(x[:, :backbone], x[:, backbone:], self.settings.stages[stage], self.settings.version,
                              self.ratio)
        return (torch.cat([h, skip.to(h.dtype)], dim=1), *args[1:])


def infotext(settings: WebuiFreeUSettings) -> dict[str, Any]:
    stages = [stage.changed() for stage in settings.stages]
    while stages and not stages[-1]:
        stages.pop()
    return {"FreeU Stages": json.dumps(stages), "FreeU Schedule": f"{settings.start}, {settings.stop}, "
                                                                 f"{settings.smoothness}",
            "FreeU Version": settings.version}
