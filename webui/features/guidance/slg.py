"""Skip Layer Guidance (SLG) for SD 3.5 Medium, as Stability recommends it and diffusers' StableDiffusion3Pipeline
runs it (`skip_guidance_layers`).

In the steps whose index i satisfies steps * start < i < steps * end (the pipeline's window), after
classifier-free guidance the positive prompt is evaluated once more with the transformer blocks in
`layers` skipped, and the result is pushed away from that degraded prediction:

    out = cfg_out + scale * (cond - skipped)

Stability's defaults for SD 3.5 Medium: layers 7, 8, 9, scale 2.8, start 0.01, end 0.2 (ComfyUI's
SkipLayerGuidanceSD3 node has the same layers). Only with CFG (the negative pass), as the pipeline;
only for denoisers that can skip blocks (SD3's transformer) - other models get a warning. Sent as the
always-on script "skip layer guidance" ([enabled, scale, layers, start, end]); no other tool writes SLG
into its infotext, so the keys are Easel's: `SLG scale`, `SLG layers`, `SLG start`, `SLG end`.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ...core.denoiser import CFGDenoiser, Guidance, GuidedStep
from ...core.pipeline import Pass, Run
from ...core.request import FieldError
from .args import Arg, ScriptFeature, number

DEFAULT_LAYERS = "7,8,9"


def parse_layers(text: str) -> list[int] | None:
    """"7, 8,9" -> [7, 8, 9]; None when it is not a list of block numbers."""
    try:
        layers = [int(part) for part in str(text).replace(" ", ",").split(",") if part.strip()]
    except ValueError:
        return None
    return layers if layers and all(0 <= n < 1000 for n in layers) else None


class SkipLayers(Guidance):
    def __init__(self, settings: dict[str, Any]):
        self.scale, self.layers = float(settings["scale"]), list(settings["layer_list"])
        self.start, self.end = float(settings["start"]), float(settings["end"])

    def after_cfg(self, denoiser: CFGDenoiser, step: GuidedStep) -> torch.Tensor:
        steps = denoiser.total_steps
        if self.scale <= 0 or not step.with_uncond or not (steps * self.start < denoiser.step < steps * self.end):
            return step.out
        cond = step.parts[1]
        skipped = denoiser.evaluate(step.x_in, step.t, options={"skip_layers": self.layers})
        return step.out + self.scale * (cond - skipped)


class SLG(ScriptFeature):
    name = "slg"
    title = "skip layer guidance"
    titles = (title, "slg: skip layer guidance", "skiplayerguidance", "slg")
    prefix = "slg"
    spec = (Arg("enabled", False), Arg("scale", 2.8, 0, 10), Arg("layers", DEFAULT_LAYERS),
            Arg("start", 0.01, 0, 1), Arg("end", 0.2, 0, 1))

    def parse(self, request: Any) -> tuple[Any, list[FieldError]]:
        settings, errors = super().parse(request)
        if settings is not None and settings["layer_list"] is None:
            return None, [FieldError(f"alwayson_scripts.{self.title}.args.layers",
                                     "must be block numbers separated by commas, e.g. 7,8,9")]
        return settings, errors

    def settings(self, args: dict[str, Any]) -> dict[str, Any]:
        return {**args, "layer_list": parse_layers(args["layers"])}

    def begin_pass(self, run: Run, p: Pass) -> None:
        settings = run.args.get(self.name)
        if settings is None:
            return
        if "skip_layers" not in inspect.signature(type(run.model.unet).forward).parameters:
            message = f"Skip Layer Guidance needs an SD3 model; {run.model.architecture.label} ignores it."
            if message not in run.context.warnings:
                run.context.warnings.append(message)
            return
        p.plan.prompts.denoiser_edits.append(lambda d: d.add_guidance(SkipLayers(settings)))

    def infotext(self, run: Run) -> dict[str, Any]:
        s = run.args.get(self.name)
        if s is None or "skip_layers" not in inspect.signature(type(run.model.unet).forward).parameters:
            return {}
        return {"SLG scale": s["scale"], "SLG layers": ",".join(map(str, s["layer_list"])),
                "SLG start": s["start"], "SLG end": s["end"]}


def pasted_fields(params: dict[str, str]) -> dict[str, Any]:
    """The keys `SLG.infotext` writes, back into the accordion's fields."""
    scale = number(params.get("SLG scale"))
    if scale is None:
        return {}
    fields: dict[str, Any] = {"slg_enabled": True, "slg_scale": scale}
    if parse_layers(params.get("SLG layers", "")):
        fields["slg_layers"] = params["SLG layers"]
    for name in ("start", "end"):
        value = number(params.get(f"SLG {name}"))
        if value is not None:
            fields[f"slg_{name}"] = value
    return fields
